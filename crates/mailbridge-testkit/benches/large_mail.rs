//! Large mail (issue 13): a first sync of `BENCH_MESSAGES` (100) messages of `BENCH_MB` (25)
//! MB each from a local Dovecot into Mailbridge on SQLite, plus one message above the
//! default `max_message_bytes` (64 MiB), which must come in as its header only. Prints the
//! time, the rate, and this process's peak resident memory during the sync against its
//! resident memory before it (the peak is reset first through `/proc/self/clear_refs`), and
//! checks that every message became one record, without an error or a timeout.
//!
//! Run with `bench/large-mail`.
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use std::time::Instant;

use mailbridge_store::EmailFilter;
use mailbridge_sync::incoming::imap::sync_inbox;
use mailbridge_testkit::{AppOptions, Dovecot, OAuthProvider, TestApp, TestDatabase};

const USER: &str = "bench@example.com";
const PASSWORD: &str = "bench-password";
const MIB: usize = 1024 * 1024;

/// A message of about `bytes` bytes: a short text part and a base64 attachment.
fn message(n: usize, bytes: usize) -> Vec<u8> {
    let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    let mut m = format!(
        "From: sender@example.com\r\nTo: {USER}\r\nSubject: large {n}\r\nMessage-ID: <large-{n}@example.com>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
the attachment\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=large-{n}.bin\r\n\
Content-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    m.reserve(bytes + line.len());
    while m.len() < bytes {
        m.extend_from_slice(line);
    }
    m.extend_from_slice(b"--b--\r\n");
    m
}

/// A line of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (count, mb) = (env("BENCH_MESSAGES", 100), env("BENCH_MB", 25));
    let oversized = mailbridge_proto::DEFAULT_MAX_MESSAGE_BYTES + 16 * MIB;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let provider = OAuthProvider::start().unwrap();
    let dovecot = Dovecot::start(&provider, &[(USER, PASSWORD)]).unwrap();
    let mut total = 0;
    for n in 0..count {
        let m = message(n, mb * 1_000_000);
        total += m.len();
        dovecot.deliver(USER, &m).unwrap();
    }
    let big = message(count, oversized);
    dovecot.deliver(USER, &big).unwrap();
    let big_len = big.len();
    drop(big);
    println!(
        "{count} messages of {mb} MB ({:.0} MB) and one of {:.0} MB (above max_message_bytes, {} MiB), one INBOX",
        total as f64 / 1e6,
        big_len as f64 / 1e6,
        mailbridge_proto::DEFAULT_MAX_MESSAGE_BYTES / MIB
    );
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let app = TestApp::start_with(
            dir.path(),
            AppOptions {
                database: TestDatabase::Sqlite,
                ..AppOptions::default()
            },
        )
        .await
        .unwrap();
        let mailbox = dovecot
            .password_mailbox_in(&app.store, USER, PASSWORD)
            .await
            .unwrap();
        let mut session = dovecot.imap_login(USER, PASSWORD).await.unwrap();
        // The peak from here on: the messages made above are not the sync's.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let before = status_kib("VmRSS");
        let started = Instant::now();
        let report = sync_inbox(&app.store, &mut session, &mailbox, None, None)
            .await
            .unwrap();
        let took = started.elapsed();
        let peak = status_kib("VmHWM");
        session.logout().await;
        assert_eq!(report.stored, count + 1, "{report:?}");
        let emails = app
            .store
            .list_emails(
                &EmailFilter {
                    mailbox: Some(mailbox.id),
                    ..EmailFilter::default()
                },
                None,
                i64::try_from(count).unwrap() + 10,
            )
            .await
            .unwrap();
        let truncated: Vec<_> = emails.iter().filter(|e| e.truncated).collect();
        assert_eq!(truncated.len(), 1, "only the oversized one is truncated");
        assert_eq!(truncated[0].size, i64::try_from(big_len).unwrap());
        assert!(
            emails
                .iter()
                .filter(|e| !e.truncated)
                .all(|e| e.attachments.len() == 1),
            "every other message whole, with its attachment"
        );
        println!(
            "first sync: {:.1} s, {:.0} MB/s; {} records, 1 truncated (header only)",
            took.as_secs_f64(),
            total as f64 / 1e6 / took.as_secs_f64(),
            emails.len()
        );
        println!(
            "resident memory: {:.0} MiB before the sync, peak {:.0} MiB during it (+{:.0} MiB)",
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            (peak.saturating_sub(before)) as f64 / 1024.0
        );
        app.stop().await.unwrap();
    });
}
