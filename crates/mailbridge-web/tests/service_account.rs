//! Google Workspace without a sign-in per user: a profile holding a service account's JSON key
//! gets each mailbox's token with the JWT bearer grant (RFC 7523), from a token endpoint in the
//! test kit that checks each assertion's RS256 signature against the key's public half and its
//! claims (jose), and Dovecot accepts the tokens it issues.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::sync::Arc;

use mailbridge_testkit::{AppOptions, MailWorld, ManualClock, TestDatabase, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A profile for the Workspace domain `example.com`, its servers the local Dovecot: (profile
/// id, the key file).
async fn workspace(w: &MailWorld) -> (String, Value) {
    let key = w.oauth.service_account("example.com").await.unwrap();
    let (status, p) = w
        .api
        .post(
            &w.app,
            "/api/v1/server-profiles",
            &w.admin,
            json!({
                "name": "Workspace", "preset": "gmail", "auth": "google_service_account",
                "incoming": w.imaps(), "outgoing": w.submissions(),
                "oauth": {"service_account_key": key.to_string()},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["auth"], "google_service_account", "{p}");
    assert_eq!(p["oauth"]["client_id"], key["client_email"], "{p}");
    assert_eq!(
        p["max_mailboxes"], 1000,
        "not Gmail's 100 per OAuth client: {p}"
    );
    (p["id"].as_str().unwrap().to_owned(), key)
}

/// Asserts that the mailbox's `field` has `words` in it.
#[track_caller]
fn says(m: &Value, field: &str, words: &str) {
    let got = m[field].as_str().unwrap_or_default();
    assert!(got.contains(words), "{field} lacks {words:?}: {m:#}");
}

/// A new mailbox of `profile` for `address`, and what Test & Enable made of it.
async fn tested(w: &MailWorld, profile: &str, address: &str) -> (String, Value) {
    let mailbox = w.mailbox(address, &w.ann_id, profile, json!({})).await;
    let m = w.test(&mailbox, &w.ann).await;
    (mailbox, m)
}

async fn jwt_grants(w: &MailWorld) -> u64 {
    w.oauth.stats().await.unwrap()["jwtGrants"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_workspace_mailbox_is_tested_and_enabled_without_anyone_signing_in() {
    let w = MailWorld::start(AppOptions::default()).await;
    let (profile, key) = workspace(&w).await;
    let (mailbox, m) = tested(&w, &profile, "ann@example.com").await;
    assert_eq!(m["incoming_status"], "success", "{m:#}");
    assert_eq!(m["outgoing_status"], "success", "{m:#}");
    assert_eq!(m["enabled"], true, "{m:#}");
    let log = w.dovecot.log();
    assert!(
        log.contains("imap-login: Info: Login: user=<ann@example.com>, method=XOAUTH2"),
        "{log}"
    );
    assert!(
        log.contains("submission-login: Info: Login: user=<ann@example.com>, method=XOAUTH2"),
        "{log}"
    );
    // One token for the mailbox, kept while it is good: a second test asks for none.
    let grants = jwt_grants(&w).await;
    assert_eq!(grants, 1);
    w.test(&mailbox, &w.ann).await;
    assert_eq!(jwt_grants(&w).await, grants);

    // There is nothing to sign in to.
    let r = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/mailboxes/{mailbox}/oauth/start"),
            &w.ann,
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "no_sign_in_needed", None);

    // The private key is never shown again, nor kept in clear.
    let private_key = key["private_key"].as_str().unwrap();
    let body = private_key
        .lines()
        .find(|l| l.len() > 40)
        .unwrap()
        .to_owned();
    let (_, p) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}"),
            &w.admin,
        )
        .await;
    let (_, audit) = w.api.get(&w.app, "/api/v1/audit-log", &w.admin).await;
    let seen = w.api.seen() + &p.to_string() + &audit.to_string();
    assert!(!seen.contains(&body), "the private key was returned");
    let disk = TestDatabase::from_env()
        .contents(w.data_dir())
        .await
        .unwrap();
    assert!(
        !disk.windows(body.len()).any(|x| x == body.as_bytes()),
        "the private key is in clear on disk"
    );
}

#[tokio::test]
async fn refusals_name_the_step_in_the_google_admin_console() {
    let w = MailWorld::start(AppOptions::default()).await;
    let (profile, key) = workspace(&w).await;
    // A user outside the domain that delegated.
    let (_, m) = tested(&w, &profile, "pw@elsewhere.example").await;
    assert_eq!(m["incoming_status"], "failure", "{m:#}");
    says(&m, "incoming_status_reason", "Invalid email or User ID");
    says(&m, "incoming_status_hint", "not an active user");
    // The Workspace admin withdraws the delegation.
    let ann = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    w.oauth
        .set_delegation(key["client_email"].as_str().unwrap(), false)
        .await
        .unwrap();
    let m = w.test(&ann, &w.ann).await;
    assert_eq!(m["enabled"], false, "{m:#}");
    let hint = m["outgoing_status_hint"].as_str().unwrap();
    assert!(hint.contains("Manage Domain Wide Delegation"), "{hint}");
    assert!(hint.contains(key["client_id"].as_str().unwrap()), "{hint}");

    // A file that is not a service account's key is refused where it is given.
    for (bad, words) in [
        (
            json!({"type": "authorized_user", "client_id": "x"}).to_string(),
            "not 'service_account'",
        ),
        (
            "not json".to_owned(),
            "not a service account's JSON key file",
        ),
        (
            json!({"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com",
                   "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                   "token_uri": "https://oauth2.googleapis.com/token"})
            .to_string(),
            "not an RSA private key",
        ),
    ] {
        let r = w
            .api
            .post(
                &w.app,
                "/api/v1/server-profiles",
                &w.admin,
                json!({
                    "name": "Bad key", "preset": "gmail", "auth": "google_service_account",
                    "oauth": {"service_account_key": bad},
                }),
            )
            .await;
        assert_error(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("oauth.service_account_key"),
        );
        assert!(r.1.to_string().contains(words), "{words}: {}", r.1);
    }
}

#[tokio::test]
async fn the_token_endpoint_refuses_a_wrong_audience_an_expired_assertion_and_a_clock_far_ahead() {
    // The kit's verifier takes a good assertion and refuses…
    let w = MailWorld::start(AppOptions::default()).await;
    let key = w.oauth.service_account("example.com").await.unwrap();
    let account = mailbridge_sync::ServiceAccount::from_json(&key.to_string().into()).unwrap();
    let scopes = ["https://mail.google.com/".to_owned()];
    let now = mailbridge_core::Clock::now(&mailbridge_core::SystemClock);
    let ours = account.token_url().as_str();
    let grant = |assertion: String| {
        let url = account.token_url().clone();
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    let right = account
        .assertion("ann@example.com", &scopes, ours, now)
        .unwrap();
    assert_eq!(grant(right).await.0, StatusCode::OK, "the control case");
    // …another token endpoint's audience, an hour-old assertion that has expired:
    for (what, aud, at) in [
        ("wrong aud", "https://oauth2.googleapis.com/token", now),
        ("expired exp", ours, now - chrono::Duration::hours(2)),
    ] {
        let assertion = account
            .assertion("ann@example.com", &scopes, aud, at)
            .unwrap();
        let (status, body) = grant(assertion).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(body.contains("invalid_grant"), "{what}: {body}");
    }

    // …and Mailbridge, on a clock two hours ahead, is told to check its clock.
    let clock = Arc::new(ManualClock::new());
    clock.advance(chrono::Duration::hours(2));
    let w = MailWorld::start(AppOptions {
        clock,
        ..AppOptions::default()
    })
    .await;
    let (profile, _) = workspace(&w).await;
    let (_, m) = tested(&w, &profile, "ann@example.com").await;
    assert_eq!(m["incoming_status"], "failure", "{m:#}");
    says(&m, "incoming_status_hint", "clock");
}

#[tokio::test]
async fn the_engine_syncs_and_sends_for_a_workspace_mailbox() {
    let w = MailWorld::start(AppOptions {
        engine: Some(MailWorld::fast_engine()),
        ..AppOptions::default()
    })
    .await;
    let (profile, _) = workspace(&w).await;
    let (mailbox, m) = tested(&w, &profile, "ann@example.com").await;
    assert_eq!(m["enabled"], true, "{m:#}");
    w.dovecot
        .deliver(
            "ann@example.com",
            b"From: bob@example.com\r\nTo: ann@example.com\r\nSubject: Delegated\r\nMessage-ID: <delegated-1@example.com>\r\n\r\nHello.\r\n",
        )
        .unwrap();
    let list = w
        .poll(
            &format!("/api/v1/emails?mailbox_id={mailbox}"),
            &w.ann,
            30,
            "the delivered mail",
            |l| l.to_string().contains("Delegated"),
        )
        .await;
    assert!(
        list.to_string().contains("delegated-1@example.com"),
        "{list}"
    );
    let (status, email) = w
        .api
        .post(
            &w.app,
            "/api/v1/emails",
            &w.ann,
            json!({
                "mailbox_id": mailbox, "to": [{"address": "bob@example.com"}],
                "subject": "Sent for Ann", "text_body": "By the service account's token.",
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{email}");
    let id = email["id"].as_str().unwrap();
    w.poll(
        &format!("/api/v1/emails/{id}"),
        &w.ann,
        30,
        "the send",
        |e| e["status"] == "sent",
    )
    .await;
}
