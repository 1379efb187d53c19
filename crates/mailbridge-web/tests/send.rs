//! The send API end to end: no field can write a header of its own (each attempt is refused
//! with 422 naming the field, and nothing is queued); attachments, bcc, reply_to and extra
//! headers arrive at the SMTP server as asked; a reused Idempotency-Key with another email
//! is a 409; the queue and daily limits answer 429 with Retry-After.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use base64::Engine;
use mail_parser::MimeHeaders;
use mailbridge_testkit::{AppOptions, MailWorld, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn world() -> MailWorld {
    MailWorld::start(AppOptions {
        engine: Some(MailWorld::fast_engine()),
        ..AppOptions::default()
    })
    .await
}

/// POST /emails as Ann, with an optional Idempotency-Key: (status, Retry-After, body).
async fn post(w: &MailWorld, body: &Value, key: Option<&str>) -> (StatusCode, Option<u64>, Value) {
    let mut req = w
        .api
        .http
        .post(format!("{}/api/v1/emails", w.app.base))
        .bearer_auth(&w.ann)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, resp.json().await.unwrap())
}

#[tokio::test]
async fn no_field_can_write_a_header_and_nothing_is_queued() {
    let w = MailWorld::start(AppOptions::default()).await;
    let profile = w.password_profile("Local").await;
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    let evil = "Bcc: eve@evil.example\r\nReply-To: eve@evil.example";
    let cases = [
        (
            "in_reply_to",
            json!(format!("<a@example.com>\r\n{evil}")),
            "in_reply_to",
        ),
        (
            "in_reply_to",
            json!(format!("a@example.com\n{evil}")),
            "in_reply_to",
        ),
        ("subject", json!(format!("Hello\r\n{evil}")), "subject"),
        (
            "to",
            json!([{"address": "bob@example.com", "name": format!("Bob\r\n{evil}")}]),
            "to[0].name",
        ),
        (
            "cc",
            json!([{"address": format!("c@example.com\r\n{evil}")}]),
            "cc[0].address",
        ),
        (
            "bcc",
            json!([{"address": "d@example.com", "name": "D\rX-Evil: 1"}]),
            "bcc[0].name",
        ),
        (
            "reply_to",
            json!([{"address": "r@example.com", "name": "R\nX-Evil: 1"}]),
            "reply_to[0].name",
        ),
        (
            "headers",
            json!({"X-Campaign": format!("spring\r\n{evil}")}),
            "headers.X-Campaign",
        ),
        ("headers", json!({"Bcc": "eve@evil.example"}), "headers.Bcc"),
        (
            "attachments",
            json!([{"filename": format!("q.pdf\r\n{evil}"), "content_base64": ""}]),
            "attachments[0].filename",
        ),
        (
            "attachments",
            json!([{"filename": "q.pdf", "content_type": "text/html\r\nX-Evil: 1", "content_base64": ""}]),
            "attachments[0].content_type",
        ),
    ];
    for (field, value, at) in cases {
        let mut body = json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com"}],
                              "subject": "Hi", "text_body": "hello"});
        body[field] = value.clone();
        let (status, _, answer) = post(&w, &body, None).await;
        assert_error(
            &(status, answer),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some(at),
        );
    }
    let (_, page) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/emails?mailbox_id={mailbox}"),
            &w.ann,
        )
        .await;
    assert_eq!(page["emails"], json!([]), "nothing was queued: {page:#}");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn attachments_bcc_reply_to_and_headers_reach_the_smtp_server_as_asked() {
    let w = world().await;
    let (_, mailbox) = w.ann_enabled(json!({})).await;
    let pdf = b"%PDF-1.4\n% a tiny quote\n".repeat(100);
    let body = json!({
        "mailbox_id": mailbox,
        "to": [{"address": "bob@example.com", "name": "Bob Stone"}],
        "cc": [{"address": "carol@example.com"}],
        "bcc": [{"address": "audit@example.com", "name": "Audit"}],
        "reply_to": [{"address": "sales@example.com", "name": "Sales Team"}],
        "headers": {"X-Campaign": "spring-2027", "List-Unsubscribe": "<mailto:unsubscribe@example.com>"},
        "subject": "Your quote", "text_body": "Attached.", "in_reply_to": "<quote-1@example.com>",
        "attachments": [{"filename": "quote.pdf", "content_type": "application/pdf",
                         "content_base64": base64::engine::general_purpose::STANDARD.encode(&pdf)}],
        "tracking_token": false,
    });
    let (status, _, queued) = post(&w, &body, None).await;
    assert_eq!(status, StatusCode::CREATED, "{queued:#}");
    assert_eq!(
        queued["bcc"],
        json!([{"address": "audit@example.com", "name": "Audit"}])
    );
    let id = queued["id"].as_str().unwrap();
    let sent = w
        .poll(
            &format!("/api/v1/emails/{id}"),
            &w.ann,
            45,
            "the email sent",
            |e| e["status"] == "sent",
        )
        .await;
    assert_eq!(sent["attachments"][0]["filename"], "quote.pdf", "{sent:#}");
    let relayed = w.dovecot.relayed().unwrap();
    assert_eq!(relayed.len(), 1);
    let raw = &relayed[0];
    let message = mail_parser::MessageParser::default().parse(raw).unwrap();
    // The sink (aiosmtpd) writes the envelope's recipients into X-RcptTo.
    let rcpt = message.header_raw("X-RcptTo").unwrap_or_default();
    for to in ["bob@example.com", "carol@example.com", "audit@example.com"] {
        assert!(rcpt.contains(to), "{to} is a recipient: {rcpt}");
    }
    // The sink's Maildir copy ends lines with LF.
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let head = &text[..text.find("\n\n").unwrap()];
    let sent_head: String = head
        .lines()
        .filter(|l| {
            !l.starts_with("X-RcptTo") && !l.starts_with("X-Peer") && !l.starts_with("X-MailFrom")
        })
        .collect::<Vec<_>>()
        .join("\n");
    // No Bcc header line (a random Message-ID or boundary may well contain "bcc").
    assert!(
        !sent_head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
        "{sent_head}"
    );
    assert!(
        !sent_head.contains("audit@example.com"),
        "a blind copy stays blind: {sent_head}"
    );
    let reply_to = message.reply_to().unwrap().first().unwrap();
    assert_eq!(reply_to.address(), Some("sales@example.com"));
    assert_eq!(reply_to.name(), Some("Sales Team"));
    assert_eq!(
        message.header_raw("X-Campaign").map(str::trim),
        Some("spring-2027")
    );
    assert_eq!(
        message.header_raw("List-Unsubscribe").map(str::trim),
        Some("<mailto:unsubscribe@example.com>")
    );
    assert_eq!(message.in_reply_to().as_text(), Some("quote-1@example.com"));
    let attachment = message.attachment(0).unwrap();
    assert_eq!(attachment.attachment_name(), Some("quote.pdf"));
    assert_eq!(attachment.contents(), &pdf[..]);
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_reused_key_is_a_409_and_the_limits_answer_429_with_retry_after() {
    let w = MailWorld::start(AppOptions::default()).await;
    let profile = w.password_profile("Local").await;
    let (status, p) = w
        .api
        .patch(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}"),
            &w.admin,
            json!({"daily_send_limit": 2, "max_queued_emails": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(
        (
            p["daily_send_limit"].as_i64(),
            p["max_queued_emails"].as_i64()
        ),
        (Some(2), Some(5))
    );
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    let email = |subject: &str| {
        json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com"}],
               "subject": subject, "text_body": "hello"})
    };
    let (status, _, first) = post(&w, &email("One"), Some("order-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, _, again) = post(&w, &email("One"), Some("order-1")).await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &first["id"]));
    let (status, _, reused) = post(&w, &email("Another"), Some("order-1")).await;
    assert_error(
        &(status, reused.clone()),
        StatusCode::CONFLICT,
        "idempotency_key_reused",
        Some("Idempotency-Key"),
    );
    assert!(
        reused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("order-1"),
        "{reused}"
    );
    let (status, _, _) = post(&w, &email("Two"), None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, retry, limited) = post(&w, &email("Three"), None).await;
    assert_error(
        &(status, limited.clone()),
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        None,
    );
    assert!(
        limited["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily_send_limit"),
        "{limited}"
    );
    assert!(
        retry.is_some_and(|s| s > 3600),
        "Retry-After names the wait: {retry:?}"
    );
    let (_, page) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/emails?mailbox_id={mailbox}"),
            &w.ann,
        )
        .await;
    assert_eq!(page["emails"].as_array().unwrap().len(), 2, "{page:#}");
    let (status, bad) = w
        .api
        .patch(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}"),
            &w.admin,
            json!({"daily_send_limit": 0}),
        )
        .await;
    assert_error(
        &(status, bad),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("daily_send_limit"),
    );
    w.app.stop().await.unwrap();
}

/// A world whose engine runs on a clock the test moves.
async fn world_on_a_clock() -> (MailWorld, std::sync::Arc<mailbridge_testkit::ManualClock>) {
    let clock = std::sync::Arc::new(mailbridge_testkit::ManualClock::new());
    let w = MailWorld::start(AppOptions {
        clock: clock.clone(),
        engine: Some(MailWorld::fast_engine()),
        ..AppOptions::default()
    })
    .await;
    (w, clock)
}

/// Exchange Online's answer to a mailbox holding more than 3 SMTP connections, or sending
/// faster than it allows.
const EXCHANGE_BUSY: &[u8] = b"432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded\r\n";

#[tokio::test]
async fn a_432_4_3_2_from_the_provider_is_a_wait_not_a_failed_attempt() {
    let (w, clock) = world_on_a_clock().await;
    // The submission server answers its first connection as Exchange Online does when busy.
    let proxy = mailbridge_testkit::CountingProxy::with_fault(
        w.dovecot.ports.submission,
        mailbridge_testkit::Fault::once(
            mailbridge_testkit::Step::Greeting,
            mailbridge_testkit::Action::Answer(EXCHANGE_BUSY),
        ),
    )
    .await
    .unwrap();
    let profile = w
        .password_profile_at(
            "Busy",
            w.imaps(),
            json!({"host": "127.0.0.1", "port": proxy.port, "security": "none"}),
            json!({}),
        )
        .await;
    let mailbox = w
        .mailbox(
            "pw@example.com",
            &w.ann_id,
            &profile,
            json!({"password": "hunter2", "incoming_method": "none"}),
        )
        .await;
    w.enable_as_tested(&mailbox).await;
    let (status, _, email) = post(
        &w,
        &json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com"}],
                "subject": "Quarterly figures", "text_body": "Attached soon."}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{email}");
    let id = email["id"].as_str().unwrap().to_owned();
    let e = email_once(&w, &id, |e| {
        e["send_reply"]
            .as_str()
            .is_some_and(|r| r.contains("4.3.2"))
    })
    .await;
    assert_eq!(proxy.fired(), 1, "the busy answer was not given");
    // Waiting, not failing: still queued, and the attempt not counted towards giving up.
    assert_eq!(e["status"], "pending_send", "{e}");
    assert_eq!(e["send_attempts"], 0, "{e}");
    // Nothing goes out before the minute is over…
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(email_view(&w, &id).await["status"], "pending_send");
    // …and once it is, the email is sent on the next round.
    clock.advance(chrono::Duration::seconds(61));
    let e = email_once(&w, &id, |e| e["status"] == "sent").await;
    assert_eq!(e["status"], "sent", "{e}");
    assert_eq!(e["send_attempts"], 1, "{e}");
}

/// The email as the API shows it once `done` holds (or after 10 s, as it is then).
async fn email_once(w: &MailWorld, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut e = email_view(w, id).await;
    for _ in 0..100 {
        if done(&e) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        e = email_view(w, id).await;
    }
    e
}

async fn email_view(w: &MailWorld, id: &str) -> Value {
    w.api
        .get(&w.app, &format!("/api/v1/emails/{id}"), &w.ann)
        .await
        .1
}

#[tokio::test]
async fn mail_goes_out_through_a_relay_without_a_login() {
    let w = world().await;
    let profile = w
        .password_profile_at(
            "Relay",
            w.imaps(),
            json!({"host": "127.0.0.1", "port": w.dovecot.relay_port(), "security": "none", "authentication": "none"}),
            json!({}),
        )
        .await;
    let mailbox = w
        .mailbox(
            "ann@example.com",
            &w.ann_id,
            &profile,
            json!({"incoming_method": "none"}),
        )
        .await;
    let tested = w.test(&mailbox, &w.ann).await;
    assert_eq!(tested["enabled"], true, "{tested:#}");
    let (status, _, email) = post(
        &w,
        &json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com"}],
                "subject": "Through the relay", "text_body": "No login needed."}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{email}");
    let id = email["id"].as_str().unwrap().to_owned();
    let e = email_once(&w, &id, |e| {
        e["status"] == "sent" || e["status"] == "failed"
    })
    .await;
    assert_eq!(e["status"], "sent", "{e}");
    let relayed = w.dovecot.relayed().unwrap();
    assert_eq!(relayed.len(), 1);
    assert!(
        String::from_utf8_lossy(&relayed[0]).contains("Subject: Through the relay"),
        "{}",
        String::from_utf8_lossy(&relayed[0])
    );
}

#[tokio::test]
async fn past_the_profiles_sends_per_minute_the_rest_wait_for_the_next_minute() {
    let (w, clock) = world_on_a_clock().await;
    let profile = w.password_profile("Paced").await;
    let (status, p) = w
        .api
        .patch(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}"),
            &w.admin,
            json!({"sends_per_minute": 2}),
        )
        .await;
    assert_eq!(
        (status, &p["sends_per_minute"]),
        (StatusCode::OK, &json!(2)),
        "{p}"
    );
    let mailbox = w
        .mailbox(
            "pw@example.com",
            &w.ann_id,
            &profile,
            json!({"password": "hunter2", "incoming_method": "none"}),
        )
        .await;
    w.enable_as_tested(&mailbox).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        let (status, _, email) = post(
            &w,
            &json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com"}],
                    "subject": format!("Paced {n}"), "text_body": "One of three."}),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{email}");
        ids.push(email["id"].as_str().unwrap().to_owned());
    }
    let third = email_once(&w, &ids[2], |e| {
        e["send_reply"]
            .as_str()
            .is_some_and(|r| r.contains("sends_per_minute"))
    })
    .await;
    assert_eq!(third["status"], "pending_send", "{third}");
    assert_eq!(
        third["send_attempts"], 0,
        "waiting is not an attempt: {third}"
    );
    for id in &ids[..2] {
        assert_eq!(email_view(&w, id).await["status"], "sent");
    }
    assert_eq!(w.dovecot.relayed().unwrap().len(), 2);
    // The minute passes: the third goes out.
    clock.advance(chrono::Duration::seconds(61));
    let third = email_once(&w, &ids[2], |e| e["status"] == "sent").await;
    assert_eq!(third["status"], "sent", "{third}");
    assert_eq!(w.dovecot.relayed().unwrap().len(), 3);
}
