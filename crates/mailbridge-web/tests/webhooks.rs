//! Webhooks end to end against receivers that check every delivery with the official
//! Standard Webhooks verifier (npm `standardwebhooks`): every event delivered, signed, once;
//! failures retried with the same `webhook-id` until delivered; a receiver that never
//! answers retried until the schedule is spent, then "Redeliver"; `410 Gone` disables the
//! endpoint with an alert; a rotated secret signs beside the old one; "Send test event";
//! and private addresses refused, at the API and where the connection is made.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::time::{Duration, Instant};

use mailbridge_sync::{EngineConfig, WebhookSettings};
use mailbridge_testkit::{Answer, AppOptions, MailWorld, WebhookReceiver, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Retries within a test's patience.
fn quick_webhooks() -> WebhookSettings {
    WebhookSettings {
        retry_schedule: vec![Duration::from_millis(200), Duration::from_millis(300)],
        timeout: Duration::from_millis(800),
        ..WebhookSettings::default()
    }
}

async fn world() -> MailWorld {
    MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            webhooks: quick_webhooks(),
            ..MailWorld::fast_engine()
        }),
        ..AppOptions::default()
    })
    .await
}

/// Registers a webhook to `url` as the admin: (id, secret).
async fn register(w: &MailWorld, url: &str, extra: Value) -> (String, String) {
    let mut body = json!({"url": url});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, created) = w.api.post(&w.app, "/api/v1/webhooks", &w.admin, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (
        created["webhook"]["id"].as_str().unwrap().to_owned(),
        secret,
    )
}

/// `POST /api/v1/webhooks/{webhook}/{action}` as the admin.
async fn act(w: &MailWorld, webhook: &str, action: &str) -> (StatusCode, Value) {
    w.api
        .post(
            &w.app,
            &format!("/api/v1/webhooks/{webhook}/{action}"),
            &w.admin,
            json!({}),
        )
        .await
}

/// Waits until receiver `name` has `n` deliveries (fails after `secs`).
async fn received(receiver: &WebhookReceiver, name: &str, n: usize, secs: u64) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let got = receiver.deliveries(name).await.unwrap();
        if got.len() >= n {
            return got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "receiver {name} got {} of {n} deliveries in {secs} s: {got:#?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delivery_status(w: &MailWorld, webhook: &str, status: &str, secs: u64) -> Value {
    let page = w
        .poll(
            &format!("/api/v1/webhooks/{webhook}/deliveries"),
            &w.admin,
            secs,
            &format!("a delivery {status}"),
            |p| p["deliveries"][0]["status"] == status,
        )
        .await;
    page["deliveries"][0].clone()
}

#[tokio::test]
async fn every_event_is_delivered_once_signed_as_the_standard_verifier_expects() {
    let w = world().await;
    let receiver = WebhookReceiver::start().unwrap();
    // The secret is known only once the endpoint exists: point it at a receiver configured
    // after.
    let url = receiver.receiver("crm", &[], Answer::Ok).await.unwrap();
    let (webhook, secret) = register(&w, &url, json!({"description": "CRM"})).await;
    receiver
        .receiver("crm", &[&secret], Answer::Ok)
        .await
        .unwrap();
    let (_, mailbox) = w.ann_enabled(json!({})).await;
    w.dovecot
        .deliver("ann@example.com", b"From: bob@example.com\r\nSubject: Hello\r\nMessage-ID: <h1@example.com>\r\n\r\nhi\r\n")
        .unwrap();
    // signed_in, tested, enabled, received.
    let got = received(&receiver, "crm", 4, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all = receiver.deliveries("crm").await.unwrap();
    assert_eq!(
        got_all.len(),
        got.len(),
        "nothing is delivered twice: {got_all:#?}"
    );
    let (_, feed) = w
        .api
        .get(&w.app, "/api/v1/events?limit=500", &w.admin)
        .await;
    let events = feed["events"].as_array().unwrap();
    assert_eq!(events.len(), got.len(), "every event delivered: {feed:#}");
    for (delivery, event) in got.iter().zip(events) {
        assert_eq!(delivery["verified"], true, "{delivery:#}");
        assert_eq!(delivery["content_type"], "application/json");
        assert_eq!(delivery["id"], event["id"], "webhook-id is the event id");
        assert_eq!(&delivery["body"], event, "the body is the feed's event");
    }
    let kinds: Vec<&str> = got
        .iter()
        .map(|d| d["body"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "mailbox.signed_in",
            "mailbox.tested",
            "mailbox.enabled",
            "email.received"
        ]
    );
    assert_eq!(got[3]["body"]["mailbox_id"], mailbox.as_str());
    let (_, page) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/webhooks/{webhook}/deliveries"),
            &w.admin,
        )
        .await;
    for d in page["deliveries"].as_array().unwrap() {
        assert_eq!(d["status"], "delivered", "{d:#}");
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1);
        assert_eq!(d["attempts"][0]["status_code"], 204);
    }
    // A user may not see or manage webhooks; the secret is never shown again.
    assert_error(
        &w.api.get(&w.app, "/api/v1/webhooks", &w.ann).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    let (_, shown) = w
        .api
        .get(&w.app, &format!("/api/v1/webhooks/{webhook}"), &w.admin)
        .await;
    assert!(!shown.to_string().contains(&secret), "{shown}");
    assert!(
        !w.api.seen().replacen(&secret, "", 1).contains(&secret),
        "the secret was returned twice"
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn failures_are_retried_with_the_same_id_until_delivered() {
    let w = world().await;
    let receiver = WebhookReceiver::start().unwrap();
    let url = receiver.receiver("flaky", &[], Answer::Ok).await.unwrap();
    let (webhook, secret) = register(&w, &url, json!({"event_types": ["mailbox.enabled"]})).await;
    receiver
        .receiver(
            "flaky",
            &[&secret],
            Answer::FailThenOk {
                times: 2,
                status: 503,
            },
        )
        .await
        .unwrap();
    let mailbox = w.ann_password_mailbox().await;
    w.enable_as_tested(&mailbox).await;
    let got = received(&receiver, "flaky", 3, 30).await;
    assert!(got.iter().all(|d| d["verified"] == true), "{got:#?}");
    assert!(
        got.iter().all(|d| d["id"] == got[0]["id"]),
        "one webhook-id on every try"
    );
    assert_eq!(
        got.iter()
            .map(|d| d["answered"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [503, 503, 204]
    );
    assert!(
        got.iter().all(|d| d["body"]["type"] == "mailbox.enabled"),
        "the filter holds"
    );
    let delivery = delivery_status(&w, &webhook, "delivered", 10).await;
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{delivery:#}");
    assert_eq!(attempts[0]["status_code"], 503);
    assert!(
        attempts[0]["response_excerpt"]
            .as_str()
            .unwrap()
            .contains("says 503"),
        "{delivery:#}"
    );
    assert!(attempts[0]["next_attempt_at"].is_string() && attempts[2]["next_attempt_at"].is_null());
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_retried_then_failed_and_can_be_redelivered() {
    let w = world().await;
    let receiver = WebhookReceiver::start().unwrap();
    let url = receiver.receiver("silent", &[], Answer::Ok).await.unwrap();
    let (webhook, secret) = register(&w, &url, json!({})).await;
    receiver
        .receiver("silent", &[&secret], Answer::Timeout)
        .await
        .unwrap();
    let (status, test) = act(&w, &webhook, "test").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{test}");
    // The first try and both retries, each cut at the timeout: then it has failed.
    let failed = delivery_status(&w, &webhook, "failed", 30).await;
    let attempts = failed["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{failed:#}");
    for a in attempts {
        assert!(
            a["error"]
                .as_str()
                .unwrap()
                .contains("no answer within 0.8 s"),
            "{a}"
        );
        assert!(a["status_code"].is_null());
    }
    let (_, hook) = w
        .api
        .get(&w.app, &format!("/api/v1/webhooks/{webhook}"), &w.admin)
        .await;
    assert!(hook["failing_since"].is_string(), "{hook}");
    assert_eq!(hook["enabled"], true, "a few failures do not disable it");
    // The receiver is fixed; Redeliver sends the same delivery again.
    receiver
        .receiver("silent", &[&secret], Answer::Ok)
        .await
        .unwrap();
    let (status, again) = w
        .api
        .post(
            &w.app,
            &format!(
                "/api/v1/webhooks/{webhook}/deliveries/{}/redeliver",
                failed["id"].as_str().unwrap()
            ),
            &w.admin,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, again["status"].as_str()),
        (StatusCode::ACCEPTED, Some("pending")),
        "{again}"
    );
    let delivered = delivery_status(&w, &webhook, "delivered", 15).await;
    assert_eq!(delivered["id"], failed["id"]);
    let got = receiver.deliveries("silent").await.unwrap();
    assert_eq!(got.len(), 4);
    assert!(
        got.iter()
            .all(|d| d["id"] == got[0]["id"] && d["verified"] == true)
    );
    assert_eq!(got[3]["body"]["type"], "webhook.test");
    let (_, hook) = w
        .api
        .get(&w.app, &format!("/api/v1/webhooks/{webhook}"), &w.admin)
        .await;
    assert!(
        hook["failing_since"].is_null(),
        "a success ends the run of failures: {hook}"
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_tells_every_admin() {
    let w = world().await;
    let receiver = WebhookReceiver::start().unwrap();
    let url = receiver.receiver("old", &[], Answer::Gone).await.unwrap();
    let (webhook, _) = register(&w, &url, json!({})).await;
    act(&w, &webhook, "test").await;
    let hook = w
        .poll(
            &format!("/api/v1/webhooks/{webhook}"),
            &w.admin,
            20,
            "disabled",
            |h| h["enabled"] == false,
        )
        .await;
    assert!(
        hook["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410 Gone"),
        "{hook}"
    );
    assert_eq!(
        received(&receiver, "old", 1, 5).await.len(),
        1,
        "no retry after 410"
    );
    let delivery = delivery_status(&w, &webhook, "failed", 5).await;
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
    let (_, alerts) = w.api.get(&w.app, "/api/v1/alerts", &w.admin).await;
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "webhook_disabled")
        .unwrap_or_else(|| panic!("the admin is told: {alerts:#}"));
    assert!(alert["message"].as_str().unwrap().contains(&url), "{alert}");
    // Enabled again by an admin: the reason goes.
    let (status, hook) = w
        .api
        .patch(
            &w.app,
            &format!("/api/v1/webhooks/{webhook}"),
            &w.admin,
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        hook["disabled_reason"].is_null() && hook["enabled"] == true,
        "{hook}"
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_for_a_day() {
    let w = world().await;
    let receiver = WebhookReceiver::start().unwrap();
    let url = receiver.receiver("rot", &[], Answer::Ok).await.unwrap();
    let (webhook, old) = register(&w, &url, json!({})).await;
    let (status, rotated) = act(&w, &webhook, "rotate-secret").await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    let until: chrono::DateTime<chrono::Utc> = rotated["previous_secret_valid_until"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, hook) = w
        .api
        .get(&w.app, &format!("/api/v1/webhooks/{webhook}"), &w.admin)
        .await;
    let updated: chrono::DateTime<chrono::Utc> =
        hook["updated_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((until - updated).num_hours(), 24);
    // A receiver that still knows only the old secret, and one that already has the new.
    for (n, secrets) in [(1, vec![old.as_str()]), (2, vec![new.as_str()])] {
        receiver
            .receiver("rot", &secrets, Answer::Ok)
            .await
            .unwrap();
        act(&w, &webhook, "test").await;
        let got = received(&receiver, "rot", n, 15).await;
        let last = &got[n - 1];
        assert_eq!(last["verified"], true, "{last:#}");
        assert_eq!(
            last["signature"].as_str().unwrap().split(' ').count(),
            2,
            "{last:#}"
        );
    }
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn private_addresses_are_refused_at_the_api_and_where_the_connection_is_made() {
    let w = MailWorld::start(AppOptions {
        engine: Some(EngineConfig {
            webhooks: quick_webhooks(),
            ..MailWorld::fast_engine()
        }),
        webhook_allow_private: false,
        ..AppOptions::default()
    })
    .await;
    for url in [
        "http://127.0.0.1:9/hooks",
        "http://10.0.0.5/hooks",
        "http://[::1]:9/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:9/hooks",
        "https://api.localhost/hooks",
    ] {
        let r = w
            .api
            .post(&w.app, "/api/v1/webhooks", &w.admin, json!({"url": url}))
            .await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid", Some("url"));
        assert!(
            r.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("webhook_allow_private_addresses"),
            "{}",
            r.1
        );
    }
    for (body, field) in [
        (json!({"url": "ftp://crm.example.com/h"}), "url"),
        (
            json!({"url": "https://crm.example.com/h", "event_types": ["email.nope"]}),
            "event_types[0]",
        ),
        (
            json!({"url": "https://crm.example.com/h", "mailbox_ids": ["0190f7a2-0000-7000-8000-000000000000"]}),
            "mailbox_ids[0]",
        ),
    ] {
        let r = w.api.post(&w.app, "/api/v1/webhooks", &w.admin, body).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid", Some(field));
    }
    // A name the API cannot judge (it may resolve anywhere later): checked again where each
    // delivery connects. Stored directly here, as a name that resolved elsewhere when it was
    // registered would be; it resolves to this machine, and nothing is sent to it.
    let receiver = WebhookReceiver::start().unwrap();
    let url = receiver.receiver("inside", &[], Answer::Ok).await.unwrap();
    let inside = url.replace("127.0.0.1", "localhost");
    let spec = serde_json::from_value::<mailbridge_core::WebhookDraft>(json!({"url": inside}))
        .unwrap()
        .resolve(None)
        .unwrap();
    let (hook, _) = w
        .app
        .store
        .create_webhook(&mailbridge_store::Actor::cli(), &spec)
        .await
        .unwrap();
    w.api
        .post(
            &w.app,
            &format!("/api/v1/webhooks/{}/test", hook.id),
            &w.admin,
            json!({}),
        )
        .await;
    let failed = delivery_status(&w, &hook.id, "failed", 20).await;
    for a in failed["attempts"].as_array().unwrap() {
        assert!(
            a["error"].as_str().unwrap().contains("private or local"),
            "{a}"
        );
    }
    assert!(
        receiver.deliveries("inside").await.unwrap().is_empty(),
        "nothing reached it"
    );
    w.app.stop().await.unwrap();
}
