//! `mailbridge backup` as an operator runs it: a copy of a SQLite database taken while
//! `mailbridge serve` syncs mail and the API writes, restored into a fresh data folder with
//! the same master key, serves the same users, profiles, mailboxes and mail, and its secrets
//! still decrypt; PostgreSQL is refused with what to use instead.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

#[allow(dead_code)] // the multi-node tests use the rest
#[path = "support/cluster.rs"]
mod cluster;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::Cluster;
use mailbridge_testkit::corpus;
use serde_json::{Value, json};
use sqlx::AnyPool;

const TOTAL: usize = 1500;
const FIRST: usize = 500;

async fn open(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::pool::PoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap()
}

/// (remote key, raw SHA-256) of every email record.
async fn emails(db: &AnyPool) -> BTreeSet<(String, String)> {
    sqlx::query_as("SELECT remote_key, content_sha256 FROM emails")
        .fetch_all(db)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn get(base: &str, token: &str, path: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{base}/api/v1/{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.unwrap()
}

/// What a restore must bring back: users, profiles, and each mailbox's identity and settings
/// (its sync status moves on).
async fn setup_of(base: &str, token: &str) -> (Value, Value, Vec<Value>) {
    let mailboxes = get(base, token, "mailboxes").await;
    let mailboxes = mailboxes
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            json!([
                m["id"],
                m["email"],
                m["profile_id"],
                m["owner_user_id"],
                m["tracking_rule"],
                m["enabled"]
            ])
        })
        .collect();
    (
        get(base, token, "users").await,
        get(base, token, "server-profiles").await,
        mailboxes,
    )
}

async fn wait_for(what: &str, secs: u64, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < Duration::from_secs(secs), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Two workers: the API writer goes on while the test waits for the backup command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_mail_syncs_restores_with_its_secrets() {
    let c = Cluster::start_on(None, 1, 0).await;
    let (mailbox, user) = c.mailboxes[0].clone();
    let messages = corpus::spam_assassin(TOTAL).unwrap();
    for m in &messages[..FIRST] {
        c.dovecot.deliver(&user, m).unwrap();
    }
    let (live, base) = c.serve("live", &[]);
    let store = &c.store;
    wait_for("the first mail is synced", 60, async || {
        store.count_emails(mailbox).await.unwrap() == FIRST as i64
    })
    .await;
    let setup = setup_of(&base, &c.token).await;

    // While the backup runs, the rest of the corpus arrives and is synced, and the API writes.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, base, token) = (stop.clone(), base.clone(), c.token.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let resp = http
                    .put(format!("{base}/api/v1/contacts"))
                    .bearer_auth(&token)
                    .json(
                        &json!({"contacts": [{"email": format!("c{n}@example.com"), "name": "C"}]}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                n += 1;
            }
            n
        })
    };
    let rest = &messages[FIRST..];
    let third = rest.len() / 3;
    for m in &rest[..third] {
        c.dovecot.deliver(&user, m).unwrap();
    }
    let backup = c.dir().join("mailbridge-backup.db");
    let path = backup.to_str().unwrap().to_owned();
    let before = store.count_emails(mailbox).await.unwrap();
    let out = std::thread::scope(|s| {
        let taking = s.spawn(|| c.cli_output(&["backup", &path]));
        for m in &rest[third..] {
            c.dovecot.deliver(&user, m).unwrap();
        }
        taking.join().unwrap()
    });
    let after = store.count_emails(mailbox).await.unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("backup written") && said.contains(" MB in "),
        "a summary line with size and time: {said}"
    );
    assert!(
        said.contains("KEEP THE MASTER KEY TOO") && said.contains("To restore"),
        "{said}"
    );
    eprintln!("{said}");
    // A second backup to the same file is refused, and the first is left as it was.
    let size = std::fs::metadata(&backup).unwrap().len();
    let again = c.cli_output(&["backup", &path]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    assert_eq!(std::fs::metadata(&backup).unwrap().len(), size);

    wait_for("the live service has every message", 60, async || {
        store.count_emails(mailbox).await.unwrap() == TOTAL as i64
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let contacts_written = writer.await.unwrap();
    assert!(contacts_written > 0);
    drop(live);

    // The copy is one moment of the database: whole, and every batch in it with its folder
    // position (the messages arrive in UID order, so the records are UIDs 1..=last_uid).
    let copy = open(&format!("sqlite://{path}?mode=ro")).await;
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&copy)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let in_copy = emails(&copy).await.len() as i64;
    let (last_uid,): (i64,) =
        sqlx::query_as("SELECT last_uid FROM folder_states WHERE folder = 'INBOX'")
            .fetch_one(&copy)
            .await
            .unwrap();
    assert_eq!(in_copy, last_uid, "records and folder position agree");
    assert!(
        (before..=after).contains(&in_copy),
        "the copy holds {in_copy} records: taken between {before} and {after}"
    );
    copy.close().await;
    eprintln!(
        "the backup holds {in_copy} of {TOTAL} records (taken while {before}..{after} were stored)"
    );

    // Restore as the README says, into a fresh data folder, with the same master key.
    let restored = c.dir().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::copy(&backup, restored.join("mailbridge.db")).unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        restored.join("mailbridge.db").display()
    );
    let (node, base) = c.serve("restored", &[("MAILBRIDGE_DATABASE_URL", &url)]);
    assert_eq!(setup_of(&base, &c.token).await, setup, "the same setup");
    // The mailbox password decrypts: Test & Enable logs in with it…
    let tested: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/mailboxes/{mailbox}/test-and-enable"))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tested["incoming_status"], "success", "{tested:#}");
    // …and the sync goes on from the copy's position: the mail that came after it is
    // stored, none twice, the same records as the live database's.
    let db = open(&url).await;
    let db_ref = &db;
    wait_for("the restored service syncs the rest", 60, async || {
        emails(db_ref).await.len() >= TOTAL
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live_db = open(c.url()).await;
    assert_eq!(emails(&db).await, emails(&live_db).await);
    drop(node);
}

#[test]
fn a_postgres_database_is_not_backed_up_and_pg_dump_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailbridge"))
        .args(["backup", "mailbridge.dump"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env(
            "MAILBRIDGE_DATABASE_URL",
            "postgres://mb:hunter2@127.0.0.1:1/mail",
        )
        .env(
            "MAILBRIDGE_MASTER_KEY",
            "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("pg_dump --format=custom")
            && said.contains("'postgres://mb@127.0.0.1:1/mail'")
            && said.contains("nothing was done"),
        "{said}"
    );
    assert!(!said.contains("hunter2"), "{said}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was written"
    );
}
