//! The sync engine end to end: mail delivered to a real Dovecot appears through the API with
//! its fields, new mail arrives under IDLE, POP3 mailboxes are polled and left intact, a
//! malformed message is kept raw and flagged, the tracking rule is applied, a refused login
//! or a revoked grant stops the mailbox with an alert, and so does a server that stays down
//! past the failure limit; a connection that goes silent is noticed and new mail still arrives;
//! a server without IDLE is polled; mail too large is kept as its header; "process emails
//! received after" holds on IMAP and POP3; each folder shows how far its sync is; Gmail's
//! download limit pauses a mailbox instead of failing it; mail a tracking rule leaves out is
//! never downloaded whole.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailbridge_sync::EngineConfig;
use mailbridge_testkit::{AppOptions, CountingProxy, MailWorld, ManualClock, ScriptedGmail};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn fast_engine() -> EngineConfig {
    MailWorld::fast_engine()
}

async fn world() -> MailWorld {
    MailWorld::start(AppOptions {
        engine: Some(fast_engine()),
        ..AppOptions::default()
    })
    .await
}

/// A world whose time the test moves (token expiry without waiting an hour).
async fn world_with_clock() -> (MailWorld, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let w = MailWorld::start(AppOptions {
        engine: Some(fast_engine()),
        clock: clock.clone(),
        ..AppOptions::default()
    })
    .await;
    (w, clock)
}

/// Polls `GET /emails?mailbox_id=…` until it holds `n` emails (or fails after 15 s).
async fn wait_for_emails(w: &MailWorld, mailbox: &str, token: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let (status, page) = w
            .api
            .get(
                &w.app,
                &format!("/api/v1/emails?mailbox_id={mailbox}"),
                token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let emails = page["emails"].as_array().unwrap().clone();
        if emails.len() >= n {
            assert_eq!(emails.len(), n, "more emails than delivered: {emails:#?}");
            return emails;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "only {} of {n} emails after 15 s; mailbox: {}",
            emails.len(),
            w.api
                .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.admin)
                .await
                .1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `PUT /api/v1/contacts` as `token`.
async fn put_contacts(w: &MailWorld, token: &str, body: Value) -> (StatusCode, Value) {
    w.api
        .call(
            &w.app,
            reqwest::Method::PUT,
            "/api/v1/contacts",
            Some(token),
            Some(body),
        )
        .await
}

/// A well-formed id that names nothing.
const NO_SUCH_ID: &str = "0190f7a2-0000-7000-8000-000000000000";

const QUOTE: &[u8] = b"From: Bob Stone <bob@example.com>\r\nTo: Ann Lee <ann@example.com>\r\nCc: carol@example.com\r\n\
Subject: Quote for 40 chairs\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <quote-1@example.com>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
Here is the quote.\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=quote.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n";

#[tokio::test]
async fn delivered_mail_appears_with_its_fields_and_new_mail_arrives_under_idle() {
    let w = world().await;
    w.dovecot.deliver("ann@example.com", QUOTE).unwrap();
    w.dovecot.deliver("ann@example.com", b"From: dan@example.com\r\nTo: ann@example.com\r\nSubject: Re: Quote for 40 chairs\r\nMessage-ID: <r-1@example.com>\r\nIn-Reply-To: <quote-1@example.com>\r\n\r\nLooks good\r\n").unwrap();
    let (_, mailbox) = w.ann_enabled(json!({})).await;

    let emails = wait_for_emails(&w, &mailbox, &w.ann, 2).await;
    let quote = &emails[0];
    assert_eq!(quote["direction"], "incoming");
    assert_eq!(quote["subject"], "Quote for 40 chairs");
    assert_eq!(quote["message_id"], "quote-1@example.com");
    assert_eq!(
        quote["from"],
        json!({"address": "bob@example.com", "name": "Bob Stone"})
    );
    assert_eq!(quote["to"][0]["address"], "ann@example.com");
    assert_eq!(quote["cc"][0]["address"], "carol@example.com");
    assert_eq!(quote["sent_at"], "2026-11-24T10:00:00Z");
    assert_eq!(
        quote["text_body"].as_str().unwrap().trim(),
        "Here is the quote."
    );
    assert_eq!(quote["attachments"][0]["filename"], "quote.pdf");
    assert_eq!(quote["attachments"][0]["size"], 5);
    assert_eq!(quote["parse_error"], Value::Null);
    // The reply joins the quote's conversation.
    assert_eq!(emails[1]["in_reply_to"], json!(["quote-1@example.com"]));
    assert_eq!(emails[1]["conversation_id"], quote["conversation_id"]);

    // The raw bytes come back unchanged; other users see nothing of Ann's mail.
    let id = quote["id"].as_str().unwrap();
    let raw = w
        .api
        .http
        .get(format!("{}/api/v1/emails/{id}/raw", w.app.base))
        .bearer_auth(&w.ann)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.headers()["content-type"], "message/rfc822");
    assert_eq!(raw.bytes().await.unwrap().as_ref(), QUOTE);
    // So does the attachment, decoded, as a download.
    let attachment = |email: &str, attachment: &str, token: &str| {
        w.api
            .http
            .get(format!(
                "{}/api/v1/emails/{email}/attachments/{attachment}",
                w.app.base
            ))
            .bearer_auth(token)
            .send()
    };
    let pdf = quote["attachments"][0]["id"].as_str().unwrap();
    let got = attachment(id, pdf, &w.ann).await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()["content-type"], "application/pdf");
    assert_eq!(
        got.headers()["content-disposition"],
        "attachment; filename=\"quote.pdf\"; filename*=UTF-8''quote.pdf"
    );
    assert_eq!(got.headers()["x-content-type-options"], "nosniff");
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"%PDF-");
    // Not through another email's id, and an unknown one is 404.
    let other = emails[1]["id"].as_str().unwrap();
    assert_eq!(
        attachment(other, pdf, &w.ann).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        attachment(id, NO_SUCH_ID, &w.ann).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let (_, bob) = w
        .app
        .user("bob@example.com", mailbridge_core::Role::User)
        .await
        .unwrap();
    assert_eq!(
        w.api.get(&w.app, "/api/v1/emails", &bob).await.1["emails"],
        json!([])
    );
    assert_eq!(
        w.api
            .get(&w.app, &format!("/api/v1/emails/{id}"), &bob)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        attachment(id, pdf, &bob).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    // New mail while the session idles.
    let delivered = Instant::now();
    w.dovecot.deliver("ann@example.com", b"From: eve@example.com\r\nTo: ann@example.com\r\nSubject: new\r\nMessage-ID: <n-1@example.com>\r\n\r\nhi\r\n").unwrap();
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 3).await;
    let latency = delivered.elapsed();
    assert_eq!(emails[2]["subject"], "new");
    assert!(
        latency < Duration::from_secs(5),
        "IDLE delivery took {latency:?}"
    );
    eprintln!("new mail visible through the API {latency:?} after delivery");

    let (_, m) = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.ann)
        .await;
    assert_eq!(m["items_processed"], 3, "{m:#}");
    assert!(
        m["last_sync_at"].is_string() && m["last_sync_error"].is_null(),
        "{m:#}"
    );
    // Paging: two at a time.
    let (_, page) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/emails?mailbox_id={mailbox}&limit=2"),
            &w.ann,
        )
        .await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/emails?mailbox_id={mailbox}&limit=2&cursor={cursor}"),
            &w.ann,
        )
        .await;
    assert_eq!(rest["emails"][0]["subject"], "new");
    assert!(rest["next_cursor"].is_null());

    let metrics = scrape(&w).await;
    assert!(
        metrics.contains("mailbridge_messages_synced_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mailbridge_connections_open 1"),
        "the idling session: {metrics}"
    );
    assert!(
        metrics.contains("mailbridge_sync_lag_seconds "),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    w.app.stop().await.unwrap();
}

/// A connection that goes silent without closing — a NAT or firewall that forgot it; here a
/// proxy that swallows both directions — is noticed by the IDLE refresh
/// (`EngineConfig::idle_refresh`): the session leaves IDLE, DONE (or the EXAMINE after it)
/// gets no answer within the mail timeout, the session fails as transient, and a new one
/// brings the mail in. TCP keepalive cannot notice this one: on loopback the kernel still
/// acknowledges on both sides of the proxy, so only the application's own traffic tells.
#[tokio::test]
async fn a_connection_gone_silent_is_noticed_and_new_mail_still_arrives() {
    let w = MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            idle_refresh: Duration::from_secs(2),
            mail_timeout: Duration::from_secs(3),
            // No help from the 25-minute re-check.
            full_check: Duration::from_secs(600),
            ..fast_engine()
        }),
        ..AppOptions::default()
    })
    .await;
    let proxy = CountingProxy::start(w.dovecot.ports.imaps).await.unwrap();
    w.dovecot.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: before the silence\r\nMessage-ID: <s-1@example.com>\r\n\r\nhi\r\n").unwrap();
    let imap =
        json!({"protocol": "imap", "host": "127.0.0.1", "port": proxy.port, "security": "tls"});
    let (_, mailbox) = w.ann_enabled_via(imap, json!({})).await;
    wait_for_emails(&w, &mailbox, &w.ann, 1).await;

    // The path goes dark under the idling session (new connections still get through);
    // then new mail arrives.
    let connections = proxy.total();
    proxy.stall();
    let silent_since = Instant::now();
    w.dovecot.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: after the silence\r\nMessage-ID: <s-2@example.com>\r\n\r\nstill here\r\n").unwrap();
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 2).await;
    eprintln!(
        "new mail stored {:?} after the connection went silent",
        silent_since.elapsed()
    );
    assert_eq!(emails[0]["subject"], "before the silence");
    assert_eq!(emails[1]["subject"], "after the silence");
    assert!(
        proxy.total() > connections,
        "a new session brought the mail in"
    );
    // Another refresh later: nothing stored twice, the mailbox still enabled, the silent
    // session counted as one transient failure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for_emails(&w, &mailbox, &w.ann, 2).await;
    let (_, m) = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.ann)
        .await;
    assert_eq!(m["enabled"], true, "{m:#}");
    assert!(m["items_failed"].as_i64().unwrap() >= 1, "{m:#}");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_pop3_mailbox_is_polled_and_its_mail_left_on_the_server() {
    let w = world().await;
    for i in 0..2 {
        w.dovecot.deliver("ann@example.com", format!("From: x@example.com\r\nSubject: pop {i}\r\nMessage-ID: <p{i}@example.com>\r\n\r\nbody\r\n").as_bytes()).unwrap();
    }
    let pop3 = json!({"protocol": "pop3", "host": "127.0.0.1", "port": w.dovecot.ports.pop3s, "security": "tls"});
    let profile = w.gmail_like("POP", pop3, w.submissions(), json!({})).await;
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    w.sign_in(&mailbox, &w.ann).await;
    assert_eq!(w.test(&mailbox, &w.ann).await["enabled"], true);
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 2).await;
    assert_eq!(emails[0]["subject"], "pop 0");
    let left = std::fs::read_dir(w.dovecot.maildir("ann@example.com").join("cur"))
        .unwrap()
        .count()
        + std::fs::read_dir(w.dovecot.maildir("ann@example.com").join("new"))
            .unwrap()
            .count();
    assert_eq!(left, 2, "POP3 sync never deletes");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_mail_is_kept_raw_and_the_tracking_rule_none_keeps_nothing() {
    let w = world().await;
    // (No NUL byte: Dovecot rewrites NULs on output, so they would not come back as sent.)
    let garbage: &[u8] = b"\x01 this is not a message at all \xff\xfe\r\n";
    w.dovecot.deliver("ann@example.com", garbage).unwrap();
    // A NUL that decoding produces (PostgreSQL's text refuses it): stored, not a stuck batch.
    let nul: &[u8] =
        b"From: a@example.com\r\nSubject: =?utf-8?q?x=00y?=\r\nMessage-ID: <nul@example.com>\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nbefore=00after\r\n";
    w.dovecot.deliver("ann@example.com", nul).unwrap();
    let (profile, mailbox) = w.ann_enabled(json!({})).await;
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 2).await;
    assert!(emails[0]["parse_error"].is_string(), "{:#}", emails[0]);
    assert_eq!(emails[1]["subject"], "x\u{FFFD}y", "{:#}", emails[1]);
    assert!(
        emails[1]["text_body"]
            .as_str()
            .unwrap()
            .starts_with("before\u{FFFD}after"),
        "{:#}",
        emails[1]
    );
    let raw = w
        .api
        .http
        .get(format!(
            "{}/api/v1/emails/{}/raw",
            w.app.base,
            emails[0]["id"].as_str().unwrap()
        ))
        .bearer_auth(&w.ann)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.bytes().await.unwrap().as_ref(), garbage);

    // A second mailbox that tracks nothing: read, but no record kept.
    let (bo_id, bo) = w
        .app
        .user("bo@example.com", mailbridge_core::Role::User)
        .await
        .unwrap();
    w.dovecot.deliver("bo@example.com", QUOTE).unwrap();
    let untracked = w
        .mailbox(
            "bo@example.com",
            &bo_id,
            &profile,
            json!({"tracking_rule": "none"}),
        )
        .await;
    w.sign_in(&untracked, &bo).await;
    assert_eq!(w.test(&untracked, &bo).await["enabled"], true);
    let m = w
        .poll(
            &format!("/api/v1/mailboxes/{untracked}"),
            &bo,
            15,
            "a first sync",
            |m| m["last_sync_at"].is_string(),
        )
        .await;
    assert_eq!(m["items_processed"], 0);
    assert_eq!(
        w.api
            .get(
                &w.app,
                &format!("/api/v1/emails?mailbox_id={untracked}"),
                &bo
            )
            .await
            .1["emails"],
        json!([])
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_revoked_grant_stops_the_mailbox_with_an_alert_for_its_owner() {
    let (w, clock) = world_with_clock().await;
    let (_, mailbox) = w.ann_enabled(json!({})).await;
    // Wait for the first sync, then the user revokes access and the token comes due.
    let mailbox_path = format!("/api/v1/mailboxes/{mailbox}");
    w.poll(&mailbox_path, &w.ann, 15, "a first sync", |m| {
        m["last_sync_at"].is_string()
    })
    .await;
    w.oauth.revoke_account("ann@example.com").await.unwrap();
    clock.advance(chrono::Duration::minutes(59));
    // New mail wakes the idling session, which then finds its token due and refreshes it.
    w.dovecot
        .deliver("ann@example.com", b"Subject: wake up\r\n\r\n.\r\n")
        .unwrap();
    let m = w
        .poll(&mailbox_path, &w.ann, 20, "the mailbox disabled", |m| {
            m["enabled"] == false
        })
        .await;
    assert_eq!(m["sign_in_status"], "needs_sign_in", "{m:#}");
    let (_, alerts) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/mailboxes/{mailbox}/alerts"),
            &w.ann,
        )
        .await;
    let kinds: Vec<&str> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"sign_in_required"), "{alerts:#}");
    let stats = w.oauth.stats().await.unwrap();
    assert_eq!(
        stats["refreshGrants"], 1,
        "invalid_grant is not retried: {stats}"
    );
    // The mailbox moves to another owner: its open alert goes with it.
    let (cy_id, cy) = w
        .app
        .user("cy@example.com", mailbridge_core::Role::User)
        .await
        .unwrap();
    w.api
        .patch(
            &w.app,
            &format!("/api/v1/mailboxes/{mailbox}"),
            &w.admin,
            json!({"owner_user_id": cy_id}),
        )
        .await;
    let kinds_of = |alerts: Value| -> Vec<String> {
        alerts
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, cys) = w.api.get(&w.app, "/api/v1/alerts", &cy).await;
    assert!(kinds_of(cys).contains(&"sign_in_required".to_owned()));
    let (_, anns) = w.api.get(&w.app, "/api/v1/alerts", &w.ann).await;
    assert!(kinds_of(anns).is_empty());
    w.app.stop().await.unwrap();
}

/// Polls an email until its status is `status` (or fails after 45 s: a retry after a failure
/// waits 2, 4, 8… s, and a loaded machine may need a few).
async fn wait_for_status(w: &MailWorld, id: &str, status: &str) -> Value {
    let what = format!("the email {status}");
    w.poll(&format!("/api/v1/emails/{id}"), &w.ann, 45, &what, |e| {
        e["status"] == status
    })
    .await
}

async fn enabled_mailbox(w: &MailWorld) -> String {
    w.ann_enabled(json!({})).await.1
}

#[tokio::test]
async fn outgoing_mail_is_sent_once_and_its_replies_join_the_conversation() {
    let w = world().await;
    let mailbox = enabled_mailbox(&w).await;
    let body = json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com", "name": "Bob"}],
                      "subject": "Your quote", "text_body": "Please find the quote below."});
    let post = |key: &'static str| {
        w.api
            .http
            .post(format!("{}/api/v1/emails", w.app.base))
            .bearer_auth(&w.ann)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = post("quote-42").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "pending_send");
    assert_eq!(first["direction"], "outgoing");
    let again = post("quote-42").await.unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "the same key returns the same email"
    );
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);

    let id = first["id"].as_str().unwrap();
    let sent = wait_for_status(&w, id, "sent").await;
    assert!(
        sent["send_reply"].as_str().unwrap().starts_with("250"),
        "{sent:#}"
    );
    assert!(sent["delivered_at"].is_string());
    let message_id = sent["message_id"].as_str().unwrap().to_owned();
    let relayed = w.dovecot.relayed().unwrap();
    assert_eq!(relayed.len(), 1, "sent exactly once");
    let metrics = scrape(&w).await;
    assert!(
        metrics.contains("mailbridge_sends_total{kind=\"sent\"} 1"),
        "{metrics}"
    );
    let token = sent["tracking_token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 8, "{sent:#}");
    let subject = format!("Your quote [MB-{token}]");
    assert_eq!(sent["subject"], subject.as_str());
    let text = String::from_utf8_lossy(&relayed[0]);
    assert!(
        text.contains(&format!("<{message_id}>")) && text.contains(&format!("Subject: {subject}")),
        "{text}"
    );

    // Track responses only: a reply to the sent mail is kept and joins its conversation;
    // unrelated mail is not kept.
    w.api
        .patch(
            &w.app,
            &format!("/api/v1/mailboxes/{mailbox}"),
            &w.ann,
            json!({"tracking_rule": "responses"}),
        )
        .await;
    w.dovecot.deliver("ann@example.com", b"From: carol@example.com\r\nSubject: unrelated\r\nMessage-ID: <u1@example.com>\r\n\r\nhi\r\n").unwrap();
    w.dovecot.deliver("ann@example.com", format!("From: bob@example.com\r\nSubject: Re: Your quote\r\nMessage-ID: <b1@example.com>\r\nIn-Reply-To: <{message_id}>\r\n\r\nDeal.\r\n").as_bytes()).unwrap();
    // A client that drops the reply headers: the token in the subject still ties it.
    w.dovecot.deliver("ann@example.com", format!("From: dave@example.com\r\nSubject: AW: {subject}\r\nMessage-ID: <d1@example.com>\r\n\r\nForwarded to me.\r\n").as_bytes()).unwrap();
    let incoming = format!("/api/v1/emails?mailbox_id={mailbox}&direction=incoming");
    let page = w
        .poll(&incoming, &w.ann, 15, "two replies", |page| {
            page["emails"].as_array().unwrap().len() >= 2
        })
        .await;
    let replies = page["emails"].as_array().unwrap().clone();
    tokio::time::sleep(Duration::from_millis(300)).await; // the unrelated one stays out
    let page = w.api.get(&w.app, &incoming, &w.ann).await.1;
    assert_eq!(page["emails"].as_array().unwrap().len(), 2, "{page:#}");
    let subjects: Vec<&str> = replies
        .iter()
        .map(|r| r["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        ["Re: Your quote", format!("AW: {subject}").as_str()]
    );
    for reply in &replies {
        assert_eq!(
            reply["conversation_id"], sent["conversation_id"],
            "{reply:#}"
        );
        assert!(
            reply["tracking_token"].is_null(),
            "only sent mail has its own token"
        );
    }
    let (_, conversation) = w
        .api
        .get(
            &w.app,
            &format!(
                "/api/v1/emails?conversation_id={}",
                sent["conversation_id"].as_str().unwrap()
            ),
            &w.ann,
        )
        .await;
    assert_eq!(conversation["emails"].as_array().unwrap().len(), 3);
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_temporary_failure_is_retried_and_a_permanent_one_fails_with_the_servers_words() {
    let mut w = world().await;
    let mailbox = enabled_mailbox(&w).await;
    // The relay behind submission is down: the send fails for now.
    w.dovecot.stop_sink();
    let (status, email) = w.api.post(&w.app, "/api/v1/emails", &w.ann, json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com"}], "subject": "later", "text_body": "x", "tracking_token": false})).await;
    assert_eq!(status, StatusCode::CREATED, "{email}");
    assert_eq!(
        (&email["subject"], &email["tracking_token"]),
        (&json!("later"), &Value::Null),
        "no token asked for, the subject stays as written"
    );
    let id = email["id"].as_str().unwrap().to_owned();
    let e = w
        .poll(
            &format!("/api/v1/emails/{id}"),
            &w.ann,
            20,
            "a failed attempt, to be retried",
            |e| e["send_attempts"].as_i64().unwrap() >= 1 && e["status"] == "pending_send",
        )
        .await;
    assert!(e["send_reply"].is_string(), "{e:#}");
    w.dovecot.start_sink().unwrap();
    let sent = wait_for_status(&w, &id, "sent").await;
    assert!(sent["send_attempts"].as_i64().unwrap() >= 2, "{sent:#}");
    assert_eq!(w.dovecot.relayed().unwrap().len(), 1);

    // Too big for the server (submission_max_mail_size 100k): refused for good.
    let big = "x".repeat(200 * 1024);
    let (_, email) = w.api.post(&w.app, "/api/v1/emails", &w.ann, json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com"}], "subject": "big", "text_body": big})).await;
    let failed = wait_for_status(&w, email["id"].as_str().unwrap(), "failed").await;
    assert!(
        failed["send_reply"].as_str().unwrap().contains("552"),
        "{failed:#}"
    );
    assert_eq!(
        failed["send_attempts"], 1,
        "a permanent refusal is not retried"
    );

    // Mail from a mailbox that is not enabled waits, untouched, until it is.
    let (bob_id, bob) = w
        .app
        .user("bob@example.com", mailbridge_core::Role::User)
        .await
        .unwrap();
    let profile = w
        .gmail_like("Second", w.imaps(), w.submissions(), json!({}))
        .await;
    let idle_box = w
        .mailbox("bob@example.com", &bob_id, &profile, json!({}))
        .await;
    let (_, waiting) = w.api.post(&w.app, "/api/v1/emails", &bob, json!({"mailbox_id": idle_box, "to": [{"address": "x@example.com"}], "subject": "wait", "text_body": "x"})).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, waiting) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/emails/{}", waiting["id"].as_str().unwrap()),
            &bob,
        )
        .await;
    assert_eq!(
        (waiting["status"].clone(), waiting["send_attempts"].clone()),
        (json!("pending_send"), json!(0)),
        "{waiting:#}"
    );

    // Bad input is refused at the door.
    let r = w.api.post(&w.app, "/api/v1/emails", &w.ann, json!({"mailbox_id": mailbox, "to": [{"address": "bob"}], "subject": "x", "text_body": "x"})).await;
    mailbridge_testkit::assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("to[0].address"),
    );
    let r = w
        .api
        .post(
            &w.app,
            "/api/v1/emails",
            &w.ann,
            json!({"mailbox_id": mailbox, "to": [], "subject": "x", "text_body": "x"}),
        )
        .await;
    mailbridge_testkit::assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid", Some("to"));
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn known_contacts_keeps_only_mail_with_a_contact_among_its_parties() {
    let w = world().await;
    let r = put_contacts(
        &w,
        &w.admin,
        json!({"contacts": [{"email": "Bob@Example.com", "name": "Bob"}]}),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, json!({"upserted": 1})));
    let r = put_contacts(&w, &w.ann, json!({"contacts": []})).await;
    mailbridge_testkit::assert_error(&r, StatusCode::FORBIDDEN, "forbidden", None);
    let r = put_contacts(&w, &w.admin, json!({"contacts": [{"email": "nope"}]})).await;
    mailbridge_testkit::assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("contacts[0].email"),
    );
    assert_eq!(
        w.api.get(&w.app, "/api/v1/contacts", &w.ann).await.1,
        json!([{"email": "bob@example.com", "name": "Bob"}])
    );

    w.dovecot.deliver("ann@example.com", b"From: eve@example.com\r\nTo: ann@example.com\r\nSubject: stranger\r\nMessage-ID: <e1@example.com>\r\n\r\nhi\r\n").unwrap();
    w.dovecot.deliver("ann@example.com", b"From: bob@example.com\r\nTo: ann@example.com\r\nSubject: from a contact\r\nMessage-ID: <k1@example.com>\r\n\r\nhi\r\n").unwrap();
    let (_, mailbox) = w
        .ann_enabled(json!({"tracking_rule": "known_contacts"}))
        .await;
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 1).await;
    assert_eq!(emails[0]["subject"], "from a contact");
    let (_, m) = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.ann)
        .await;
    assert_eq!(
        m["items_processed"], 1,
        "the stranger's mail was read but not kept: {m:#}"
    );
    assert_eq!(
        w.api
            .delete(&w.app, "/api/v1/contacts/bob@example.com", &w.admin)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_token_expiring_mid_session_is_refreshed_and_sync_goes_on() {
    let (w, clock) = world_with_clock().await;
    let mailbox = enabled_mailbox(&w).await;
    w.dovecot
        .deliver(
            "ann@example.com",
            b"From: a@example.com\r\nSubject: before\r\nMessage-ID: <t1@example.com>\r\n\r\n.\r\n",
        )
        .unwrap();
    wait_for_emails(&w, &mailbox, &w.ann, 1).await;
    // The access token comes due while the session idles; the provider would now refuse it.
    clock.advance(chrono::Duration::minutes(59));
    w.oauth.expire_account("ann@example.com").await.unwrap();
    w.dovecot
        .deliver(
            "ann@example.com",
            b"From: a@example.com\r\nSubject: after\r\nMessage-ID: <t2@example.com>\r\n\r\n.\r\n",
        )
        .unwrap();
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 2).await;
    assert_eq!(emails[1]["subject"], "after");
    // Another delivery proves the new session (with the refreshed token) is live.
    w.dovecot
        .deliver(
            "ann@example.com",
            b"From: a@example.com\r\nSubject: later\r\nMessage-ID: <t3@example.com>\r\n\r\n.\r\n",
        )
        .unwrap();
    wait_for_emails(&w, &mailbox, &w.ann, 3).await;
    let stats = w.oauth.stats().await.unwrap();
    assert_eq!(stats["refreshGrants"], 1, "{stats}");
    let (_, m) = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.ann)
        .await;
    assert_eq!(
        (m["enabled"].clone(), m["sign_in_status"].clone()),
        (json!(true), json!("signed_in")),
        "{m:#}"
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn most_of_a_profiles_mailboxes_failing_alerts_the_profiles_owner() {
    let w = world().await;
    let profile = &w.password_profile("Passwords").await;
    let mut failing = Vec::new();
    for (i, password) in ["hunter2", "wrong-1", "wrong-2"].iter().enumerate() {
        let email = format!("box{i}@example.com");
        let (id, _) = w
            .app
            .user(&email, mailbridge_core::Role::User)
            .await
            .unwrap();
        let m = w
            .mailbox(
                &email,
                &id,
                profile,
                json!({"login_name": "pw@example.com", "password": password}),
            )
            .await;
        // Enabled as if tested earlier; then the passwords changed on the server.
        w.enable_as_tested(&m).await;
        if i > 0 {
            failing.push(m);
        }
    }
    let alerts = w
        .poll(
            "/api/v1/alerts",
            &w.admin,
            30,
            "a profile alert",
            |alerts| {
                alerts
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["kind"] == "profile_failing")
            },
        )
        .await;
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "profile_failing")
        .unwrap();
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("2 of the 3 mailboxes of server profile 'Passwords'"),
        "{alert:#}"
    );
    assert!(alert["mailbox_id"].is_null());
    assert!(alert["profile_id"].is_string(), "{alert:#}");
    // The owner dismisses it; someone else cannot.
    let dismiss = |token: &str| {
        w.api
            .http
            .post(format!(
                "{}/api/v1/alerts/{}/dismiss",
                w.app.base,
                alert["id"].as_str().unwrap()
            ))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        dismiss(&w.ann).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        dismiss(&w.admin).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let (_, open) = w.api.get(&w.app, "/api/v1/alerts", &w.admin).await;
    assert!(
        !open
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "profile_failing"),
        "{open:#}"
    );
    for m in &failing {
        let (_, view) = w
            .api
            .get(&w.app, &format!("/api/v1/mailboxes/{m}"), &w.admin)
            .await;
        assert_eq!(view["enabled"], false, "{view:#}");
        assert!(
            view["incoming_status_hint"]
                .as_str()
                .unwrap()
                .contains("check the password"),
            "{view:#}"
        );
    }
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_that_end_at_once_do_not_become_a_login_storm() {
    let w = MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            login_limit: (3, Duration::from_secs(30)),
            ..fast_engine()
        }),
        ..AppOptions::default()
    })
    .await;
    // Tokens good for a minute: each session is over before it starts (the engine leaves
    // two minutes before expiry), so the worker comes straight back for another login.
    w.oauth.set_mode(json!({"expiresIn": 60})).await.unwrap();
    let mailbox = enabled_mailbox(&w).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Each login follows a refresh; Test & Enable made one of them. (Without the limit this
    // loop did 243 in these four seconds.)
    let stats = w.oauth.stats().await.unwrap();
    let logins = stats["refreshGrants"].as_u64().unwrap() - 1;
    assert!(
        (2..=3).contains(&logins),
        "the worker must loop, but log in at most 3 times per window: {logins} logins, {stats}"
    );
    let (_, m) = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.ann)
        .await;
    assert_eq!(m["enabled"], true, "held back, not failed: {m:#}");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_server_that_stays_down_disables_the_mailbox_after_the_failure_limit() {
    let w = MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            max_failures: 3,
            ..fast_engine()
        }),
        ..AppOptions::default()
    })
    .await;
    // A port nothing listens on: every connection is refused, a transient failure.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let profile = w
        .password_profile_with(
            "Down",
            json!({"protocol": "imap", "host": "127.0.0.1", "port": down, "security": "tls"}),
        )
        .await;
    let m = w.ann_password_mailbox_on(&profile).await;
    // Enabled as if tested while the server was up.
    w.enable_as_tested(&m).await;
    let view = w
        .poll(
            &format!("/api/v1/mailboxes/{m}"),
            &w.ann,
            30,
            "the mailbox disabled",
            |view| view["enabled"] == false,
        )
        .await;
    assert!(
        view["last_sync_error"]
            .as_str()
            .unwrap()
            .contains("connection failed"),
        "{view:#}"
    );
    let (_, alerts) = w.api.get(&w.app, "/api/v1/alerts", &w.ann).await;
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "sync_failing")
        .unwrap_or_else(|| panic!("no sync_failing alert: {alerts:#}"));
    assert_eq!(alert["mailbox_id"], m.as_str());
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("3 attempts in a row failed"),
        "{alert:#}"
    );
    assert!(
        alert["hint"]
            .as_str()
            .unwrap()
            .contains("Check that the mail server is reachable"),
        "{alert:#}"
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn email_router_mailboxes_are_tested_and_send_and_outgoing_none_is_refused() {
    let w = world().await;
    // Test & Enable checks both directions of a router-group mailbox, as of a synchronized one.
    let (_, routed) = w
        .ann_enabled(json!({
            "incoming_method": "email_router", "outgoing_method": "email_router",
            "router_group": "office",
        }))
        .await;
    let mail = json!({"mailbox_id": routed, "to": [{"address": "bob@example.com"}], "subject": "hi", "text_body": "x"});
    let (status, email) = w
        .api
        .post(&w.app, "/api/v1/emails", &w.ann, mail.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{email:#}");
    assert_eq!(email["status"], "pending_send");
    // A mailbox whose outgoing mail is not synchronized says so.
    let (status, m) = w
        .api
        .patch(
            &w.app,
            &format!("/api/v1/mailboxes/{routed}"),
            &w.admin,
            json!({"outgoing_method": "none"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{m:#}");
    mailbridge_testkit::assert_error(
        &w.api.post(&w.app, "/api/v1/emails", &w.ann, mail).await,
        StatusCode::CONFLICT,
        "not_sending",
        None,
    );
    w.app.stop().await.unwrap();
}

/// A server without IDLE (RFC 2177; real Dovecot with IDLE left out of its capabilities) is
/// polled at the profile's interval — a session per poll, as for POP3 — instead of failing
/// the mailbox on a command it never offered: new mail arrives within the interval, and the
/// mailbox stays enabled with no failure counted.
#[tokio::test]
async fn a_server_without_idle_is_polled_and_never_failed() {
    let w = world().await;
    let plain = mailbridge_testkit::Dovecot::start_without_idle(
        &w.oauth,
        &[("ann@example.com", "hunter2")],
    )
    .unwrap();
    let proxy = CountingProxy::start(plain.ports.imap).await.unwrap();
    plain.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: first\r\nMessage-ID: <noidle-1@example.com>\r\n\r\nhi\r\n").unwrap();
    let profile = w
        .password_profile_at(
            "No IDLE here",
            json!({"protocol": "imap", "host": "127.0.0.1", "port": proxy.port, "security": "none"}),
            json!({"host": "127.0.0.1", "port": plain.ports.submission, "security": "none"}),
            json!({"poll_interval_seconds": 10}),
        )
        .await;
    let mailbox = w.ann_password_mailbox_on(&profile).await;
    let tested = w.test(&mailbox, &w.ann).await;
    assert_eq!(tested["enabled"], true, "{tested:#}");
    wait_for_emails(&w, &mailbox, &w.ann, 1).await;
    let sessions = proxy.total();

    plain.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: second\r\nMessage-ID: <noidle-2@example.com>\r\n\r\nagain\r\n").unwrap();
    let arrived = Instant::now();
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 2).await;
    eprintln!("stored {:?} after delivery, by polling", arrived.elapsed());
    assert_eq!(emails[1]["subject"], "second");
    assert!(
        proxy.total() > sessions,
        "a poll's own session brought it in (an IDLE session would have stayed open)"
    );
    w.assert_healthy(&mailbox).await;
    w.app.stop().await.unwrap();
}

/// A message with an attachment of `kib` KiB (base64), subject `subject`.
fn message_of(subject: &str, kib: usize) -> Vec<u8> {
    let line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    let body = line.repeat(kib * 1024 / line.len() + 1);
    format!(
        "From: x@example.com\r\nTo: ann@example.com\r\nSubject: {subject}\r\nMessage-ID: <{}@example.com>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
see attached\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=big.bin\r\n\
Content-Transfer-Encoding: base64\r\n\r\n{body}--b--\r\n",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

/// Mail larger than `max_message_bytes` (here 64 KiB) on `protocol`: stored as its header
/// only, `truncated`, with the server's size; the mail around it whole; the mailbox never
/// stopped by it.
async fn a_message_too_large_is_its_header_and_stops_nothing(protocol: &str) {
    let w = MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            max_message_bytes: 64 * 1024,
            ..fast_engine()
        }),
        ..AppOptions::default()
    })
    .await;
    let (small, big, after) = (
        message_of("small one", 8),
        message_of("too large", 200),
        message_of("after it", 8),
    );
    for m in [&small, &big, &after] {
        w.dovecot.deliver("ann@example.com", m).unwrap();
    }
    let port = match protocol {
        "pop3" => w.dovecot.ports.pop3s,
        _ => w.dovecot.ports.imaps,
    };
    let incoming =
        json!({"protocol": protocol, "host": "127.0.0.1", "port": port, "security": "tls"});
    let (_, mailbox) = w.ann_enabled_via(incoming, json!({})).await;
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 3).await;
    let by_subject = |s: &str| {
        emails
            .iter()
            .find(|e| e["subject"] == s)
            .unwrap_or_else(|| panic!("no {s}: {emails:#?}"))
    };
    for (subject, raw) in [("small one", &small), ("after it", &after)] {
        let e = by_subject(subject);
        assert_eq!(e["truncated"], false, "{e:#}");
        assert_eq!(e["size"], raw.len(), "{e:#}");
        assert_eq!(e["attachments"][0]["filename"], "big.bin", "{e:#}");
    }
    let e = by_subject("too large");
    assert_eq!(e["truncated"], true, "{e:#}");
    assert_eq!(
        e["size"],
        big.len(),
        "the whole message's size, as the server counts it"
    );
    assert_eq!(e["attachments"], json!([]), "{e:#}");
    assert_eq!(e["message_id"], "too-large@example.com");
    let raw = w
        .api
        .http
        .get(format!(
            "{}/api/v1/emails/{}/raw",
            w.app.base,
            e["id"].as_str().unwrap()
        ))
        .bearer_auth(&w.ann)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let header_end = big.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        raw.as_ref(),
        &big[..header_end],
        "the raw message is the header"
    );
    w.assert_healthy(&mailbox).await;
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn imap_mail_too_large_is_stored_as_its_header() {
    a_message_too_large_is_its_header_and_stops_nothing("imap").await;
}

#[tokio::test]
async fn pop3_mail_too_large_is_stored_as_its_header() {
    a_message_too_large_is_its_header_and_stops_nothing("pop3").await;
}

/// A mailbox's status says how far each folder's pass is: done after a first sync; while a
/// long one runs (written here as its batches write it: 40 of 100 read in the first 20 s),
/// how many are read and the time left at that rate (the console's page: `console.rs`).
#[tokio::test]
async fn each_folder_shows_how_far_its_sync_is() {
    let (w, clock) = world_with_clock().await;
    for i in 0..3 {
        w.dovecot.deliver("ann@example.com", format!("From: x@example.com\r\nSubject: p{i}\r\nMessage-ID: <p{i}@example.com>\r\n\r\nbody\r\n").as_bytes()).unwrap();
    }
    let (_, mailbox) = w.ann_enabled(json!({})).await;
    wait_for_emails(&w, &mailbox, &w.ann, 3).await;
    let folders = w
        .poll(
            &format!("/api/v1/mailboxes/{mailbox}"),
            &w.ann,
            10,
            "INBOX's pass recorded",
            |m| m["folders"][0]["pass_done"] == 3,
        )
        .await["folders"]
        .clone();
    assert_eq!(
        folders.as_array().unwrap().len(),
        2,
        "INBOX and Sent: {folders:#}"
    );
    assert_eq!(folders[0]["folder"], "INBOX");
    assert_eq!(folders[1]["folder"], "Sent");
    assert_eq!(folders[0]["messages_on_server"], 3);
    assert_eq!(folders[0]["pass_total"], 3);
    assert_eq!(folders[0]["seconds_left"], Value::Null, "done: {folders:#}");

    // A pass under way, as its batches record it.
    let started_at = mailbridge_core::Clock::now(clock.as_ref());
    clock.advance(chrono::Duration::seconds(20));
    w.archive_pass_under_way(&mailbox, started_at).await;
    let (_, m) = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.ann)
        .await;
    let archive = &m["folders"][0];
    assert_eq!(archive["folder"], "Archive", "{m:#}");
    assert_eq!(
        (&archive["pass_done"], &archive["pass_total"]),
        (&json!(40), &json!(100))
    );
    assert_eq!(
        archive["seconds_left"], 30,
        "60 left at 2 a second: {archive:#}"
    );
    assert_eq!(archive["messages_on_server"], 120);

    w.app.stop().await.unwrap();
}

/// "Process emails received after" end to end on `protocol`: of mail received before and after
/// the profile's date, a first sync stores only the later. IMAP asks the server (`SEARCH
/// SINCE`, by the date the server received it: the old message's file is dated back, as a
/// Maildir delivery that long ago would be); POP3 reads the Date header.
async fn only_mail_received_after_the_profiles_date_is_processed(protocol: &str) {
    let w = world().await;
    let old = w.dovecot.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: from January\r\nDate: Mon, 5 Jan 2026 10:00:00 +0000\r\nMessage-ID: <jan@example.com>\r\n\r\nold\r\n").unwrap();
    let january = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_607_200);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(january)
        .unwrap();
    let now = w.app.store.now().to_rfc2822();
    w.dovecot.deliver("ann@example.com", format!("From: x@example.com\r\nTo: ann@example.com\r\nSubject: from today\r\nDate: {now}\r\nMessage-ID: <today@example.com>\r\n\r\nnew\r\n").as_bytes()).unwrap();
    let port = match protocol {
        "pop3" => w.dovecot.ports.pop3s,
        _ => w.dovecot.ports.imaps,
    };
    let profile = w
        .gmail_like(
            "Since June",
            json!({"protocol": protocol, "host": "127.0.0.1", "port": port, "security": "tls"}),
            w.submissions(),
            json!({"process_emails_received_after": "2026-06-01"}),
        )
        .await;
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    w.sign_in(&mailbox, &w.ann).await;
    assert_eq!(w.test(&mailbox, &w.ann).await["enabled"], true);
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 1).await;
    assert_eq!(emails[0]["subject"], "from today");
    w.assert_healthy(&mailbox).await;
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn imap_processes_only_mail_received_after_the_profiles_date() {
    only_mail_received_after_the_profiles_date_is_processed("imap").await;
}

#[tokio::test]
async fn pop3_processes_only_mail_received_after_the_profiles_date() {
    only_mail_received_after_the_profiles_date_is_processed("pop3").await;
}

/// Gmail's download limit (`[OVERQUOTA]`, on the scripted Gmail: no real peer refuses on
/// demand) pauses the mailbox: its status says until when, it is not counted as failing, and
/// it resumes on its own once the limit lifts.
#[tokio::test]
async fn gmails_download_limit_pauses_the_mailbox_and_it_resumes_on_its_own() {
    let w = MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            provider_pause: Duration::from_secs(2),
            ..fast_engine()
        }),
        ..AppOptions::default()
    })
    .await;
    let gmail = mailbridge_testkit::ScriptedGmail::start("ann@example.com", "*", true)
        .await
        .unwrap();
    gmail.set_over_quota(true);
    let incoming =
        json!({"protocol": "imap", "host": "127.0.0.1", "port": gmail.port, "security": "none"});
    let (_, mailbox) = w.ann_enabled_via(incoming, json!({})).await;
    let paused = w
        .poll(
            &format!("/api/v1/mailboxes/{mailbox}"),
            &w.ann,
            15,
            "the mailbox paused",
            |m| m["paused_until"].is_string(),
        )
        .await;
    let said = paused["last_sync_error"].as_str().unwrap();
    assert!(
        said.starts_with("paused until ") && said.contains("[OVERQUOTA]"),
        "{paused:#}"
    );
    assert_eq!(paused["enabled"], true, "{paused:#}");
    assert_eq!(
        paused["items_failed"], 0,
        "a limit is not a failure: {paused:#}"
    );

    gmail.set_over_quota(false);
    // INBOX's two, and Ann's answer from "[Gmail]/Sent Mail": hers, in the same conversation.
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 3).await;
    let answer = emails
        .iter()
        .find(|e| e["folder"] == "[Gmail]/Sent Mail")
        .unwrap();
    assert_eq!(answer["direction"], "outgoing", "{answer:#}");
    assert_eq!(answer["gmail_labels"], json!(["\\Sent"]));
    let question = emails.iter().find(|e| e["subject"] == "Lunch?").unwrap();
    assert_eq!(answer["conversation_id"], question["conversation_id"]);
    let (_, m) = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.ann)
        .await;
    assert_eq!(m["paused_until"], Value::Null, "{m:#}");
    assert_eq!(m["last_sync_error"], Value::Null, "{m:#}");
    w.assert_healthy(&mailbox).await;
    w.app.stop().await.unwrap();
}

/// Under a tracking rule other than `all`, headers come first: a large message the rule does
/// not keep is never downloaded whole (counted at a proxy in front of Dovecot).
#[tokio::test]
async fn mail_the_tracking_rule_leaves_out_is_never_downloaded_whole() {
    let w = world().await;
    let r = put_contacts(
        &w,
        &w.admin,
        json!({"contacts": [{"email": "bob@example.com"}]}),
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{r:?}");
    let stranger = message_of("from a stranger", 1024);
    w.dovecot.deliver("ann@example.com", &stranger).unwrap();
    w.dovecot.deliver("ann@example.com", b"From: bob@example.com\r\nTo: ann@example.com\r\nSubject: from a contact\r\nMessage-ID: <k2@example.com>\r\n\r\nhi\r\n").unwrap();
    let proxy = CountingProxy::start(w.dovecot.ports.imaps).await.unwrap();
    let incoming =
        json!({"protocol": "imap", "host": "127.0.0.1", "port": proxy.port, "security": "tls"});
    let (_, mailbox) = w
        .ann_enabled_via(incoming, json!({"tracking_rule": "known_contacts"}))
        .await;
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 1).await;
    assert_eq!(emails[0]["subject"], "from a contact");
    w.poll(
        &format!("/api/v1/mailboxes/{mailbox}"),
        &w.ann,
        10,
        "the pass over both messages",
        |m| m["folders"][0]["pass_done"] == 2,
    )
    .await;
    let served = proxy.served();
    assert!(
        served < stranger.len() / 4,
        "{served} bytes came from the server for a {}-byte message left out",
        stranger.len()
    );
    w.app.stop().await.unwrap();
}

/// Ann's mailbox on a scripted Gmail (`prepare`d before the first login), enabled and its
/// first sync done: the world, the server, the mailbox, and the id of its record of a subject
/// in a folder.
async fn ann_on_scripted_gmail(
    prepare: impl FnOnce(&ScriptedGmail),
) -> (
    MailWorld,
    ScriptedGmail,
    String,
    impl Fn(&str, &str) -> String,
) {
    let w = world().await;
    let gmail = ScriptedGmail::start("ann@example.com", "*", true)
        .await
        .unwrap();
    prepare(&gmail);
    let incoming =
        json!({"protocol": "imap", "host": "127.0.0.1", "port": gmail.port, "security": "none"});
    let (_, mailbox) = w.ann_enabled_via(incoming, json!({})).await;
    let emails = wait_for_emails(&w, &mailbox, &w.ann, 3).await;
    let id_of = move |subject: &str, folder: &str| {
        emails
            .iter()
            .find(|e| e["subject"] == subject && e["folder"] == folder)
            .unwrap_or_else(|| panic!("{subject} in {folder}: {emails:#?}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    (w, gmail, mailbox, id_of)
}

/// Labels Friday's message (the second of `GMAIL_INBOX`) Sent too, as the web client would, and
/// waits up to `within` seconds for its record `friday` to carry the new label.
async fn label_sent(w: &MailWorld, gmail: &ScriptedGmail, friday: &str, within: u64) {
    gmail.relabel(
        mailbridge_testkit::GMAIL_INBOX[1].msg_id,
        "(\\Inbox \\Sent \"Work/Lunch\")",
    );
    let both = w
        .poll(
            &format!("/api/v1/emails/{friday}"),
            &w.ann,
            within,
            "the new label",
            |e| e["gmail_labels"].as_array().unwrap().len() == 3,
        )
        .await;
    assert_eq!(
        both["gmail_labels"],
        json!(["\\Inbox", "\\Sent", "Work/Lunch"])
    );
}

/// Gmail, where folders are labels: a message in INBOX and Sent Mail is one record whose
/// labels say where it is; labels and flags changed in the web client follow (CONDSTORE);
/// a message that leaves INBOX but is still sent mail moves to Sent Mail; one in no synced
/// folder any more is deleted on the server — and nothing is stored twice.
#[tokio::test]
async fn gmail_labels_and_flags_follow_and_one_message_stays_one_record() {
    use mailbridge_testkit::GMAIL_INBOX;
    let (w, gmail, mailbox, id_of) = ann_on_scripted_gmail(|_| {}).await;
    let (lunch, friday) = (id_of("Lunch?", "INBOX"), id_of("Re: Lunch?", "INBOX"));
    let answer = id_of("Re: Lunch?", "[Gmail]/Sent Mail");
    let email = |id: String| {
        let w = &w;
        async move {
            w.api
                .get(&w.app, &format!("/api/v1/emails/{id}"), &w.ann)
                .await
                .1
        }
    };
    // Friday's message is also labelled Sent: now in both folders, still one record.
    label_sent(&w, &gmail, &friday, 15).await;
    // Starred in the web client.
    gmail.set_flags(GMAIL_INBOX[1].msg_id, "(\\Seen \\Flagged)");
    w.poll(
        &format!("/api/v1/emails/{friday}"),
        &w.ann,
        15,
        "the star",
        |e| e["flags"]["flagged"] == true,
    )
    .await;
    // Taken out of INBOX, but still sent mail: it moves, it is not deleted.
    gmail.relabel(GMAIL_INBOX[1].msg_id, "(\\Sent)");
    let moved = w
        .poll(
            &format!("/api/v1/emails/{friday}"),
            &w.ann,
            15,
            "the record in Sent Mail",
            |e| e["folder"] == "[Gmail]/Sent Mail",
        )
        .await;
    assert!(moved["deleted_on_server_at"].is_null(), "{moved:#}");
    // A message only in INBOX starred: Gmail's IDLE says nothing of it; INBOX's counters do.
    gmail.set_flags(GMAIL_INBOX[0].msg_id, "(\\Seen \\Flagged)");
    w.poll(
        &format!("/api/v1/emails/{lunch}"),
        &w.ann,
        15,
        "the star on a message only in INBOX",
        |e| e["flags"]["flagged"] == true,
    )
    .await;
    // Archived: in no synced folder any more.
    gmail.relabel(GMAIL_INBOX[0].msg_id, "(\\Important)");
    w.poll(
        &format!("/api/v1/emails/{lunch}"),
        &w.ann,
        15,
        "the archived message deleted on the server",
        |e| e["deleted_on_server_at"].is_string(),
    )
    .await;
    assert!(email(answer).await["deleted_on_server_at"].is_null());
    let (_, page) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/emails?mailbox_id={mailbox}"),
            &w.ann,
        )
        .await;
    assert_eq!(
        page["emails"].as_array().unwrap().len(),
        3,
        "nothing twice: {page:#}"
    );
    let (_, events) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/events?after=0&types=email.deleted&mailbox_id={mailbox}"),
            &w.ann,
        )
        .await;
    let deleted: Vec<&Value> = events["events"].as_array().unwrap().iter().collect();
    assert_eq!(deleted.len(), 1, "{events:#}");
    assert_eq!(deleted[0]["data"]["email"]["id"], lunch.as_str());
    w.assert_healthy(&mailbox).await;
    w.app.stop().await.unwrap();
}

/// The node's `mailbridge_sync_lag_seconds` and each mailbox's `lag_seconds` are the time
/// since it was last known current: a quiet mailbox whose passes find nothing new stays at
/// a few seconds (before, an up-to-date pass never recorded itself, so quiet mailboxes
/// looked ever later), and a mailbox whose server is gone falls behind for all to see.
#[tokio::test]
async fn a_quiet_mailbox_stays_current_and_one_whose_server_is_gone_falls_behind() {
    let w = MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            idle_refresh: Duration::from_secs(1),
            currency_flush: Duration::from_millis(200),
            mail_timeout: Duration::from_secs(2),
            max_failures: 1000,
            ..fast_engine()
        }),
        ..AppOptions::default()
    })
    .await;
    // Plain IMAP, so that a refused connection is a lost connection (transient), not a
    // failed TLS handshake: the mailbox keeps being worked, and keeps failing.
    let proxy = CountingProxy::start(w.dovecot.ports.imap).await.unwrap();
    let imap =
        json!({"protocol": "imap", "host": "127.0.0.1", "port": proxy.port, "security": "none"});
    let (_, mailbox) = w.ann_enabled_via(imap, json!({})).await;
    let path = format!("/api/v1/mailboxes/{mailbox}");
    w.poll(&path, &w.ann, 15, "a first pass", |m| {
        m["current_at"].is_string()
    })
    .await;
    // Quiet for a while: no mail at all, and still current.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, m) = w.api.get(&w.app, &path, &w.ann).await;
    let lag = m["lag_seconds"].as_i64().unwrap();
    assert!(lag <= 2, "a quiet, healthy mailbox is current: {m:#}");
    let node_lag = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("mailbridge_sync_lag_seconds "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let metrics = scrape(&w).await;
    assert!(node_lag(&metrics) <= 2.0, "{metrics}");

    // The server goes away (the open session goes silent, new ones are refused): nothing
    // confirms the mailbox any more, and both lags grow.
    proxy.set_down(true);
    proxy.stall();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, m) = w.api.get(&w.app, &path, &w.ann).await;
    assert!(
        m["lag_seconds"].as_i64().unwrap() >= 4,
        "a mailbox that cannot be reached falls behind: {m:#}"
    );
    let metrics = scrape(&w).await;
    assert!(node_lag(&metrics) >= 4.0, "{metrics}");
    w.app.stop().await.unwrap();
}

/// What `/metrics` says now.
async fn scrape(w: &MailWorld) -> String {
    reqwest::get(format!("{}/metrics", w.app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_mailbox_waiting_for_its_turn_to_connect_is_not_an_open_connection() {
    // One sync at a time on this node, and two mailboxes on a server that accepts
    // connections and never answers: one worker is connecting (until the mail timeout), the
    // other waits for its turn, holding no connection.
    let w = MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            global_limit: 1,
            mail_timeout: Duration::from_secs(3),
            ..fast_engine()
        }),
        ..AppOptions::default()
    })
    .await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let profile = w
        .password_profile_with(
            "Silent",
            json!({"protocol": "imap", "host": "127.0.0.1", "port": port, "security": "tls"}),
        )
        .await;
    for email in ["ann@example.com", "ann.two@example.com"] {
        let m = w
            .mailbox(email, &w.ann_id, &profile, json!({"password": "hunter2"}))
            .await;
        w.enable_as_tested(&m).await;
    }
    let gauge = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse::<u32>().ok())
    };
    // Both workers run (the node holds both leases; no stagger), and one is connecting.
    let started = Instant::now();
    loop {
        let metrics = scrape(&w).await;
        let (leases, open) = (
            gauge(&metrics, "mailbridge_leases"),
            gauge(&metrics, "mailbridge_connections_open"),
        );
        if leases == Some(2) && open == Some(1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10) && open.unwrap_or(0) <= 1,
            "leases {leases:?}, connections open {open:?} (one may connect at a time): {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // For the next second, the one waiting for its turn is never counted.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(1) {
        let metrics = scrape(&w).await;
        let open = gauge(&metrics, "mailbridge_connections_open");
        assert!(
            open.unwrap_or(0) <= 1,
            "{open:?} connections open: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(silent);
    w.app.stop().await.unwrap();
}

/// A server that offers NOTIFY and then refuses it: the engine looks at the other folders'
/// counters itself every `folder_check` (1 s here), as where NOTIFY is not offered, rather
/// than waiting for announcements that will never come (until the full check, 60 s here).
#[tokio::test]
async fn a_refused_notify_leaves_the_other_folders_looked_at_every_folder_check() {
    let (w, gmail, _, id_of) = ann_on_scripted_gmail(ScriptedGmail::refuse_notify).await;
    let friday = id_of("Re: Lunch?", "INBOX");
    let asked = Instant::now();
    while gmail.notify_refusals() == 0 {
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the engine never asked for NOTIFY"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Labelled Sent in the web client: Gmail's IDLE says nothing; Sent Mail's counters do.
    label_sent(&w, &gmail, &friday, 10).await;
    w.app.stop().await.unwrap();
}
