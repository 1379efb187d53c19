//! Faults a deployment meets, against `mailbridge serve` child processes and a real Dovecot:
//! SIGKILL at random moments during a first sync of the SpamAssassin corpus (SQLite and
//! PostgreSQL), PostgreSQL stopped while the service runs, and SQLite's disk full.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

#[allow(dead_code)] // the multi-node tests use the rest
#[path = "support/cluster.rs"]
mod cluster;

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use cluster::Cluster;
use mailbridge_testkit::{Postgres, corpus};
use rand::{Rng, SeedableRng};
use sqlx::AnyPool;

/// A setting for a long run (`scripts/crash-test`), or its default.
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::pool::PoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap()
}

async fn count(db: &AnyPool, mailbox: &str) -> usize {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM emails WHERE mailbox_id = $1")
        .bind(mailbox)
        .fetch_one(db)
        .await
        .unwrap();
    n as usize
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A message as an IMAP server hands it out: lines end in CRLF (the corpus' files use LF).
fn as_served(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 40);
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' && (i == 0 || message[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// SIGKILL at `MAILBRIDGE_CRASH_KILLS` random moments during a first sync of
/// `MAILBRIDGE_CRASH_MESSAGES` corpus messages, restarting on the same database each time;
/// then every message is stored exactly once. A moment is drawn as a point of the corpus
/// (the kill comes once that many records are committed) plus 0–40 ms, so kills land in
/// every stage of a batch — fetching, parsing, inserting, committing — and, when two points
/// fall in one batch, during start-up and login. `MAILBRIDGE_CRASH_SEED` replays a run.
async fn killed_at_random_moments(url: Option<String>, backend: &str) {
    let total = setting("MAILBRIDGE_CRASH_MESSAGES", 6046) as usize;
    let kills = setting("MAILBRIDGE_CRASH_KILLS", 20) as usize;
    let seed = setting(
        "MAILBRIDGE_CRASH_SEED",
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish(),
    );
    eprintln!("{backend}: seed {seed} (MAILBRIDGE_CRASH_SEED={seed} replays this run)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let messages = corpus::spam_assassin(total).unwrap();
    assert_eq!(messages.len(), total, "the corpus holds {total} messages");
    let c = Cluster::start_on(url, 1, 0).await;
    let (mailbox, user) = c.mailboxes[0].clone();
    let mailbox = mailbox.to_string();
    for m in &messages {
        c.dovecot.deliver(&user, m).unwrap();
    }
    let mut expected: Vec<String> = messages.iter().map(|m| sha256_hex(&as_served(m))).collect();
    expected.sort();
    let db = pool(c.url()).await;

    // Points of the corpus, short of its last batch (after which the sync is over).
    let mut points: Vec<usize> = (0..kills)
        .map(|_| rng.gen_range(0..total.saturating_sub(250).max(1)))
        .collect();
    points.sort_unstable();
    // A short lease: on PostgreSQL a killed node's lease must expire before the next node
    // takes the mailbox (SQLite hands it over at once).
    let env = [("MAILBRIDGE_LEASE_TTL_MS", "2000")];
    let started = Instant::now();
    let (mut node, _) = c.serve("crash", &env);
    let mut mid_sync = 0;
    for (i, point) in points.iter().enumerate() {
        let waiting = Instant::now();
        while count(&db, &mailbox).await < *point {
            assert!(
                waiting.elapsed() < Duration::from_secs(180),
                "kill {i}: fewer than {point} records after 180 s\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..40))).await;
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
        let at = count(&db, &mailbox).await;
        if at < total {
            mid_sync += 1;
        }
        eprintln!("{backend}: kill {} at {at} records", i + 1);
        node = c.serve("crash", &env).0;
    }
    let waiting = Instant::now();
    loop {
        let n = count(&db, &mailbox).await;
        assert!(n <= total, "{n} records, more than the {total} messages");
        if n == total {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(300),
            "only {n} of {total} records 300 s after the last restart\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    // A moment more, for anything stored twice to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT remote_key, content_sha256 FROM emails WHERE mailbox_id = $1")
            .bind(&mailbox)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows.len(), total, "one record per message");
    let keys: HashSet<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), total, "no message stored twice");
    let mut stored: Vec<String> = rows.into_iter().map(|(_, h)| h).collect();
    stored.sort();
    assert!(
        stored == expected,
        "the records' raw bytes are not the corpus' messages"
    );
    let record = c.store.get_mailbox(c.mailboxes[0].0).await.unwrap();
    assert!(record.enabled, "the mailbox is still enabled");
    eprintln!(
        "{backend}: {kills} SIGKILLs ({mid_sync} before the sync was complete), {total} records, {total} distinct remote keys, every raw SHA-256 a corpus message's; {:.1} s from the first start to the last record",
        took.as_secs_f64()
    );
    assert!(
        mid_sync * 2 >= kills,
        "only {mid_sync} of {kills} kills landed before the sync was complete; the test proved little"
    );
    drop(node);
}

#[tokio::test]
async fn sigkills_during_a_first_sync_of_the_corpus_lose_and_repeat_nothing_on_sqlite() {
    killed_at_random_moments(None, "SQLite").await;
}

#[tokio::test]
async fn sigkills_during_a_first_sync_of_the_corpus_lose_and_repeat_nothing_on_postgres() {
    let url = Postgres::shared().unwrap().database().await.unwrap();
    killed_at_random_moments(Some(url), "PostgreSQL").await;
}
