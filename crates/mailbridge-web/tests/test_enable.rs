//! "Test & Enable Mailbox" end to end over HTTP: Mailbridge signs in to a real Dovecot with
//! tokens from a real OAuth provider (or a password), for IMAP and POP3 profiles, and reports
//! each direction's result with the server's reason and what to do.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use mailbridge_core::Role;
use mailbridge_store::{Actor, TokenSet};
use mailbridge_testkit::{AppOptions, CountingProxy, MailWorld, assert_error};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

#[track_caller]
fn assert_side(m: &Value, side: &str, status: &str, reason: &str, hint: &str) {
    assert_eq!(m[format!("{side}_status")], status, "{m:#}");
    let got_reason = m[format!("{side}_status_reason")]
        .as_str()
        .unwrap_or_default();
    let got_hint = m[format!("{side}_status_hint")]
        .as_str()
        .unwrap_or_default();
    assert!(
        got_reason.contains(reason),
        "{side} reason {got_reason:?} lacks {reason:?}"
    );
    assert!(
        got_hint.contains(hint),
        "{side} hint {got_hint:?} lacks {hint:?}"
    );
    assert!(m[format!("{side}_tested_at")].is_string(), "{m:#}");
}

#[tokio::test]
async fn an_imap_mailbox_is_enabled_only_after_sign_in_and_fails_clearly_when_revoked() {
    let w = MailWorld::start(AppOptions::default()).await;
    let profile = w
        .gmail_like("Gmail here", w.imaps(), w.submissions(), json!({}))
        .await;
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;

    // Before signing in: both directions fail, with the step to take.
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(
        &m,
        "incoming",
        "failure",
        "not signed in",
        "Sign in to Gmail for this mailbox first",
    );
    assert_side(
        &m,
        "outgoing",
        "failure",
        "not signed in",
        "Sign in to Gmail for this mailbox first",
    );
    assert_eq!(m["enabled"], false);

    w.sign_in(&mailbox, &w.ann).await;
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(&m, "incoming", "success", "", "");
    assert_side(&m, "outgoing", "success", "", "");
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

    // The user removes the app's access at the provider: the server refuses the token.
    w.oauth.revoke_account("ann@example.com").await.unwrap();
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(
        &m,
        "incoming",
        "failure",
        "refused the login",
        "Sign in to Gmail again",
    );
    assert_side(
        &m,
        "outgoing",
        "failure",
        "refused the login",
        "Sign in to Gmail again",
    );
    assert_eq!(m["enabled"], false);

    // Only the owner or an admin may test; the audit log records it.
    let (_, bob) = w.app.user("bob@example.com", Role::User).await.unwrap();
    let r = w
        .api
        .post(
            &w.app,
            &format!("/api/v1/mailboxes/{mailbox}/test-and-enable"),
            &bob,
            json!({}),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", None);
    let (_, audit) = w.api.get(&w.app, "/api/v1/audit-log", &w.admin).await;
    assert!(audit.to_string().contains("mailbox.test_and_enable"));
}

#[tokio::test]
async fn a_pop3_mailbox_over_starttls_is_tested_with_stat_and_only_used_directions_count() {
    let w = MailWorld::start(AppOptions::default()).await;
    let pop3 = json!({"protocol": "pop3", "host": "127.0.0.1", "port": w.dovecot.ports.pop3, "security": "starttls"});
    let submission =
        json!({"host": "127.0.0.1", "port": w.dovecot.ports.submission, "security": "starttls"});
    let profile = w.gmail_like("Gmail POP", pop3, submission, json!({})).await;
    let mailbox = w
        .mailbox(
            "ann@example.com",
            &w.ann_id,
            &profile,
            json!({"outgoing_method": "none"}),
        )
        .await;
    w.sign_in(&mailbox, &w.ann).await;
    let m = w.test(&mailbox, &w.admin).await;
    assert_side(&m, "incoming", "success", "", "");
    assert_eq!(
        m["outgoing_status"], "not_run",
        "an unused direction is not tested: {m:#}"
    );
    assert_eq!(m["enabled"], true);
    assert!(
        w.dovecot
            .log()
            .contains("pop3-login: Info: Login: user=<ann@example.com>, method=XOAUTH2")
    );
    assert!(
        !w.dovecot
            .log()
            .contains("submission-login: Info: Login: user=<ann@example.com>")
    );
}

#[tokio::test]
async fn unreachable_and_misconfigured_servers_say_what_to_check() {
    let w = MailWorld::start(AppOptions::default()).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = json!({"protocol": "imap", "host": "127.0.0.1", "port": closed, "security": "tls"});
    // Implicit TLS against the plain submission port: the server's greeting is no handshake.
    let wrong_security =
        json!({"host": "127.0.0.1", "port": w.dovecot.ports.submission, "security": "tls"});
    let profile = w
        .gmail_like("Broken", down, wrong_security, json!({}))
        .await;
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    w.sign_in(&mailbox, &w.ann).await;
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(
        &m,
        "incoming",
        "failure",
        &format!("127.0.0.1:{closed}: cannot connect"),
        "Check the server name and port",
    );
    assert_side(
        &m,
        "outgoing",
        "failure",
        "TLS failed",
        "Check the security setting",
    );
    assert_eq!(m["enabled"], false);
}

#[tokio::test]
async fn a_password_mailbox_needs_its_password_and_reports_a_wrong_one() {
    let w = MailWorld::start(AppOptions::default()).await;
    let imap = json!({"protocol": "imap", "host": "127.0.0.1", "port": w.dovecot.ports.imap, "security": "starttls"});
    let profile = &w.password_profile_with("Passwords", imap).await;
    let mailbox = w
        .mailbox("pw@example.com", &w.ann_id, profile, json!({}))
        .await;
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(
        &m,
        "incoming",
        "failure",
        "no password",
        "Set the mailbox's password",
    );

    let path = format!("/api/v1/mailboxes/{mailbox}");
    let (status, m) = w
        .api
        .patch(&w.app, &path, &w.ann, json!({"password": "wrong"}))
        .await;
    assert_eq!(
        (status, m["password_set"].clone()),
        (StatusCode::OK, json!(true)),
        "{m}"
    );
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(
        &m,
        "incoming",
        "failure",
        "refused the login",
        "Check the mailbox's login name and password",
    );

    w.api
        .patch(&w.app, &path, &w.ann, json!({"password": "hunter2"}))
        .await;
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(&m, "incoming", "success", "", "");
    assert_side(&m, "outgoing", "success", "", "");
    assert_eq!(m["enabled"], true);
    assert!(!w.api.seen().contains("hunter2"), "a password was returned");

    // A password on an OAuth profile's mailbox is refused, naming the field.
    let oauth_profile = w
        .gmail_like("OAuth", w.imaps(), w.submissions(), json!({}))
        .await;
    let r = w
        .api
        .post(
            &w.app,
            "/api/v1/mailboxes",
            &w.admin,
            json!({"email": "x@example.com", "profile_id": oauth_profile, "password": "p"}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("password"),
    );
}

#[tokio::test]
async fn testing_a_full_profile_of_100_mailboxes_keeps_to_its_connection_limit() {
    let w = MailWorld::start(AppOptions::default()).await;
    let imap = CountingProxy::start(w.dovecot.ports.imaps).await.unwrap();
    let smtp = CountingProxy::start(w.dovecot.ports.submissions)
        .await
        .unwrap();
    let incoming =
        json!({"protocol": "imap", "host": "127.0.0.1", "port": imap.port, "security": "tls"});
    let outgoing = json!({"host": "127.0.0.1", "port": smtp.port, "security": "tls"});
    let profile = w
        .gmail_like("Hundred", incoming, outgoing, json!({"max_connections": 5}))
        .await;

    // 100 mailboxes, each signed in with its own account's tokens.
    for i in 0..100 {
        let email = format!("user{i}@example.com");
        let (id, _) = w.app.user(&email, Role::User).await.unwrap();
        let mailbox = w.mailbox(&email, &id, &profile, json!({})).await;
        let (access, refresh) = w.oauth.issue_tokens(&email).await.unwrap();
        let tokens = TokenSet {
            access_token: SecretString::from(access),
            refresh_token: SecretString::from(refresh),
            expires_at: mailbridge_core::Clock::now(&mailbridge_core::SystemClock)
                + chrono::Duration::hours(1),
            scopes: "https://mail.google.com/ openid email".to_owned(),
        };
        w.app
            .store
            .save_sign_in(&Actor::cli(), mailbox.parse().unwrap(), &email, &tokens)
            .await
            .unwrap();
    }
    let r = w
        .api
        .post(
            &w.app,
            "/api/v1/mailboxes",
            &w.admin,
            json!({"email": "one-too-many@example.com", "profile_id": profile}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "profile_full", Some("profile_id"));

    let started = std::time::Instant::now();
    let (status, summary) = w
        .api
        .post(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}/test-and-enable"),
            &w.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(
        (
            summary["tested"].clone(),
            summary["enabled"].clone(),
            summary["failed"].clone()
        ),
        (json!(100), json!(100), json!(0)),
        "{summary:#}"
    );
    assert_eq!((imap.total(), smtp.total()), (100, 100));
    let peak = imap.peak() + smtp.peak();
    assert!(
        imap.peak() <= 5 && smtp.peak() <= 5,
        "peaks: imap {} smtp {}",
        imap.peak(),
        smtp.peak()
    );
    assert!(
        imap.peak() >= 2,
        "the mailboxes were tested concurrently (peak {peak})"
    );
    eprintln!(
        "100 mailboxes tested in {:?}, peak connections imap {} smtp {}",
        started.elapsed(),
        imap.peak(),
        smtp.peak()
    );

    let r = w
        .api
        .post(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}/test-and-enable"),
            &w.ann,
            json!({}),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", None);
}

#[tokio::test]
async fn gmail_with_imap_turned_off_says_to_enable_imap_in_gmail_settings() {
    let w = MailWorld::start(AppOptions::default()).await;
    let gmail = mailbridge_testkit::ScriptedGmail::start("ann@example.com", "unused", false)
        .await
        .unwrap();
    let incoming =
        json!({"protocol": "imap", "host": "127.0.0.1", "port": gmail.port, "security": "none"});
    let profile = w
        .gmail_like("Gmail IMAP off", incoming, w.submissions(), json!({}))
        .await;
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    w.sign_in(&mailbox, &w.ann).await;
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(
        &m,
        "incoming",
        "failure",
        "Your account is not enabled for IMAP use",
        "Enable IMAP in Gmail settings",
    );
    assert_side(&m, "outgoing", "success", "", "");
    assert_eq!(
        m["enabled"], false,
        "one failing direction keeps the mailbox disabled"
    );
}

#[tokio::test]
async fn moving_a_profile_elsewhere_needs_its_secret_and_a_new_test_of_every_mailbox() {
    let w = MailWorld::start(AppOptions::default()).await;
    let (profile, mailbox) = w.ann_enabled(json!({})).await;
    let path = format!("/api/v1/server-profiles/{profile}");
    // Pointing the token endpoint elsewhere while keeping the stored secret is refused: the
    // secret, and every mailbox's refresh token after it, would go to that server.
    for field in ["token_url", "revocation_url", "userinfo_url"] {
        let r = w
            .api
            .patch(
                &w.app,
                &path,
                &w.admin,
                json!({"oauth": {field: "https://idp.attacker.example/x"}}),
            )
            .await;
        assert_error(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("oauth.client_secret"),
        );
    }
    let (_, view) = w.api.get(&w.app, &path, &w.admin).await;
    assert!(
        !view["oauth"]["token_url"]
            .as_str()
            .unwrap()
            .contains("attacker"),
        "nothing changed: {view}"
    );
    // Limits and names change freely, and the mailbox stays enabled.
    let (status, _) = w
        .api
        .patch(&w.app, &path, &w.admin, json!({"name": "Renamed"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let m = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.ann)
        .await
        .1;
    assert_eq!(m["enabled"], true, "{m:#}");
    // New servers: the mailbox's last test no longer holds. It is paused, its owner told.
    let moved = json!({"incoming": {"host": "localhost"}});
    let (status, p) = w.api.patch(&w.app, &path, &w.admin, moved).await;
    assert_eq!(status, StatusCode::OK, "{p}");
    let m = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.ann)
        .await
        .1;
    assert_eq!(
        (
            m["enabled"].clone(),
            m["incoming_status"].clone(),
            m["outgoing_status"].clone()
        ),
        (json!(false), json!("not_run"), json!("not_run")),
        "{m:#}"
    );
    let (_, alerts) = w.api.get(&w.app, "/api/v1/alerts", &w.ann).await;
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "retest_required")
        .unwrap_or_else(|| panic!("Ann is told: {alerts:#}"));
    assert!(
        alert["message"].as_str().unwrap().contains("Renamed"),
        "{alert}"
    );
    // Test & Enable against the new servers brings it back and settles the alert.
    let tested = w.test(&mailbox, &w.ann).await;
    assert_eq!(tested["enabled"], true, "{tested:#}");
    let (_, alerts) = w.api.get(&w.app, "/api/v1/alerts", &w.ann).await;
    assert!(
        !alerts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "retest_required"),
        "{alerts:#}"
    );
}

#[tokio::test]
async fn a_microsoft_365_mailbox_signs_in_by_its_sign_in_name_and_is_tested_both_ways() {
    let w = MailWorld::start(AppOptions::default()).await;
    // Microsoft's ID tokens: the account in `preferred_username`, no `email`.
    w.oauth
        .set_mode(json!({"claims": "microsoft"}))
        .await
        .unwrap();
    let profile = w
        .microsoft_like("Contoso", w.imaps(), w.submissions(), json!({}))
        .await;
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(
        &m,
        "incoming",
        "failure",
        "not signed in",
        "Sign in with Microsoft for this mailbox first",
    );

    w.sign_in(&mailbox, &w.ann).await;
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(&m, "incoming", "success", "", "");
    assert_side(&m, "outgoing", "success", "", "");
    assert_eq!(m["enabled"], true, "{m:#}");
    assert_eq!(m["signed_in_as"], "ann@example.com", "{m:#}");
    let log = w.dovecot.log();
    assert!(
        log.contains("submission-login: Info: Login: user=<ann@example.com>, method=XOAUTH2"),
        "{log}"
    );

    // The grant withdrawn: each side names what to check in Microsoft's admin centers.
    w.oauth.revoke_account("ann@example.com").await.unwrap();
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(
        &m,
        "incoming",
        "failure",
        "refused the login",
        "IMAP.AccessAsUser.All",
    );
    assert_side(
        &m,
        "outgoing",
        "failure",
        "refused the login",
        "Authenticated SMTP is allowed for the mailbox",
    );
}

#[tokio::test]
async fn a_relay_without_login_is_checked_with_mail_from_and_rcpt_to_and_never_offered_credentials()
{
    let w = MailWorld::start(AppOptions::default()).await;
    // Dovecot's submission service offers logins, and takes no mail without one.
    let profile = w
        .password_profile_at(
            "Relay",
            w.imaps(),
            json!({"host": "127.0.0.1", "port": w.dovecot.ports.submissions, "security": "tls", "authentication": "none"}),
            json!({}),
        )
        .await;
    let (_, p) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}"),
            &w.admin,
        )
        .await;
    assert_eq!(p["outgoing"]["authentication"], "none", "{p}");
    let mailbox = w
        .mailbox(
            "pw@example.com",
            &w.ann_id,
            &profile,
            json!({"password": "hunter2"}),
        )
        .await;
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(&m, "incoming", "success", "", "");
    assert_side(
        &m,
        "outgoing",
        "failure",
        "MAIL FROM",
        "allow this server's address on the relay",
    );
    assert_eq!(m["enabled"], false);
    let log = w.dovecot.log();
    assert!(
        log.contains("imap-login: Info: Login: user=<pw@example.com>"),
        "{log}"
    );
    assert!(
        !log.contains("submission-login: Info: Login"),
        "credentials were offered to the relay: {log}"
    );

    // A relay that trusts this machine: the check passes and nothing is sent.
    let relay = json!({"host": "127.0.0.1", "port": w.dovecot.relay_port(), "security": "none"});
    let (status, p) = w
        .api
        .patch(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}"),
            &w.admin,
            json!({"outgoing": relay}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["outgoing"]["authentication"], "none", "kept: {p}");
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(&m, "outgoing", "success", "", "");
    assert_eq!(m["enabled"], true, "{m:#}");
    assert!(
        w.dovecot.relayed().unwrap().is_empty(),
        "the check sent mail"
    );

    // A mailbox that only sends needs no login at all.
    let sender = w
        .mailbox(
            "ann@example.com",
            &w.ann_id,
            &profile,
            json!({"incoming_method": "none"}),
        )
        .await;
    let m = w.test(&sender, &w.ann).await;
    assert_side(&m, "outgoing", "success", "", "");
    assert_eq!(m["enabled"], true, "{m:#}");
}

/// Exchange Online's answer to a login when Authenticated SMTP is off for the tenant.
const SMTP_AUTH_DISABLED: &[u8] = b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.\r\n";

#[tokio::test]
async fn microsoft_smtp_auth_turned_off_for_the_tenant_names_the_setting() {
    let w = MailWorld::start(AppOptions::default()).await;
    w.oauth
        .set_mode(json!({"claims": "microsoft"}))
        .await
        .unwrap();
    // Dovecot's submission service, its answer to every login replaced by Exchange Online's.
    let proxy = CountingProxy::with_fault(
        w.dovecot.ports.submission,
        mailbridge_testkit::Fault::every(
            mailbridge_testkit::Step::AnswerTo(b"AUTH "),
            mailbridge_testkit::Action::Answer(SMTP_AUTH_DISABLED),
        ),
    )
    .await
    .unwrap();
    let profile = w
        .microsoft_like(
            "Contoso",
            w.imaps(),
            json!({"host": "127.0.0.1", "port": proxy.port, "security": "none"}),
            json!({}),
        )
        .await;
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    w.sign_in(&mailbox, &w.ann).await;
    let m = w.test(&mailbox, &w.ann).await;
    assert_side(&m, "incoming", "success", "", "");
    assert_side(
        &m,
        "outgoing",
        "failure",
        "SmtpClientAuthentication is disabled",
        "tick Authenticated SMTP",
    );
    assert_eq!(proxy.fired(), 1);
}
