//! Outgoing throughput: emails queued through the API and sent by the engine through the local
//! Dovecot submission service (relaying to an SMTP sink), from one mailbox and from 100.
//! Prints sends per second. Run with `bench/sends`.
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use std::time::{Duration, Instant};

use mailbridge_core::Role;
use mailbridge_sync::EngineConfig;
use mailbridge_testkit::{AppOptions, MailWorld};
use serde_json::json;

fn main() {
    let total: usize = std::env::var("BENCH_SENDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(500);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let engine = EngineConfig {
            scan_interval: Duration::from_millis(50),
            stagger: Duration::ZERO,
            ..EngineConfig::default()
        };
        let w = MailWorld::start(AppOptions {
            engine: Some(engine),
            ..AppOptions::default()
        })
        .await;
        let profile = w.password_profile("bench").await;

        let one = run(&w, &profile, 1, total, "one").await;
        let hundred = run(&w, &profile, 100, total, "many").await;
        println!("{total} emails queued through the API and sent through local submission:");
        println!("  from 1 mailbox:     {one:>7.1} sends/s");
        println!("  from 100 mailboxes: {hundred:>7.1} sends/s");
        w.app.stop().await.unwrap();
    });
}

/// Queues `total` emails spread over `mailboxes` new mailboxes (named by `tag`, all logging
/// in as the passwd-file user) and waits until the sink has them all: sends per second.
async fn run(w: &MailWorld, profile: &str, mailboxes: usize, total: usize, tag: &str) -> f64 {
    let mut boxes = Vec::new();
    for i in 0..mailboxes {
        let email = format!("{tag}{i}@example.com");
        let (id, _) = w.app.user(&email, Role::User).await.unwrap();
        let mailbox = w.mailbox(&email, &id, profile, json!({"login_name": "pw@example.com", "password": "hunter2", "incoming_method": "none"})).await;
        w.enable_as_tested(&mailbox).await;
        boxes.push(mailbox);
    }
    let already = w.dovecot.relayed().unwrap().len();
    let started = Instant::now();
    for n in 0..total {
        let mailbox = &boxes[n % mailboxes];
        let (status, e) = w.api.post(&w.app, "/api/v1/emails", &w.admin, json!({"mailbox_id": mailbox, "to": [{"address": "sink@example.com"}], "subject": format!("bench {n}"), "text_body": "hello"})).await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{e}");
    }
    while w.dovecot.relayed().unwrap().len() < already + total {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "sends stalled at {}",
            w.dovecot.relayed().unwrap().len() - already
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    total as f64 / started.elapsed().as_secs_f64()
}
