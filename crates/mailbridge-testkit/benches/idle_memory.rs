//! Memory per idle connected mailbox: 1,000 enabled mailboxes, each holding an IMAP session in
//! IDLE on a local Dovecot; the process's resident memory before they connect and once all
//! are idle, divided by their number. Run with `bench/idle-memory`.
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use std::time::{Duration, Instant};

use mailbridge_core::{EmailAddress, MailboxDraft, Role};
use mailbridge_store::Actor;
use mailbridge_sync::EngineConfig;
use mailbridge_testkit::{AppOptions, Dovecot, OAuthProvider, TestApp};
use serde_json::json;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let count: usize = std::env::var("BENCH_MAILBOXES")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let users: Vec<(String, String)> = (0..count).map(|i| (format!("idle{i}@example.com"), "pw".to_owned())).collect();
        let borrowed: Vec<(&str, &str)> = users.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
        let provider = OAuthProvider::start().unwrap();
        let dovecot = Dovecot::start(&provider, &borrowed).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let engine = EngineConfig { scan_interval: Duration::from_millis(200), stagger: Duration::from_secs(5), ..EngineConfig::default() };
        let app = TestApp::start_with(dir.path(), AppOptions { engine: Some(engine), extra_ca_pem: Some(dovecot.ca_pem().to_owned()), ..AppOptions::default() }).await.unwrap();
        let store = &app.store;
        let cli = Actor::cli();
        let draft: mailbridge_core::ProfileDraft = serde_json::from_value(json!({
            "name": "idle", "auth": "password", "max_mailboxes": 100000,
            "incoming": {"protocol": "imap", "host": "127.0.0.1", "port": dovecot.ports.imaps, "security": "tls"},
            "outgoing": {"host": "127.0.0.1", "port": dovecot.ports.submissions, "security": "tls"},
        }))
        .unwrap();
        let (spec, secret) = draft.resolve(None).unwrap();
        let profile = store.create_profile(&cli, &spec, secret).await.unwrap();
        // Let the app settle, then measure before any mailbox connects.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_kib();
        for (user, password) in &users {
            let (u, _) = store.create_user(&cli, &EmailAddress::parse(user, "e").unwrap(), Role::User).await.unwrap();
            let d: MailboxDraft = serde_json::from_value(json!({"email": user, "profile_id": profile.id, "password": password, "outgoing_method": "none"})).unwrap();
            let m = store.create_mailbox(&cli, &d.resolve(None, u.id).unwrap(), d.password_change().unwrap()).await.unwrap();
            store.record_test(&cli, m.id, None, None, true).await.unwrap();
        }
        let started = Instant::now();
        let http = reqwest::Client::new();
        loop {
            let metrics = http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
            let open: usize = metrics.lines().find(|l| l.starts_with("mailbridge_connections_open ")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0);
            if open >= count {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(180), "only {open} of {count} sessions after 180 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Every session has synced its empty INBOX and is waiting in IDLE.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rss_kib();
        let per = (after.saturating_sub(before)) as f64 / count as f64;
        println!("{count} mailboxes idle in IMAP IDLE after {:.1} s", started.elapsed().as_secs_f64());
        println!("  resident memory: {before} KiB before, {after} KiB after");
        println!("  per idle connected mailbox: {per:.1} KiB  (target <= 100 KiB)");
        app.stop().await.unwrap();
    });
}
