//! The whole mailbox, measured against a local Dovecot in one run (`bench/whole-mailbox`):
//!
//! 1. **First sync over INBOX and Sent**: the SpamAssassin corpus split between the two
//!    folders, read by a raw `UID FETCH 1:* BODY.PEEK[]` of each (Python's imaplib) and by
//!    Mailbridge's pass over both (fetch, parse, store in SQLite). Target: ≥ 60% of the raw
//!    rate.
//! 2. **Flag-change latency**: another client sets or clears `\Flagged`; the time until the
//!    record shows it through the API, against a plain IDLE client's notification of the same
//!    change. Target: median difference ≤ 100 ms.
//! 3. **Re-checking a large folder for changes**: 100,000 messages (`BENCH_BIG`), ten of them
//!    changed; `UID FETCH 1:n (UID FLAGS) (CHANGEDSINCE m)` (CONDSTORE) against the full flag
//!    scan a server without CONDSTORE needs — time and bytes on the wire, medians. The script
//!    runs this part with its Dovecot on tmpfs: on this machine's disk, Dovecot takes two
//!    minutes to rescan a Maildir of 100,000 files after each change, which says nothing
//!    about either client.
//!
//! `BENCH_PART` (`1`, `2`, `3`; default all), `BENCH_ROUNDS` (default 3) and `BENCH_SAMPLES`
//! (default 20) choose what runs and how often.
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mailbridge_proto::imap::{IdleOutcome, ImapSession};
use mailbridge_proto::{Credentials, Endpoint, Security, TlsSettings};
use mailbridge_sync::EngineConfig;
use mailbridge_sync::incoming::imap::{PassOptions, folders, sync_folders};
use mailbridge_testkit::{
    AppOptions, CountingProxy, Dovecot, MailWorld, OAuthProvider, TestDatabase, corpus,
};
use secrecy::SecretString;
use serde_json::json;

const PASSWORD: &str = "bench-password";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_bytes(mut v: Vec<usize>) -> usize {
    v.sort_unstable();
    v[v.len() / 2]
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn password(user: &str) -> Credentials {
    Credentials::Password {
        user: user.into(),
        password: SecretString::from(PASSWORD),
    }
}

/// Python's imaplib reading every message of `folders` whole: Dovecot's own speed.
fn raw_fetch(port: u16, ca: &Path, user: &str, folders: &[&str], expected: usize) -> Duration {
    let script = format!(
        "import imaplib, ssl\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         m = imaplib.IMAP4_SSL('127.0.0.1', {port}, ssl_context=ctx)\n\
         m.login({user:?}, {PASSWORD:?})\n\
         n = 0\n\
         for f in {folders:?}:\n\
         \x20   m.select(f, readonly=True)\n\
         \x20   typ, data = m.uid('FETCH', '1:*', '(BODY.PEEK[])')\n\
         \x20   n += sum(1 for d in data if isinstance(d, tuple))\n\
         assert n == {expected}, n\n\
         m.logout()\n",
        ca = ca.display().to_string(),
    );
    let started = Instant::now();
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Mailbridge's first sync of every folder of `user` into a new SQLite store.
async fn first_sync(dovecot: &Dovecot, work: &Path, user: &str, expected: usize) -> Duration {
    let (store, mailbox) = dovecot
        .new_store_with_mailbox(work, TestDatabase::Sqlite, user, PASSWORD)
        .await
        .unwrap();
    let login = dovecot.imap_login_parts(user, PASSWORD).unwrap();
    // On the runtime's workers, as the service runs a mailbox's sync (not in `block_on`).
    let sync = {
        let store = store.clone();
        async move {
            let started = Instant::now();
            let mut session = login.login().await.unwrap();
            let found = folders(&mut session, &[]).await.unwrap();
            let options = PassOptions {
                flag_scan: true,
                ..PassOptions::default()
            };
            let report = sync_folders(&store, &mut session, &mailbox, &found, &options)
                .await
                .unwrap();
            (started.elapsed(), report, session)
        }
    };
    let (took, report, session) = tokio::spawn(sync).await.unwrap();
    assert_eq!(report.sync.stored, expected, "{:?}", report.failed);
    session.logout().await;
    store.close().await;
    took
}

fn inbox_and_sent(runtime: &tokio::runtime::Runtime, rounds: usize) {
    let messages = corpus::spam_assassin(usize::MAX).unwrap();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let user = "split@example.com";
    let provider = OAuthProvider::start().unwrap();
    let dovecot = Dovecot::start(&provider, &[(user, PASSWORD)]).unwrap();
    for (i, m) in messages.iter().enumerate() {
        let folder = if i % 2 == 0 { "INBOX" } else { "Sent" };
        dovecot.deliver_to(user, folder, m).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, dovecot.ca_pem()).unwrap();
    let n = messages.len();
    let port = dovecot.ports.imaps;
    println!(
        "1. first sync: {n} messages, {:.1} MB, half in INBOX and half in Sent; {rounds} rounds",
        bytes as f64 / 1e6
    );
    raw_fetch(port, &ca, user, &["INBOX", "Sent"], n); // Dovecot indexes both folders
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        raw.push(raw_fetch(port, &ca, user, &["INBOX", "Sent"], n));
        ours.push(runtime.block_on(first_sync(&dovecot, &work.path().join("mb"), user, n)));
        println!(
            "   round {round}: raw fetch {:.2} s | mailbridge {:.2} s",
            raw[round - 1].as_secs_f64(),
            ours[round - 1].as_secs_f64()
        );
    }
    let (raw, ours) = (median(raw), median(ours));
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "   medians: raw {:.2} s ({:.0} msg/s) | mailbridge {:.2} s ({:.0} msg/s) | ratio {:.2} (target >= 0.60)\n",
        raw.as_secs_f64(),
        rate(raw),
        ours.as_secs_f64(),
        rate(ours),
        rate(ours) / rate(raw)
    );
}

async fn flag_latency(samples: usize) {
    const USER: &str = "pw@example.com";
    let engine = EngineConfig {
        scan_interval: Duration::from_millis(100),
        stagger: Duration::ZERO,
        ..EngineConfig::default()
    };
    let w = MailWorld::start(AppOptions {
        engine: Some(engine),
        ..AppOptions::default()
    })
    .await;
    w.dovecot
        .deliver(
            USER,
            b"From: x@example.com\r\nSubject: flag me\r\nMessage-ID: <flag@example.com>\r\n\r\n.\r\n",
        )
        .unwrap();
    let profile = w.password_profile("bench").await;
    let mailbox = w
        .mailbox(USER, &w.ann_id, &profile, json!({"password": "hunter2"}))
        .await;
    assert_eq!(w.test(&mailbox, &w.admin).await["enabled"], true);
    let page = w
        .poll(
            &format!("/api/v1/emails?mailbox_id={mailbox}"),
            &w.admin,
            30,
            "the message stored",
            |p| !p["emails"].as_array().unwrap().is_empty(),
        )
        .await;
    let id = page["emails"][0]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await; // the engine reaches IDLE

    let tls = TlsSettings::new(Some(w.dovecot.ca_pem().as_bytes())).unwrap();
    let endpoint = Endpoint::new("127.0.0.1", w.dovecot.ports.imaps, Security::Tls);
    let user = Credentials::Password {
        user: USER.into(),
        password: SecretString::from("hunter2"),
    };
    let mut plain = ImapSession::login(&endpoint, &tls, &user).await.unwrap();
    plain.examine("INBOX").await.unwrap();
    let mut other = ImapSession::login(&endpoint, &tls, &user).await.unwrap();
    other.select("INBOX").await.unwrap();

    let (mut server, mut ours, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    println!("2. flag-change latency: {samples} samples");
    for i in 0..samples {
        let flagged = i % 2 == 0;
        let idling = tokio::spawn(async move {
            let r = plain
                .idle(tokio::time::Instant::now() + Duration::from_secs(30))
                .await
                .unwrap();
            (r.0, r.1, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(200)).await; // both are in IDLE now
        let changed = Instant::now();
        if flagged {
            other.uid_store_flags(1, &["\\Flagged"], &[]).await.unwrap();
        } else {
            other.uid_store_flags(1, &[], &["\\Flagged"]).await.unwrap();
        }
        loop {
            let (_, e) = w
                .api
                .get(&w.app, &format!("/api/v1/emails/{id}"), &w.admin)
                .await;
            if e["flags"]["flagged"] == flagged {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let visible = changed.elapsed();
        let (session, outcome, notified_at) = idling.await.unwrap();
        assert_eq!(outcome, IdleOutcome::Changed);
        plain = session;
        let notified = notified_at.duration_since(changed);
        server.push(notified);
        ours.push(visible);
        diff.push(visible.saturating_sub(notified));
    }
    println!(
        "   plain IDLE notification   median {:>4} ms   p99 {:>4} ms",
        percentile(&server, 0.5).as_millis(),
        percentile(&server, 0.99).as_millis()
    );
    println!(
        "   visible through the API   median {:>4} ms   p99 {:>4} ms",
        percentile(&ours, 0.5).as_millis(),
        percentile(&ours, 0.99).as_millis()
    );
    println!(
        "   difference                median {:>4} ms   p99 {:>4} ms   (target: median <= 100 ms)\n",
        percentile(&diff, 0.5).as_millis(),
        percentile(&diff, 0.99).as_millis()
    );
    plain.logout().await;
    other.logout().await;
    w.app.stop().await.unwrap();
}

async fn recheck(big: usize, rounds: usize) {
    let user = "big@example.com";
    let provider = OAuthProvider::start().unwrap();
    let dovecot = Dovecot::start(&provider, &[(user, PASSWORD)]).unwrap();
    let started = Instant::now();
    for i in 0..big {
        dovecot
            .deliver(
                user,
                format!("From: x@example.com\r\nSubject: m{i}\r\nMessage-ID: <big-{i}@example.com>\r\n\r\n.\r\n").as_bytes(),
            )
            .unwrap();
    }
    let proxy = CountingProxy::start(dovecot.ports.imap).await.unwrap();
    let endpoint = Endpoint::new("127.0.0.1", proxy.port, Security::None)
        .with_timeout(Duration::from_secs(300));
    let tls = TlsSettings::public();
    let mut session = ImapSession::login(&endpoint, &tls, &password(user))
        .await
        .unwrap();
    let status = session.examine("INBOX").await.unwrap();
    assert_eq!(status.exists as usize, big);
    println!(
        "3. re-checking {big} messages for changes (delivered and indexed in {:.0} s); {rounds} rounds",
        started.elapsed().as_secs_f64()
    );
    let last = status.uid_next.unwrap() - 1;
    let (mut cs_time, mut cs_bytes, mut full_time, mut full_bytes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let before = session
            .examine("INBOX")
            .await
            .unwrap()
            .highest_modseq
            .unwrap();
        // Ten messages read by another client since the last pass (one STORE: Dovecot
        // rescans a large Maildir after each change, and that is not what is measured).
        let uids: Vec<String> = (0..10)
            .map(|k| (1 + (round * 10 + k) * 997 % big).to_string())
            .collect();
        let store = format!("UID STORE {} +FLAGS (\\Seen)", uids.join(","));
        dovecot
            .other_client(user, PASSWORD, "INBOX", &[store.as_str()])
            .unwrap();
        // Dovecot rescans the changed Maildir at the first FETCH that needs it (minutes for
        // 100,000 files here): that one is not timed, and both timed reads find it warm.
        session.examine("INBOX").await.unwrap();
        session.uid_states(last, Some(before)).await.unwrap();
        let (at, bytes) = (Instant::now(), proxy.served());
        let changed = session.uid_states(last, Some(before)).await.unwrap();
        cs_time.push(at.elapsed());
        cs_bytes.push(proxy.served() - bytes);
        assert_eq!(changed.len(), 10);
        let (at, bytes) = (Instant::now(), proxy.served());
        let all = session.uid_states(last, None).await.unwrap();
        full_time.push(at.elapsed());
        full_bytes.push(proxy.served() - bytes);
        assert_eq!(all.len(), big);
    }
    let (cs_time, full_time) = (median(cs_time), median(full_time));
    let (cs_bytes, full_bytes) = (median_bytes(cs_bytes), median_bytes(full_bytes));
    println!(
        "   CONDSTORE (CHANGEDSINCE)  median {:>8.1} ms  {:>10} bytes",
        cs_time.as_secs_f64() * 1e3,
        cs_bytes
    );
    println!(
        "   full flag scan            median {:>8.1} ms  {:>10} bytes",
        full_time.as_secs_f64() * 1e3,
        full_bytes
    );
    println!(
        "   CONDSTORE / full scan: time {:.4}, bytes {:.5}",
        cs_time.as_secs_f64() / full_time.as_secs_f64(),
        cs_bytes as f64 / full_bytes as f64
    );
    session.logout().await;
}

fn main() {
    let rounds = env_or("BENCH_ROUNDS", 3);
    let samples = env_or("BENCH_SAMPLES", 20);
    let big = env_or("BENCH_BIG", 100_000);
    let part = std::env::var("BENCH_PART").unwrap_or_default();
    let runs = |n: &str| part.is_empty() || part.split(',').any(|p| p.trim() == n);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if runs("1") {
        inbox_and_sent(&runtime, rounds);
    }
    if runs("2") {
        runtime.block_on(flag_latency(samples));
    }
    if runs("3") {
        runtime.block_on(recheck(big, rounds.max(3)));
    }
}
