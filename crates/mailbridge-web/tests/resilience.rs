//! The engine when connections misbehave, end to end against a real Dovecot behind a proxy:
//! a mailbox whose sessions keep being cut after syncing is not counted as failing for good;
//! a profile's connection limit holds IDLE sessions too (the rest poll); an email whose
//! server answer was lost is never sent twice; and a server down for most of a profile's
//! mailboxes disables none of them, alerts the profile's owner, and they resume on their own.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::time::{Duration, Instant};

use mailbridge_sync::EngineConfig;
use mailbridge_testkit::{AppOptions, CountingProxy, MailWorld};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn world(engine: EngineConfig) -> MailWorld {
    MailWorld::start(AppOptions {
        engine: Some(engine),
        ..AppOptions::default()
    })
    .await
}

/// Plain IMAP at `port` on this machine (a proxy in front of Dovecot).
fn imap_at(port: u16) -> Value {
    json!({"protocol": "imap", "host": "127.0.0.1", "port": port, "security": "none"})
}

/// `n` mailboxes on `profile`, each reading Dovecot's pw@example.com, enabled: their ids.
async fn password_mailboxes(w: &MailWorld, profile: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let m = w
            .mailbox(
                &format!("box{i}@example.com"),
                &w.ann_id,
                profile,
                json!({"login_name": "pw@example.com", "password": "hunter2", "outgoing_method": "none"}),
            )
            .await;
        w.enable_as_tested(&m).await;
        ids.push(m);
    }
    ids
}

async fn mailbox(w: &MailWorld, id: &str) -> Value {
    w.api
        .get(&w.app, &format!("/api/v1/mailboxes/{id}"), &w.admin)
        .await
        .1
}

async fn emails_of(w: &MailWorld, id: &str) -> usize {
    let (_, page) = w
        .api
        .get(&w.app, &format!("/api/v1/emails?mailbox_id={id}"), &w.admin)
        .await;
    page["emails"].as_array().map_or(0, Vec::len)
}

/// Waits until `done` holds, checking every 100 ms; fails after `secs` saying `what`.
async fn until(secs: u64, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "{what}: not after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sessions_cut_after_syncing_do_not_add_up_to_a_disabled_mailbox() {
    // Two failures in a row disable a mailbox here; each session syncs, idles a little, and
    // is then cut. A healthy session in between ends the run of failures.
    let w = world(EngineConfig {
        max_failures: 2,
        // Each refresh is a whole pass (a quiet one would send a few bytes), so sessions
        // reach the cut soon.
        idle_refresh: Duration::from_millis(300),
        full_check: Duration::from_millis(300),
        ..MailWorld::fast_engine()
    })
    .await;
    let proxy = CountingProxy::cutting_after(w.dovecot.ports.imap, 6_000)
        .await
        .unwrap();
    let profile = w.password_profile_with("Cut", imap_at(proxy.port)).await;
    let m = password_mailboxes(&w, &profile, 1).await.remove(0);
    until(60, "five sessions, each cut", async || {
        let view = mailbox(&w, &m).await;
        assert_eq!(
            view["enabled"],
            true,
            "disabled after {} sessions: {view:#}",
            proxy.total()
        );
        proxy.total() >= 5
    })
    .await;
    let view = mailbox(&w, &m).await;
    assert_eq!(view["enabled"], true, "{view:#}");
    assert!(view["items_failed"].as_i64().unwrap() >= 3, "{view:#}");
    w.dovecot
        .deliver("pw@example.com", b"Subject: still here\r\n\r\nhi\r\n")
        .unwrap();
    until(20, "the new mail stored", async || {
        emails_of(&w, &m).await == 1
    })
    .await;
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_profiles_connection_limit_holds_idle_sessions_and_the_rest_poll() {
    let w = world(MailWorld::fast_engine()).await;
    let proxy = CountingProxy::start(w.dovecot.ports.imap).await.unwrap();
    let profile = w
        .password_profile_at(
            "Two connections",
            imap_at(proxy.port),
            w.submissions(),
            json!({"max_connections": 2, "poll_interval_seconds": 10}),
        )
        .await;
    let boxes = password_mailboxes(&w, &profile, 4).await;
    w.dovecot
        .deliver("pw@example.com", b"Subject: one\r\n\r\nhi\r\n")
        .unwrap();
    for m in &boxes {
        until(30, "the first message in every mailbox", async || {
            emails_of(&w, m).await == 1
        })
        .await;
    }
    // New mail reaches the idling mailbox at once and the polling ones within their interval.
    w.dovecot
        .deliver("pw@example.com", b"Subject: two\r\n\r\nhi\r\n")
        .unwrap();
    for m in &boxes {
        until(30, "the second message in every mailbox", async || {
            emails_of(&w, m).await == 2
        })
        .await;
    }
    assert!(
        proxy.peak() <= 2,
        "at most max_connections open at once, IDLE included: {} were",
        proxy.peak()
    );
    for m in &boxes {
        assert_eq!(mailbox(&w, m).await["enabled"], true);
    }
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn an_email_whose_answer_was_lost_is_never_sent_twice() {
    let w = world(MailWorld::fast_engine()).await;
    // Each SMTP connection is cut right after the final dot: the server takes the message,
    // and its "250 queued" never arrives.
    let proxy = CountingProxy::losing_the_answer_to(w.dovecot.ports.submission, b"\r\n.\r\n")
        .await
        .unwrap();
    let profile = w
        .password_profile_at(
            "Lossy",
            w.imaps(),
            json!({"host": "127.0.0.1", "port": proxy.port, "security": "none"}),
            json!({}),
        )
        .await;
    let m = w
        .mailbox(
            "pw@example.com",
            &w.ann_id,
            &profile,
            json!({"password": "hunter2"}),
        )
        .await;
    w.enable_as_tested(&m).await;
    let send = |subject: &str| {
        json!({"mailbox_id": m, "to": [{"address": "bob@example.com"}], "subject": subject,
               "text_body": "hello", "tracking_token": false})
    };
    // The first is found in the Sent folder (as Gmail files what it accepts): delivered.
    let (status, filed) = w
        .api
        .post(&w.app, "/api/v1/emails", &w.ann, send("Filed"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{filed}");
    let message_id = filed["message_id"].as_str().unwrap();
    w.dovecot
        .deliver_to(
            "pw@example.com",
            "Sent",
            format!("Message-ID: <{message_id}>\r\nSubject: Filed\r\n\r\nhello\r\n").as_bytes(),
        )
        .unwrap();
    let id = filed["id"].as_str().unwrap();
    let sent = w
        .poll(&format!("/api/v1/emails/{id}"), &w.ann, 30, "sent", |e| {
            e["status"] == "sent"
        })
        .await;
    assert!(
        sent["send_reply"].as_str().unwrap().contains("Sent folder"),
        "{sent:#}"
    );
    // The second is nowhere to be found: failed, saying it may have been delivered, and the
    // owner is asked to decide.
    let (_, lost) = w
        .api
        .post(&w.app, "/api/v1/emails", &w.ann, send("Lost"))
        .await;
    let id = lost["id"].as_str().unwrap();
    let failed = w
        .poll(&format!("/api/v1/emails/{id}"), &w.ann, 30, "failed", |e| {
            e["status"] == "failed"
        })
        .await;
    let reply = failed["send_reply"].as_str().unwrap();
    assert!(
        reply.contains("may have been delivered") && reply.contains("not sent again"),
        "{failed:#}"
    );
    let (_, alerts) = w.api.get(&w.app, "/api/v1/alerts", &w.ann).await;
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "send_unconfirmed")
        .unwrap_or_else(|| panic!("Ann is asked to decide: {alerts:#}"));
    assert!(
        alert["message"].as_str().unwrap().contains("Lost"),
        "{alert}"
    );
    // Long past any retry: each message reached the server exactly once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let relayed = w.dovecot.relayed().unwrap();
    assert_eq!(relayed.len(), 2, "each email went out once");
    assert_eq!(failed["send_attempts"], 1, "{failed:#}");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_server_down_for_most_of_a_profile_disables_none_and_they_resume_on_their_own() {
    // Three failures in a row would disable a mailbox failing on its own. (Logins are not
    // rate-limited here, so the failures come quickly.)
    let w = world(EngineConfig {
        max_failures: 3,
        login_limit: (1000, Duration::from_secs(60)),
        ..MailWorld::fast_engine()
    })
    .await;
    let proxy = CountingProxy::start(w.dovecot.ports.imap).await.unwrap();
    let profile = w
        .password_profile_with("Maintenance", imap_at(proxy.port))
        .await;
    let boxes = password_mailboxes(&w, &profile, 3).await;
    for m in &boxes {
        until(30, "a first sync", async || {
            mailbox(&w, m).await["last_sync_at"].is_string()
        })
        .await;
    }
    // The maintenance window: every connection refused, far past the failure limit.
    proxy.set_down(true);
    for m in &boxes {
        until(60, "twice the failure limit", async || {
            mailbox(&w, m).await["items_failed"].as_i64().unwrap_or(0) >= 6
        })
        .await;
    }
    for m in &boxes {
        let view = mailbox(&w, m).await;
        assert_eq!(view["enabled"], true, "nothing is disabled: {view:#}");
    }
    let (_, ann_alerts) = w.api.get(&w.app, "/api/v1/alerts", &w.ann).await;
    assert!(
        !ann_alerts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "sync_failing" || a["kind"] == "sync_stopped"),
        "{ann_alerts:#}"
    );
    let (_, admin_alerts) = w.api.get(&w.app, "/api/v1/alerts", &w.admin).await;
    let outage = admin_alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "profile_outage")
        .unwrap_or_else(|| panic!("the profile's owner is told: {admin_alerts:#}"))
        .clone();
    assert_eq!(outage["profile_id"], profile.as_str());
    assert!(
        outage["message"].as_str().unwrap().contains("Maintenance"),
        "{outage}"
    );
    // The server is back: every mailbox resumes by itself and new mail arrives.
    proxy.set_down(false);
    w.dovecot
        .deliver("pw@example.com", b"Subject: after the window\r\n\r\nhi\r\n")
        .unwrap();
    for m in &boxes {
        until(30, "new mail after the outage", async || {
            emails_of(&w, m).await == 1
        })
        .await;
    }
    let (_, admin_alerts) = w.api.get(&w.app, "/api/v1/alerts", &w.admin).await;
    assert!(
        !admin_alerts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "profile_outage"),
        "the outage alert is settled once it is over: {admin_alerts:#}"
    );
    w.app.stop().await.unwrap();
}
