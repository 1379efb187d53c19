//! Delivery benchmark (issue 12). Two parts, in one run:
//!
//! 1. A first sync of the 6,046-message SpamAssassin corpus from a local Dovecot into
//!    Mailbridge on SQLite, with the engine's webhook worker running, once with one endpoint
//!    for `email.received` on a local receiver (Node, checking every delivery with the
//!    official `standardwebhooks` verifier) and once without (the peer: the same sync, nothing
//!    to deliver). Checks every `email.received` event arrived, verified, none twice; prints
//!    the delivery lag (event time → the receiver's arrival time) median and p99, and the
//!    first-sync rate with the webhook as a ratio to the rate without it (target ≥ 0.9).
//! 2. Long-poll wake-up: a client waits on `GET /api/v1/events?wait=30`, a transaction
//!    appends an event; the time from the start of that commit to the client holding the
//!    answer (median target ≤ 50 ms), beside a plain request to the same route that needs no
//!    waiting (the floor: one HTTP round trip and the read).
//!
//! Run with `bench/webhooks`.
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mailbridge_core::Role;
use mailbridge_store::{Actor, EventQuery};
use mailbridge_sync::EngineConfig;
use mailbridge_sync::incoming::imap::sync_inbox;
use mailbridge_testkit::{
    Answer, AppOptions, Dovecot, OAuthProvider, TestApp, TestDatabase, WebhookReceiver, corpus,
};
use serde_json::{Value, json};

const USER: &str = "bench@example.com";
const PASSWORD: &str = "bench-password";

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(v: &[Duration]) -> Duration {
    percentile(v, 0.5)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The app on a fresh SQLite file, with the engine (here only the webhook worker: the
/// mailbox is never enabled, the benchmark drives its sync).
async fn app(dir: &std::path::Path) -> TestApp {
    TestApp::start_with(
        dir,
        AppOptions {
            engine: Some(EngineConfig::default()),
            database: TestDatabase::Sqlite,
            ..AppOptions::default()
        },
    )
    .await
    .unwrap()
}

struct Synced {
    took: Duration,
    /// With a webhook: from the end of the sync until the last delivery arrived.
    drained: Option<Duration>,
    lags: Vec<Duration>,
}

/// One first sync of the corpus; with `webhook`, an endpoint for `email.received` at the
/// receiver under that name, and checks of what it got.
async fn first_sync(
    dovecot: &Dovecot,
    receiver: &WebhookReceiver,
    webhook: Option<&str>,
    n: usize,
) -> Synced {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let mailbox = dovecot
        .password_mailbox_in(&app.store, USER, PASSWORD)
        .await
        .unwrap();
    if let Some(name) = webhook {
        let (_, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
        let url = receiver.receiver(name, &[], Answer::Ok).await.unwrap();
        let created: Value = reqwest::Client::new()
            .post(format!("{}/api/v1/webhooks", app.base))
            .bearer_auth(&admin)
            .json(&json!({"url": url, "event_types": ["email.received"]}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let secret = created["secret"].as_str().unwrap();
        receiver
            .receiver(name, &[secret], Answer::Ok)
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut session = dovecot.imap_login(USER, PASSWORD).await.unwrap();
    let report = sync_inbox(&app.store, &mut session, &mailbox, None, None)
        .await
        .unwrap();
    let took = started.elapsed();
    let synced_at = mailbridge_core::Clock::now(&mailbridge_core::SystemClock);
    assert_eq!(report.stored, n);
    session.logout().await;

    let mut drained = None;
    let mut lags = Vec::new();
    if let Some(name) = webhook {
        loop {
            let got = receiver.deliveries(name).await.unwrap();
            if got.len() >= n {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "the receiver got {} of {n} deliveries in 10 minutes",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let a duplicate, if any were coming, arrive too.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = receiver.deliveries(name).await.unwrap();
        let events = app
            .store
            .read_events(&EventQuery {
                types: vec![mailbridge_core::EventType::EmailReceived],
                limit: i64::try_from(n).unwrap() + 1,
                ..EventQuery::default()
            })
            .await
            .unwrap()
            .events;
        assert_eq!(events.len(), n, "one email.received per message stored");
        let expected: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let mut seen = HashSet::new();
        let mut last = 0_i64;
        for d in &got {
            assert_eq!(d["verified"], true, "the verifier refused a delivery: {d}");
            let id = d["id"].as_str().unwrap();
            assert!(seen.insert(id), "event {id} delivered twice");
            assert!(expected.contains(id), "a delivery of an unknown event: {d}");
            let at: chrono::DateTime<chrono::Utc> =
                serde_json::from_value(d["body"]["timestamp"].clone()).unwrap();
            let received = d["received_at"].as_i64().unwrap();
            last = last.max(received);
            lags.push(Duration::from_millis(
                u64::try_from(received - at.timestamp_millis()).unwrap_or(0),
            ));
        }
        assert_eq!(seen.len(), n, "every email.received delivered");
        drained = Some(Duration::from_millis(
            u64::try_from(last - synced_at.timestamp_millis()).unwrap_or(0),
        ));
    }
    app.stop().await.unwrap();
    Synced {
        took,
        drained,
        lags,
    }
}

/// Long-poll wake-up samples: (commit start → answer in hand, the commit itself, a request
/// answered at once).
async fn wake_ups(
    dovecot: &Dovecot,
    samples: usize,
) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let mailbox = dovecot
        .password_mailbox_in(&app.store, USER, PASSWORD)
        .await
        .unwrap();
    let (_, admin) = app.user("admin@example.com", Role::Admin).await.unwrap();
    let http = reqwest::Client::new();
    let events = |after: String, wait: u32| {
        let request = http
            .get(format!("{}/api/v1/events", app.base))
            .bearer_auth(&admin)
            .query(&[("after", after), ("wait", wait.to_string())]);
        async move {
            let page: Value = request
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .json()
                .await
                .unwrap();
            (page, Instant::now())
        }
    };
    let (mut woken, mut commits, mut immediate) = (Vec::new(), Vec::new(), Vec::new());
    let (page, _) = events("0".into(), 0).await;
    let mut cursor = page["next_cursor"].as_str().unwrap().to_owned();
    for i in 0..samples {
        let waiting = tokio::spawn(events(cursor.clone(), 30));
        // The request is parked on the feed by now.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let committing = Instant::now();
        app.store
            .record_test(&Actor::cli(), mailbox.id, None, None, false)
            .await
            .unwrap();
        let committed = committing.elapsed();
        let (page, answered) = waiting.await.unwrap();
        assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
        let wake = answered.duration_since(committing);
        // The same event read again, answered without waiting: the floor.
        let asked = Instant::now();
        let (again, _) = events(cursor.clone(), 0).await;
        let plain = asked.elapsed();
        assert_eq!(again["events"], page["events"]);
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
        println!(
            "sample {i:>2}: woken {:>5.1} ms after the commit began (the commit {:>5.1} ms), a plain read {:>5.1} ms",
            ms(wake),
            ms(committed),
            ms(plain)
        );
        woken.push(wake);
        commits.push(committed);
        immediate.push(plain);
    }
    app.stop().await.unwrap();
    (woken, commits, immediate)
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let samples: usize = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let messages = corpus::spam_assassin(usize::MAX).unwrap();
    let provider = OAuthProvider::start().unwrap();
    let dovecot = Dovecot::start(&provider, &[(USER, PASSWORD)]).unwrap();
    for m in &messages {
        dovecot.deliver(USER, m).unwrap();
    }
    let receiver = WebhookReceiver::start().unwrap();
    let n = messages.len();
    println!(
        "corpus: {n} messages, one INBOX; {rounds} rounds of a first sync with and without a webhook"
    );
    runtime.block_on(async {
        // Dovecot indexes the folder on first access: a sync to warm it, not counted.
        first_sync(&dovecot, &receiver, None, n).await;
        let (mut off, mut on, mut lags, mut drains) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Each round's own ratio: its two syncs ran back to back, so the machine's drift
        // between rounds cancels out.
        let mut paired = Vec::new();
        for round in 1..=rounds {
            // Alternate which goes first, so neither always meets a busier page cache.
            let name = format!("bench-{round}");
            let (without, with) = if round % 2 == 1 {
                let a = first_sync(&dovecot, &receiver, None, n).await;
                (a, first_sync(&dovecot, &receiver, Some(&name), n).await)
            } else {
                let b = first_sync(&dovecot, &receiver, Some(&name), n).await;
                (first_sync(&dovecot, &receiver, None, n).await, b)
            };
            let drained = with.drained.unwrap_or_default();
            println!(
                "round {round}: without a webhook {:.2} s | with one {:.2} s, every delivery in {:.2} s after the sync; lag median {:.0} ms, p99 {:.0} ms",
                without.took.as_secs_f64(),
                with.took.as_secs_f64(),
                drained.as_secs_f64(),
                ms(median(&with.lags)),
                ms(percentile(&with.lags, 0.99)),
            );
            paired.push(without.took.as_secs_f64() / with.took.as_secs_f64());
            off.push(without.took);
            on.push(with.took);
            drains.push(drained);
            lags.extend(with.lags);
        }
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let (off, on) = (median(&off), median(&on));
        println!("\nmedians over {rounds} rounds:");
        println!("  first sync, no webhook        {:>6.2} s  {:>6.0} msg/s", off.as_secs_f64(), rate(off));
        println!("  first sync, one webhook       {:>6.2} s  {:>6.0} msg/s", on.as_secs_f64(), rate(on));
        println!("  last delivery after the sync  {:>6.2} s", median(&drains).as_secs_f64());
        println!(
            "  delivery lag over all {} deliveries: median {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            lags.len(),
            ms(median(&lags)),
            ms(percentile(&lags, 0.99)),
            ms(percentile(&lags, 1.0)),
        );
        println!("  every email.received delivered, verified by standardwebhooks, none twice");

        println!("\nlong-poll wake-up, {samples} samples:");
        let (woken, commits, immediate) = wake_ups(&dovecot, samples).await;
        println!(
            "  woken after the commit began   median {:>5.1} ms, p99 {:>5.1} ms",
            ms(median(&woken)),
            ms(percentile(&woken, 0.99))
        );
        println!("  the committing transaction     median {:>5.1} ms", ms(median(&commits)));
        println!("  a read answered at once        median {:>5.1} ms", ms(median(&immediate)));

        println!("\nratios and targets:");
        println!(
            "  first-sync rate with a webhook / without = {:.2}  (target >= 0.90)",
            rate(on) / rate(off)
        );
        paired.sort_by(f64::total_cmp);
        println!(
            "  the same, median of each round's own ratio = {:.2} (from {:.2} to {:.2})",
            paired[paired.len() / 2],
            paired[0],
            paired[paired.len() - 1]
        );
        println!(
            "  long-poll wake-up median = {:.1} ms  (target <= 50 ms); / a read answered at once = {:.1}",
            ms(median(&woken)),
            median(&woken).as_secs_f64() / median(&immediate).as_secs_f64()
        );
    });
}
