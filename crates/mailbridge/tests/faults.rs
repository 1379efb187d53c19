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
use serde_json::Value;
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

/// SIGKILL at `MAILBRIDGE_TEST_CRASH_KILLS` random moments during a first sync of
/// `MAILBRIDGE_TEST_CRASH_MESSAGES` corpus messages, restarting on the same database each time;
/// then every message is stored exactly once. A moment is drawn as a point of the corpus
/// (the kill comes once that many records are committed) plus a random share of the time a
/// batch takes, so kills land in every stage of a batch — fetching, parsing, inserting,
/// committing — and, when two points fall in one batch, during start-up and login. Each start
/// downloads 64 messages, then 128, 256 and 512, before batches of up to 1,000 (8 MiB cuts
/// some short); with kills a few hundred records apart few starts get that far, so the middle
/// kill waits for its start's ramp, and one lands while a large batch is in flight.
/// `MAILBRIDGE_TEST_CRASH_SEED` replays a run.
async fn killed_at_random_moments(url: Option<String>, backend: &str) {
    let total = setting("MAILBRIDGE_TEST_CRASH_MESSAGES", 6046) as usize;
    let kills = setting("MAILBRIDGE_TEST_CRASH_KILLS", 20) as usize;
    let seed = setting(
        "MAILBRIDGE_TEST_CRASH_SEED",
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish(),
    );
    eprintln!("{backend}: seed {seed} (MAILBRIDGE_TEST_CRASH_SEED={seed} replays this run)");
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
    let last_batch = mailbridge_sync::incoming::BATCH_SIZE;
    let mut points: Vec<usize> = (0..kills)
        .map(|_| rng.gen_range(0..total.saturating_sub(last_batch).max(1)))
        .collect();
    points.sort_unstable();
    // The messages a start downloads before its batches of up to `last_batch` (960), and the
    // kill that waits for them (when a large batch fits after them).
    let ramp: usize = (0..)
        .map(|k| mailbridge_sync::incoming::FIRST_BATCH << k)
        .take_while(|n| *n < last_batch)
        .sum();
    let aimed_kill = kills / 2;
    // The records when the running process started.
    let mut started_with = 0;
    // A short lease: on PostgreSQL a killed node's lease must expire before the next node
    // takes the mailbox (SQLite hands it over at once).
    let env = [("MAILBRIDGE_LEASE_TTL_MS", "2000")];
    let started = Instant::now();
    let (mut node, _) = c.serve("crash", &env);
    let mut mid_sync = 0;
    // How long one batch takes, from commit to commit (measured as the records grow).
    let mut batch_time = Duration::from_millis(300);
    // The records last seen, when, and the commits this process made since it was first
    // polled: only the time between two of its own commits is a batch's (the first includes
    // start-up, login and, on PostgreSQL, the wait for the killed node's lease).
    let (mut seen, mut seen_at, mut commits) = (None, Instant::now(), 0);
    for (i, &point) in points.iter().enumerate() {
        let aimed = i == aimed_kill && started_with + ramp + last_batch <= total;
        let point = if aimed {
            point.max(started_with + ramp)
        } else {
            point
        };
        let waiting = Instant::now();
        loop {
            let n = count(&db, &mailbox).await;
            if seen != Some(n) {
                if seen.is_some() {
                    if commits > 0 {
                        batch_time = seen_at.elapsed();
                    }
                    commits += 1;
                }
                (seen, seen_at) = (Some(n), Instant::now());
            }
            if n >= point {
                break;
            }
            assert!(
                waiting.elapsed() < Duration::from_secs(180),
                "kill {i}: fewer than {point} records after 180 s\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Anywhere in the next batch's fetch, parse, insert or commit; right after the ramp
        // the last batch timed is the 512's, and the next holds up to twice as many.
        let share: f64 = rng.r#gen();
        let next_batch = if aimed { 2.0 } else { 1.0 };
        tokio::time::sleep(batch_time.mul_f64(share * next_batch)).await;
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
        let at = count(&db, &mailbox).await;
        if at < total {
            mid_sync += 1;
        }
        eprintln!(
            "{backend}: kill {} at {at} records{}",
            i + 1,
            if aimed && at < total {
                " (past this start's ramp: a batch of up to 1,000 in flight)"
            } else {
                ""
            }
        );
        started_with = at;
        node = c.serve("crash", &env).0;
        (seen, commits) = (None, 0);
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

async fn answer(http: &reqwest::Client, url: &str, token: &str) -> (u16, Option<String>, Value) {
    let resp = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

/// PostgreSQL stopped for `MAILBRIDGE_TEST_OUTAGE_SECS` (30) while `mailbridge serve` runs: the
/// API answers 503 with the JSON error and `Retry-After` within a few seconds (never a 500),
/// `/readyz` says not ready, the engine waits; when PostgreSQL is back the service resumes on
/// its own, and mail delivered meanwhile is stored once. No mailbox is disabled or alerted.
#[tokio::test]
async fn postgres_stopped_while_serving_is_a_503_and_the_service_resumes_on_its_own() {
    let outage = Duration::from_secs(setting("MAILBRIDGE_TEST_OUTAGE_SECS", 30));
    let pg = Postgres::private().unwrap();
    let url = pg.database().await.unwrap();
    let c = Cluster::start_on(Some(url), 2, 0).await;
    c.deliver(1, &c.mailboxes);
    let (node, base) = c.serve("node", &[]);
    c.wait_for_emails(&c.mailboxes, 1).await;
    let http = reqwest::Client::new();
    let mailboxes = format!("{base}/api/v1/mailboxes");

    pg.stop().unwrap();
    let down = Instant::now();
    c.deliver(2, &c.mailboxes);
    let (mut answers, mut slowest) = (0, Duration::ZERO);
    while down.elapsed() < outage {
        let asked = Instant::now();
        let (status, retry, body) = answer(&http, &mailboxes, &c.token).await;
        let took = asked.elapsed();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert_eq!(
            body["error"]["message"],
            "the database is not answering; try again shortly"
        );
        assert_eq!(retry.as_deref(), Some("5"));
        assert!(took < Duration::from_secs(8), "answered after {took:?}");
        let (ready, _, why) = answer(&http, &format!("{base}/readyz"), "").await;
        assert_eq!(ready, 503, "{why}");
        answers += 1;
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pg.restart().unwrap();
    let back = Instant::now();
    let was_down = down.elapsed();
    loop {
        let (ready, _, _) = answer(&http, &format!("{base}/readyz"), "").await;
        if ready == 200 {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(30), "not ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after = back.elapsed();
    // The mail delivered during the outage is stored by the engine on its own, once.
    c.wait_for_emails(&c.mailboxes, 2).await;
    let resumed_after = back.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.wait_for_emails(&c.mailboxes, 2).await;
    for (id, user) in &c.mailboxes {
        let m = c.store.get_mailbox(*id).await.unwrap();
        assert!(m.enabled, "{user} was disabled by the outage");
        let (status, _, alerts) = answer(
            &http,
            &format!("{base}/api/v1/mailboxes/{id}/alerts"),
            &c.token,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(alerts, serde_json::json!([]), "{user}: {alerts}");
    }
    let log = std::fs::read_to_string(c.log_path("node")).unwrap();
    assert!(
        log.contains("the database is not answering"),
        "the engine says why it waits"
    );
    eprintln!(
        "PostgreSQL down {:.1} s: {answers} API requests answered 503 (slowest {:.1} s); ready {:.1} s and mail delivered meanwhile stored {:.1} s after it was back",
        was_down.as_secs_f64(),
        slowest.as_secs_f64(),
        ready_after.as_secs_f64(),
        resumed_after.as_secs_f64()
    );
    drop(node);
}

/// Unmounts on drop.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A small tmpfs for a data folder, or why there cannot be one here.
fn small_filesystem(dir: &std::path::Path, size: &str) -> Result<Mount, String> {
    let out = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "mailbridge-test",
        ])
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(Mount(dir.to_owned()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Fills the file system holding `dir` with `filler` until the kernel says it is full.
fn fill(filler: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // The last partial chunk may have taken the final bytes; nothing is left.
    let _ = f.sync_all();
}

async fn integrity(dir: &std::path::Path) -> String {
    let db = pool(&format!(
        "sqlite://{}?mode=ro",
        dir.join("mailbridge.db").display()
    ))
    .await;
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    check
}

/// SQLite's disk full while the service syncs: writes get 507 with the JSON error and reads
/// still work; the engine's passes fail and wait but the mailbox is never counted as failing
/// (with a quick engine, ten failures would take seconds); nothing is corrupted; and once
/// space is freed the mail that arrived meanwhile is stored on its own. Needs a small tmpfs
/// (root); skipped, saying so, where none can be mounted.
#[tokio::test]
async fn a_full_disk_under_sqlite_is_a_507_and_the_sync_resumes_when_space_is_freed() {
    use mailbridge_testkit::{AppOptions, MailWorld, TestDatabase};
    let mount_dir = tempfile::tempdir().unwrap();
    let _mount = match small_filesystem(mount_dir.path(), "48m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!(
                "SKIPPED: cannot mount a small tmpfs for the full-disk test ({why}); run as root"
            );
            return;
        }
    };
    let w = MailWorld::start_in(
        mount_dir.path(),
        AppOptions {
            // Quick: a retry at least every second, three failures in a row disable a
            // mailbox, and logins are not held back.
            engine: Some(mailbridge_sync::EngineConfig {
                max_failures: 3,
                login_limit: (1000, Duration::from_secs(60)),
                ..MailWorld::fast_engine()
            }),
            database: TestDatabase::Sqlite,
            ..AppOptions::default()
        },
    )
    .await;
    let data = std::fs::read_dir(mount_dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("mailbridge.db").exists())
        .unwrap();
    let profile = w.password_profile("Dovecot").await;
    let id = w
        .mailbox(
            "pw@example.com",
            &w.ann_id,
            &profile,
            serde_json::json!({"password": "hunter2", "outgoing_method": "none"}),
        )
        .await;
    w.enable_as_tested(&id).await;
    let mailbox = id.parse().unwrap();
    // Bodies of pseudo-random hex: the store compresses what it keeps, and a repeated
    // pattern would shrink to nothing, fitting any disk.
    let message = |i: usize, body: usize| {
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let noise: String = (0..body)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x & 15) as usize])
            })
            .collect();
        format!(
            "From: a@example.com\r\nTo: pw@example.com\r\nSubject: disk {i}\r\nMessage-ID: <disk-{i}@example.com>\r\n\r\n{noise}\r\n"
        )
    };
    for i in 0..20 {
        w.dovecot
            .deliver("pw@example.com", message(i, 1000).as_bytes())
            .unwrap();
    }
    let stored = async || w.app.store.count_emails(mailbox).await.unwrap() as usize;
    let started = Instant::now();
    while stored().await < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "first mail not stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Full, but for a reserve given back later.
    let reserve = mount_dir.path().join("reserve");
    std::fs::write(&reserve, vec![0u8; 1 << 20]).unwrap();
    let filler = mount_dir.path().join("filler");
    fill(&filler);
    // Mail arrives that the database has no room for: 15 MB, about 8 MB compressed, more than
    // the log's spare room (SQLite's WAL keeps its size once grown, and a commit reuses it
    // after a checkpoint, so some of it may still fit) and the megabyte freed below.
    for i in 20..80 {
        w.dovecot
            .deliver("pw@example.com", message(i, 256 * 1024).as_bytes())
            .unwrap();
    }
    // Writes through the API: 507 with the JSON error, once the database's spare room is used.
    let http = reqwest::Client::new();
    let mut refused = None;
    for round in 0..200 {
        let contacts: Vec<Value> = (0..200)
            .map(|k| serde_json::json!({"email": format!("c{round}-{k}@example.com"), "name": "x".repeat(200)}))
            .collect();
        let resp = http
            .put(format!("{}/api/v1/contacts", w.app.base))
            .bearer_auth(&w.admin)
            .json(&serde_json::json!({"contacts": contacts}))
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            let retry = resp.headers().get("retry-after").cloned();
            refused = Some((
                resp.status().as_u16(),
                retry,
                resp.json::<Value>().await.unwrap(),
            ));
            break;
        }
    }
    let (status, retry, body) = refused.expect("the API kept writing to a full disk");
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("storage is full"),
        "{body}"
    );
    assert!(retry.is_some());
    // Reads still work.
    let (read, _) = w.api.get(&w.app, "/api/v1/mailboxes", &w.admin).await;
    assert_eq!(read, 200);
    // A megabyte is freed: small writes (lease renewals, a mailbox's status) fit again, the
    // new mail does not, all of it. The engine keeps trying, and the mailbox is neither
    // disabled (three failures in a row would, within a second or two) nor alerted, nor is
    // anything half stored.
    std::fs::remove_file(&reserve).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let m = w.app.store.get_mailbox(mailbox).await.unwrap();
    assert!(m.enabled, "the mailbox was disabled for the full disk");
    let (_, alerts) = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{id}/alerts"), &w.admin)
        .await;
    assert_eq!(alerts, serde_json::json!([]), "{alerts}");
    let before_freeing = stored().await;
    assert!(
        (20..80).contains(&before_freeing),
        "{before_freeing} stored: the new mail was to be more than the disk could take"
    );
    assert_eq!(integrity(&data).await, "ok");

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    while stored().await < 80 {
        assert!(
            freed.elapsed() < Duration::from_secs(60),
            "the sync did not resume after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed_after = freed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored().await, 80, "nothing stored twice");
    assert_eq!(integrity(&data).await, "ok");
    eprintln!(
        "disk full: writes answered {status}; {} of the 60 messages that arrived meanwhile fitted before space was freed, the rest were stored {:.1} s after",
        before_freeing - 20,
        resumed_after.as_secs_f64()
    );
}
