//! New-mail latency under IDLE: a message delivered to Dovecot by another process, until its
//! record is visible through Mailbridge's API — against a plain IDLE client on the same
//! INBOX measured in the same run (the server's own notification time; Dovecot coalesces
//! change notifications). Prints medians, p99 and the differences. Run with `bench/idle-latency`.
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use std::time::{Duration, Instant};

use mailbridge_proto::imap::{IdleOutcome, ImapSession};
use mailbridge_proto::{Credentials, Endpoint, Security, TlsSettings};
use mailbridge_sync::EngineConfig;
use mailbridge_testkit::{AppOptions, MailWorld};
use secrecy::SecretString;
use serde_json::json;

const USER: &str = "pw@example.com";

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn count(w: &MailWorld, mailbox: &str) -> usize {
    let (_, page) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/emails?mailbox_id={mailbox}&limit=200"),
            &w.admin,
        )
        .await;
    page["emails"].as_array().unwrap().len()
}

fn main() {
    let samples: usize = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let engine = EngineConfig { scan_interval: Duration::from_millis(100), stagger: Duration::ZERO, ..EngineConfig::default() };
        let w = MailWorld::start(AppOptions { engine: Some(engine), ..AppOptions::default() }).await;
        let profile = w.password_profile("bench").await;
        let mailbox = w.mailbox(USER, &w.ann_id, &profile, json!({"password": "hunter2"})).await;
        assert_eq!(w.test(&mailbox, &w.admin).await["enabled"], true);
        // Let the engine reach IDLE.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let tls = TlsSettings::new(Some(w.dovecot.ca_pem().as_bytes())).unwrap();
        let creds = Credentials::Password { user: USER.into(), password: SecretString::from("hunter2") };
        let endpoint = Endpoint::new("127.0.0.1", w.dovecot.ports.imaps, Security::Tls);
        let mut plain = ImapSession::login(&endpoint, &tls, &creds).await.unwrap();
        plain.examine("INBOX").await.unwrap();

        let (mut server, mut ours, mut diff) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..samples {
            let before = count(&w, &mailbox).await;
            let idling = tokio::spawn(async move {
                let r = plain.idle(tokio::time::Instant::now() + Duration::from_secs(30)).await.unwrap();
                (r.0, r.1, Instant::now())
            });
            tokio::time::sleep(Duration::from_millis(200)).await; // both are in IDLE now
            let delivered = Instant::now();
            w.dovecot.deliver(USER, format!("From: x@example.com\r\nSubject: latency {i}\r\nMessage-ID: <lat-{i}@example.com>\r\n\r\n.\r\n").as_bytes()).unwrap();
            while count(&w, &mailbox).await == before {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let visible = delivered.elapsed();
            let (session, outcome, notified_at) = idling.await.unwrap();
            assert_eq!(outcome, IdleOutcome::Changed);
            plain = session;
            let notified = notified_at.duration_since(delivered);
            server.push(notified);
            ours.push(visible);
            diff.push(visible.saturating_sub(notified));
            println!("sample {i:>2}: plain IDLE client notified {:>4} ms, record visible via API {:>4} ms", notified.as_millis(), visible.as_millis());
        }
        println!("\n{samples} samples:");
        println!("  plain IDLE notification   median {:>4} ms   p99 {:>4} ms", percentile(&server, 0.5).as_millis(), percentile(&server, 0.99).as_millis());
        println!("  visible through the API   median {:>4} ms   p99 {:>4} ms", percentile(&ours, 0.5).as_millis(), percentile(&ours, 0.99).as_millis());
        println!("  difference                median {:>4} ms   p99 {:>4} ms   (targets: median <= 100 ms, p99 <= 1000 ms)", percentile(&diff, 0.5).as_millis(), percentile(&diff, 0.99).as_millis());
        plain.logout().await;
        w.app.stop().await.unwrap();
    });
}
