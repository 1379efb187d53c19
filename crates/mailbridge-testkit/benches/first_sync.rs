//! First-sync benchmark: the 6,046 messages of the SpamAssassin corpus in one INBOX of a local
//! Dovecot, read three ways in the same run — a raw `UID FETCH 1:* BODY.PEEK[]` (Python's
//! imaplib: Dovecot's own speed, the limit), `mbsync` (isync; `FSync no`, and its defaults),
//! and Mailbridge's first sync (fetch, parse, store, committed per batch) into SQLite and into
//! PostgreSQL (a local server with fsync on and `synchronous_commit = off`: like SQLite's WAL
//! with `synchronous = NORMAL`, a commit survives the process, not a power cut). Prints each
//! round, the medians, and the ratios the targets are stated in (of the medians, and round by
//! round), then the bytes each database takes on disk against the raw bytes. Each round also
//! times the sync's parse and store stages on their own (parsed batches committed with nothing
//! else running), the floor each sets, and what the store's multi-row INSERTs cost through
//! sqlx's `Any` driver against SQLite's C API (rusqlite): what a native writer would save.
//! Run with `bench/first-sync`; `BENCH_COPIES=N` makes the mailbox N copies of the corpus
//! (each copy's Message-IDs its own: [`corpus::copy_of`]).
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mailbridge_core::message::MessageFlags;
use mailbridge_proto::DEFAULT_MAX_MESSAGE_BYTES;
use mailbridge_store::{FolderPosition, NewEmail, ROWS_PER_INSERT, RawMessage, SyncBatch};
use mailbridge_sync::incoming::imap::sync_inbox;
use mailbridge_sync::incoming::plan::{Batching, Download, plan_downloads};
use mailbridge_sync::incoming::{BATCH_BYTES, BATCH_SIZE, FIRST_BATCH};
use mailbridge_testkit::{Dovecot, OAuthProvider, Postgres, TestDatabase, corpus, process};

const USER: &str = "bench@example.com";
const PASSWORD: &str = "bench-password";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Round by round, `other`'s rate against `base`'s (`base`'s time over `other`'s): their
/// median, least and greatest. A round reads the two within seconds of each other, so this
/// ratio feels less of this machine's drift between rounds than the ratio of the medians.
fn per_round(base: &[Read], other: &[Read]) -> String {
    let mut ratios: Vec<f64> = base
        .iter()
        .zip(other)
        .map(|(a, b)| a.took.as_secs_f64() / b.took.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    format!(
        "round by round: median {:.2}, {:.2}–{:.2}",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    )
}

/// Every contender starts with nothing waiting to be written: the kernel's writeback of the
/// one before (mbsync's maildir, a database) must not be charged to the next.
fn settle() {
    let ok = Command::new("sync").status().is_ok_and(|s| s.success());
    assert!(ok, "sync failed");
}

fn timed(cmd: &mut Command) -> Duration {
    settle();
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn raw_fetch(dovecot: &Dovecot, ca: &Path, expected: usize) -> Read {
    let port = dovecot.ports.imaps;
    let script = format!(
        "import imaplib, ssl\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         m = imaplib.IMAP4_SSL('127.0.0.1', {port}, ssl_context=ctx)\n\
         m.login({USER:?}, {PASSWORD:?})\n\
         m.select('INBOX', readonly=True)\n\
         typ, data = m.uid('FETCH', '1:*', '(BODY.PEEK[])')\n\
         n = sum(1 for d in data if isinstance(d, tuple))\n\
         assert n == {expected}, n\n\
         m.logout()\n",
        ca = ca.display().to_string(),
    );
    let server = ServerCpu::now(dovecot.pid());
    let took = timed(Command::new("python3").arg("-c").arg(script));
    Read {
        took,
        cpu: Duration::ZERO,
        server_cpu: server.since(),
        database_cpu: Duration::ZERO,
    }
}

fn mbsync(port: u16, ca: &Path, work: &Path, fsync: bool) -> Duration {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work.join("mail")).unwrap();
    let config = format!(
        "{fsync}IMAPAccount bench\nHost localhost\nPort {port}\nUser {USER}\nPass {PASSWORD}\nSSLType IMAPS\n\
         CertificateFile {ca}\nAuthMechs PLAIN\n\n\
         IMAPStore remote\nAccount bench\n\n\
         MaildirStore local\nPath {mail}/\nInbox {mail}/INBOX\n\n\
         Channel bench\nFar :remote:\nNear :local:\nPatterns INBOX\nSync Pull\nCreate Near\nSyncState *\n",
        ca = ca.display(),
        mail = work.join("mail").display(),
        // A global option in isync 1.4.
        fsync = if fsync { "" } else { "FSync no\n\n" },
    );
    std::fs::write(work.join("mbsyncrc"), config).unwrap();
    timed(
        Command::new("mbsync")
            .arg("-q")
            .arg("-c")
            .arg(work.join("mbsyncrc"))
            .arg("-a"),
    )
}

/// The CPU time this process has used so far (all its threads, live or ended).
fn cpu_used() -> Duration {
    process::cpu_time(std::process::id())
}

/// A server's CPU time and processes before a read: Dovecot's, or PostgreSQL's (`root` is its
/// master process).
struct ServerCpu {
    root: u32,
    used: Duration,
    processes: std::collections::HashSet<u32>,
}

impl ServerCpu {
    fn now(root: u32) -> Self {
        Self {
            root,
            processes: process::process_tree(root).into_iter().collect(),
            used: process::tree_cpu(root),
        }
    }

    /// The CPU time the server used since, once the processes that began after `now` (for
    /// Dovecot the read's login: its `imap` and `imap-login`, which end with its connection;
    /// for PostgreSQL the connections the store opened during the sync, closed with it) are
    /// gone, reaped by the master a moment after the client left: until then the tail of
    /// their work is not counted. (The store's first connection, older than `now`, is
    /// counted live or reaped, whichever it is when this reads.)
    /// Waits at most 2 s, and says so when a process outlived that (one Dovecot keeps for the
    /// next login; then its time so far is counted, not its later time).
    fn since(&self) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let new: Vec<u32> = process::process_tree(self.root)
                .into_iter()
                .filter(|pid| !self.processes.contains(pid))
                .collect();
            if new.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!("server processes {new:?} began during the read and still run");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        process::tree_cpu(self.root).saturating_sub(self.used)
    }
}

/// A read of the whole folder: how long it took, and the CPU time each side used for it.
/// Mailbridge's is this process's (parsing, compressing, hashing, the database writer; SQLite
/// runs inside it, PostgreSQL's server does not); the server's is Dovecot's processes'; the
/// database's is PostgreSQL's server's (all its processes: the store's connections, and its
/// writer, checkpointer and the others, which work for the sync too), zero for a server not
/// started here (`MAILBRIDGE_TEST_POSTGRES_URL`: said once at the start).
struct Read {
    took: Duration,
    cpu: Duration,
    server_cpu: Duration,
    database_cpu: Duration,
}

/// The sync's parse and store stages each on their own, for the corpus: how long one thread
/// takes to compress, hash and parse every message in one go (the parse stage's work, which
/// the sync does a batch at a time on one blocking thread), and how long the store takes to
/// commit them into a new SQLite database (`work`'s `mailbridge.db`), and into a new
/// PostgreSQL database, in the batches the sync makes of them (the store stage's work without
/// its tracking-rule check, trivial under `all`: one writer, nothing else running). The sync
/// overlaps these with the fetch, so it cannot end before the slowest of the three. Returns
/// the batches' sizes too.
async fn stages_alone(dovecot: &Dovecot, work: &Path, messages: &[Vec<u8>]) -> StagesAlone {
    // The sync's downloads of these messages: it looks up the sizes above `small` (the
    // server's, which counts each line's end as CRLF) and counts the others as that large.
    let batching = Batching {
        first: FIRST_BATCH,
        count: BATCH_SIZE,
        bytes: BATCH_BYTES,
        max_message: DEFAULT_MAX_MESSAGE_BYTES as u64,
    };
    let uids: Vec<u32> = (1..=u32::try_from(messages.len()).unwrap()).collect();
    let sizes: HashMap<u32, u64> = uids
        .iter()
        .zip(messages)
        .map(|(uid, m)| {
            let bare_lf = m
                .iter()
                .enumerate()
                .filter(|&(i, &b)| b == b'\n' && (i == 0 || m[i - 1] != b'\r'))
                .count();
            (*uid, (m.len() + bare_lf) as u64)
        })
        .filter(|(_, size)| *size > batching.small())
        .collect();
    let batches: Vec<usize> = plan_downloads(&uids, &sizes, batching)
        .iter()
        .map(|d| match d {
            Download::Whole(uids) => uids.len(),
            Download::Header(_) => 1,
        })
        .collect();
    let messages = messages.to_vec();
    let started = Instant::now();
    let emails: Vec<NewEmail> = messages
        .into_iter()
        .zip(1..)
        .map(|(m, uid)| {
            let raw = RawMessage::new(m);
            NewEmail {
                remote_key: format!("imap/INBOX/1/{uid}"),
                renumbered_from: Some(("imap/INBOX/".into(), "imap/INBOX/1/".into())),
                folder: Some("INBOX".into()),
                uid: Some(uid),
                flags: Some(MessageFlags::from_imap(&["\\Seen"])),
                sent_by_owner: false,
                gmail_labels: Vec::new(),
                gmail_thread_id: None,
                tracking_token: None,
                truncated_from: None,
                parsed: mailbridge_core::parse::parse(raw.bytes()),
                raw,
            }
        })
        .collect();
    let parse = started.elapsed();
    let postgres = store_alone(
        dovecot,
        &work.join("postgres"),
        TestDatabase::Postgres,
        emails.clone(),
        &batches,
    )
    .await;
    let sqlite = store_alone(dovecot, work, TestDatabase::Sqlite, emails, &batches).await;
    StagesAlone {
        parse,
        sqlite,
        postgres,
        batches,
    }
}

/// What [`stages_alone`] measured.
struct StagesAlone {
    parse: Duration,
    sqlite: Duration,
    postgres: Duration,
    batches: Vec<usize>,
}

/// How long the store takes to commit `emails` into a new `database` in `batches`.
async fn store_alone(
    dovecot: &Dovecot,
    work: &Path,
    database: TestDatabase,
    emails: Vec<NewEmail>,
    batches: &[usize],
) -> Duration {
    let (store, mailbox) = dovecot
        .new_store_with_mailbox(work, database, USER, PASSWORD)
        .await
        .unwrap();
    settle();
    let started = Instant::now();
    let mut emails = emails.into_iter();
    let mut last_uid = 0;
    for &size in batches {
        let batch: Vec<NewEmail> = emails.by_ref().take(size).collect();
        last_uid += u32::try_from(batch.len()).unwrap();
        let position = FolderPosition {
            folder: "INBOX".into(),
            uid_validity: 1,
            last_uid,
            highest_modseq: None,
            messages: None,
        };
        let batch = SyncBatch {
            emails: batch,
            position: Some(position),
            ..SyncBatch::default()
        };
        store.save_sync_batch(mailbox.id, batch).await.unwrap();
    }
    let stored = started.elapsed();
    store.close().await;
    stored
}

/// What the store's multi-row INSERTs of a sync cost through each driver: the rows
/// [`stages_alone`] stored (`source`), written again into new databases of the same tables and
/// indexes, in its batches (a transaction each), with the store's statements (its columns and
/// tails, 250 rows or the next power of two padded with NULL rows, its writer's connection
/// settings) — through sqlx's `Any` driver as the store binds them (texts cloned, raw bytes
/// moved in), and through SQLite's C API (rusqlite; bound from the rows in place, as a writer
/// owning its batch could). The statements' texts are made before, the `RETURNING` ids read
/// as text by both; the drivers take turns going first (`round`). Returns each one's CPU (the
/// process's threads', to the nanosecond), the rest of a batch (lookups, counters, position)
/// left out.
fn inserts_by_driver(
    runtime: &tokio::runtime::Runtime,
    source: &Path,
    batches: &[usize],
    work: &Path,
    round: usize,
) -> (Duration, Duration) {
    use rusqlite::types::Value;
    let (settings, inserts) = mailbridge_store::sqlite_batch_inserts();
    let db = rusqlite::Connection::open(source).unwrap();
    let mailbox: String = db
        .query_row("SELECT id FROM mailboxes", [], |r| r.get(0))
        .unwrap();
    // The writer's settings; the mailbox the rows belong to (their foreign keys are checked,
    // as in the store); the three tables and their indexes as the store made them.
    let mut schema = format!(
        "{settings} CREATE TABLE mailboxes (id TEXT PRIMARY KEY NOT NULL); \
         INSERT INTO mailboxes VALUES ('{mailbox}');"
    );
    // Each table's rows in the order they were stored, and its statement by padded length.
    let mut tables = Vec::new();
    for (into, statements) in inserts {
        let (table, columns) = into.split_once(" (").unwrap();
        let columns = columns.trim_end_matches(')');
        let mut ddl = db
            .prepare(
                "SELECT sql FROM sqlite_master WHERE tbl_name = ?1 AND sql IS NOT NULL \
                 ORDER BY type DESC",
            )
            .unwrap();
        for sql in ddl.query_map([table], |r| r.get::<_, String>(0)).unwrap() {
            schema.push_str(&sql.unwrap());
            schema.push(';');
        }
        let width = columns.split(',').count();
        let order = if table == "events" { "seq" } else { "rowid" };
        let rows: Vec<Vec<Value>> = db
            .prepare(&format!("SELECT {columns} FROM {table} ORDER BY {order}"))
            .unwrap()
            .query_map([], |r| (0..width).map(|i| r.get(i)).collect())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let statements: HashMap<usize, &str> = statements.into_iter().collect();
        tables.push((width, rows, statements));
    }
    // A batch's rows of each table: its emails, their attachments (stored after their email,
    // in its batch), its events (one an email).
    let mut batch_rows: Vec<[std::ops::Range<usize>; 3]> = Vec::new();
    let (mut emails, mut attachments) = (0, 0);
    for &size in batches {
        let (ids, all) = (&tables[0].1[emails..emails + size], &tables[1].1);
        let mut end = attachments;
        while end < all.len() && ids.iter().any(|e| e[0] == all[end][1]) {
            end += 1;
        }
        let events = emails..emails + size;
        batch_rows.push([events.clone(), attachments..end, events]);
        (emails, attachments) = (emails + size, end);
    }
    assert_eq!(
        attachments,
        tables[1].1.len(),
        "every attachment in a batch"
    );
    let padded = |rows: usize| rows.next_power_of_two().min(ROWS_PER_INSERT);
    let fresh = |name: &str| {
        let dir = work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("t.db")
    };

    let through_any = || {
        // The store's values are its own, texts cloned into the query, raw bytes moved.
        let mut owned: Vec<Vec<Vec<Value>>> = tables.iter().map(|t| t.1.clone()).collect();
        let path = fresh("any");
        runtime.block_on(async {
            use sqlx::{Connection, Executor};
            let url = format!("sqlite://{}?mode=rwc", path.display());
            let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
            c.execute(sqlx::AssertSqlSafe(schema.clone()))
                .await
                .unwrap();
            settle();
            let cpu = process::own_cpu();
            for ranges in &batch_rows {
                c.execute("BEGIN IMMEDIATE").await.unwrap();
                for ((width, _, statements), (rows, range)) in
                    tables.iter().zip(owned.iter_mut().zip(ranges))
                {
                    for chunk in rows[range.clone()].chunks_mut(ROWS_PER_INSERT) {
                        let n = padded(chunk.len());
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(statements[&n]));
                        for k in 0..n {
                            for i in 0..*width {
                                q = match chunk.get_mut(k).map(|row| &mut row[i]) {
                                    Some(Value::Text(s)) => q.bind(Some(s.clone())),
                                    Some(Value::Blob(b)) => q.bind(Some(std::mem::take(b))),
                                    Some(Value::Integer(n)) => q.bind(Some(*n)),
                                    Some(Value::Real(x)) => q.bind(Some(*x)),
                                    Some(Value::Null) | None => q.bind(None::<String>),
                                };
                            }
                        }
                        for row in q.fetch_all(&mut c).await.unwrap() {
                            std::hint::black_box(sqlx::Row::get::<String, _>(&row, 0));
                        }
                    }
                }
                c.execute("COMMIT").await.unwrap();
            }
            let cpu = process::own_cpu() - cpu;
            c.close().await.unwrap();
            cpu
        })
    };
    let through_c_api = || {
        let mut c = rusqlite::Connection::open(fresh("native")).unwrap();
        c.execute_batch(&schema).unwrap();
        c.set_prepared_statement_cache_capacity(64); // every statement stays prepared
        settle();
        let cpu = process::own_cpu();
        for ranges in &batch_rows {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            for ((width, rows, statements), range) in tables.iter().zip(ranges) {
                for chunk in rows[range.clone()].chunks(ROWS_PER_INSERT) {
                    let n = padded(chunk.len());
                    let mut q = tx.prepare_cached(statements[&n]).unwrap();
                    let mut at = 1;
                    for k in 0..n {
                        for i in 0..*width {
                            match chunk.get(k) {
                                Some(row) => q.raw_bind_parameter(at, &row[i]).unwrap(),
                                None => q.raw_bind_parameter(at, rusqlite::types::Null).unwrap(),
                            }
                            at += 1;
                        }
                    }
                    let mut returned = q.raw_query();
                    while let Some(row) = returned.next().unwrap() {
                        std::hint::black_box(row.get::<_, String>(0).unwrap());
                    }
                }
            }
            tx.commit().unwrap();
        }
        process::own_cpu() - cpu
    };
    if round.is_multiple_of(2) {
        let any = through_any();
        (any, through_c_api())
    } else {
        let native = through_c_api();
        (through_any(), native)
    }
}

/// Mailbridge's first sync into `database`, and the bytes the database then takes on disk
/// (after a clean close).
async fn mailbridge(
    dovecot: &Dovecot,
    work: &Path,
    database: TestDatabase,
    expected: usize,
) -> (Read, u64) {
    let (store, mailbox) = dovecot
        .new_store_with_mailbox(work, database, USER, PASSWORD)
        .await
        .unwrap();
    let login = dovecot.imap_login_parts(USER, PASSWORD).unwrap();
    settle();
    // On the runtime's workers, as the service runs a mailbox's sync (not in `block_on`).
    let sync = {
        let store = store.clone();
        async move {
            let (started, cpu) = (Instant::now(), cpu_used());
            let mut session = login.login().await.unwrap();
            let report = sync_inbox(&store, &mut session, &mailbox, None, None)
                .await
                .unwrap();
            let (took, cpu) = (started.elapsed(), cpu_used() - cpu);
            (took, cpu, report, session)
        }
    };
    let postgres = (database == TestDatabase::Postgres)
        .then(|| Postgres::shared().unwrap().server_pid())
        .flatten()
        .map(ServerCpu::now);
    let server = ServerCpu::now(dovecot.pid());
    let (took, cpu, report, session) = tokio::spawn(sync).await.unwrap();
    assert_eq!(report.stored, expected);
    session.logout().await;
    let server_cpu = server.since();
    store.close().await;
    let sync = Read {
        took,
        cpu,
        server_cpu,
        database_cpu: postgres.map_or(Duration::ZERO, |p| p.since()),
    };
    (sync, database.bytes_on_disk(work).await.unwrap())
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // A larger mailbox: the corpus `BENCH_COPIES` times, each copy's ids its own.
    let copies: usize = std::env::var("BENCH_COPIES")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    let corpus = corpus::spam_assassin(usize::MAX).unwrap();
    let messages: Vec<Vec<u8>> = (0..copies)
        .flat_map(|k| corpus::copy_of(&corpus, k))
        .collect();
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let provider = OAuthProvider::start().unwrap();
    let dovecot = Dovecot::start(&provider, &[(USER, PASSWORD)]).unwrap();
    for m in &messages {
        dovecot.deliver(USER, m).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, dovecot.ca_pem()).unwrap();
    let port = dovecot.ports.imaps;
    let n = messages.len();
    println!(
        "corpus: {n} messages ({copies} {}), {:.1} MB, one INBOX; {rounds} rounds",
        if copies == 1 { "copy" } else { "copies" },
        bytes as f64 / 1e6
    );
    // Dovecot indexes the folder on first access; every contender then reads a warm server.
    raw_fetch(&dovecot, &ca, n);

    let durable = std::env::var_os("MAILBRIDGE_TEST_POSTGRES_DURABLE").is_some();
    println!(
        "PostgreSQL: fsync {} (bench/first-sync sets MAILBRIDGE_TEST_POSTGRES_DURABLE)",
        if durable { "on" } else { "OFF: not comparable" }
    );
    if Postgres::shared().unwrap().server_pid().is_none() {
        println!("PostgreSQL's server was not started here: its CPU is not measured (shown as 0)");
    }
    let (mut raw, mut mbs_nofsync, mut mbs_default, mut ours, mut ours_pg) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut disk, mut disk_pg) = (Vec::new(), Vec::new());
    let (mut parse_alone, mut store_alone, mut store_alone_pg) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut inserts_any, mut inserts_native) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        raw.push(raw_fetch(&dovecot, &ca, n));
        mbs_nofsync.push(mbsync(port, &ca, &work.path().join("mbsync"), false));
        mbs_default.push(mbsync(port, &ca, &work.path().join("mbsync"), true));
        for (database, syncs, sizes) in [
            (TestDatabase::Sqlite, &mut ours, &mut disk),
            (TestDatabase::Postgres, &mut ours_pg, &mut disk_pg),
        ] {
            let (sync, size) = runtime.block_on(mailbridge(
                &dovecot,
                &work.path().join("mailbridge"),
                database,
                n,
            ));
            syncs.push(sync);
            sizes.push(size);
        }
        let stages = work.path().join("stages");
        let alone = runtime.block_on(stages_alone(&dovecot, &stages, &messages));
        let (any, native) = inserts_by_driver(
            &runtime,
            &stages.join("mailbridge.db"),
            &alone.batches,
            &work.path().join("drivers"),
            round,
        );
        if round == 1 {
            println!("the sync's batches of the mailbox: {:?}", alone.batches);
        }
        parse_alone.push(alone.parse);
        store_alone.push(alone.sqlite);
        store_alone_pg.push(alone.postgres);
        inserts_any.push(any);
        inserts_native.push(native);
        let (r, o, p) = (&raw[round - 1], &ours[round - 1], &ours_pg[round - 1]);
        println!(
            "round {round}: raw fetch {:.2} s | mbsync (FSync no) {:.2} s | mbsync (defaults) {:.2} s | mailbridge {:.2} s | on PostgreSQL {:.2} s",
            r.took.as_secs_f64(),
            mbs_nofsync[round - 1].as_secs_f64(),
            mbs_default[round - 1].as_secs_f64(),
            o.took.as_secs_f64(),
            p.took.as_secs_f64()
        );
        println!(
            "         CPU: Dovecot for the raw fetch {:.2} s | mailbridge {:.2} s + Dovecot {:.2} s | on PostgreSQL {:.2} s + Dovecot {:.2} s + PostgreSQL's server {:.2} s",
            r.server_cpu.as_secs_f64(),
            o.cpu.as_secs_f64(),
            o.server_cpu.as_secs_f64(),
            p.cpu.as_secs_f64(),
            p.server_cpu.as_secs_f64(),
            p.database_cpu.as_secs_f64()
        );
        println!(
            "         stages alone: parse {:.2} s | store into SQLite {:.2} s, into PostgreSQL {:.2} s | SQLite's INSERTs' CPU through sqlx's Any {:.3} s, through SQLite's C API {:.3} s",
            alone.parse.as_secs_f64(),
            alone.sqlite.as_secs_f64(),
            alone.postgres.as_secs_f64(),
            any.as_secs_f64(),
            native.as_secs_f64()
        );
    }
    let (vs_raw, pg_vs_sqlite) = (per_round(&raw, &ours), per_round(&ours, &ours_pg));
    let of = |syncs: &[Read], f: fn(&Read) -> Duration| median(syncs.iter().map(f).collect());
    let took = |s: &Read| s.took;
    let (raw_cpu, cpu, cpu_pg) = (
        of(&raw, |s| s.server_cpu),
        of(&ours, |s| s.cpu + s.server_cpu),
        of(&ours_pg, |s| s.cpu + s.server_cpu + s.database_cpu),
    );
    let (raw, mbs, mbs_default, ours, ours_pg) = (
        of(&raw, took),
        median(mbs_nofsync),
        median(mbs_default),
        of(&ours, took),
        of(&ours_pg, took),
    );
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("\nmedians over {rounds} rounds:");
    println!(
        "  raw UID FETCH 1:* BODY.PEEK[]  {:>6.2} s  {:>7.0} msg/s  (Dovecot's CPU {:.2} s)",
        raw.as_secs_f64(),
        rate(raw),
        raw_cpu.as_secs_f64()
    );
    println!(
        "  mbsync, FSync no               {:>6.2} s  {:>7.0} msg/s",
        mbs.as_secs_f64(),
        rate(mbs)
    );
    println!(
        "  mbsync, defaults               {:>6.2} s  {:>7.0} msg/s",
        mbs_default.as_secs_f64(),
        rate(mbs_default)
    );
    println!(
        "  mailbridge first sync          {:>6.2} s  {:>7.0} msg/s  (parsed, stored in SQLite; CPU {:.2} s with Dovecot's)",
        ours.as_secs_f64(),
        rate(ours),
        cpu.as_secs_f64()
    );
    println!(
        "  mailbridge on PostgreSQL       {:>6.2} s  {:>7.0} msg/s  (parsed, stored in PostgreSQL; CPU {:.2} s with Dovecot's and the server's)",
        ours_pg.as_secs_f64(),
        rate(ours_pg),
        cpu_pg.as_secs_f64()
    );
    let (parse_alone, store_alone, store_alone_pg) = (
        median(parse_alone),
        median(store_alone),
        median(store_alone_pg),
    );
    println!(
        "  the sync's stages alone: parse {:.2} s, store into SQLite {:.2} s — the sync overlaps them with the fetch, so the store alone is {:.2} of the raw fetch's rate at most",
        parse_alone.as_secs_f64(),
        store_alone.as_secs_f64(),
        raw.as_secs_f64() / store_alone.as_secs_f64()
    );
    println!(
        "  the store stage alone into PostgreSQL {:.2} s ({:.2} of the SQLite sync's rate at most)",
        store_alone_pg.as_secs_f64(),
        ours.as_secs_f64() / store_alone_pg.as_secs_f64()
    );
    let (inserts_any, inserts_native) = (median(inserts_any), median(inserts_native));
    println!(
        "  a sync's multi-row INSERTs alone (emails, attachments, events; CPU): through sqlx's Any driver {:.3} s, through SQLite's C API (rusqlite) {:.3} s — {:.2} of it",
        inserts_any.as_secs_f64(),
        inserts_native.as_secs_f64(),
        inserts_native.as_secs_f64() / inserts_any.as_secs_f64()
    );
    // With every core busy a sync cannot end before its CPU time spread over all of them.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "  CPU floor (SQLite sync): mailbridge and Dovecot's CPU over {cores} cores = {:.2} s, {:.2} of the raw fetch's rate at most",
        cpu.as_secs_f64() / cores as f64,
        raw.as_secs_f64() / (cpu.as_secs_f64() / cores as f64)
    );
    println!(
        "  CPU floor (PostgreSQL sync): mailbridge, Dovecot and the server's CPU over {cores} cores = {:.2} s, {:.2} of the SQLite sync's rate at most",
        cpu_pg.as_secs_f64() / cores as f64,
        ours.as_secs_f64() / (cpu_pg.as_secs_f64() / cores as f64)
    );
    println!("\nratios:");
    println!(
        "  mailbridge time / mbsync (FSync no) time = {:.2}  (target <= 0.30)",
        ours.as_secs_f64() / mbs.as_secs_f64()
    );
    println!(
        "  mailbridge rate / raw fetch rate         = {:.2}  (target >= 0.60; the scale issue's >= 0.85)\n      {vs_raw}",
        rate(ours) / rate(raw)
    );
    println!(
        "  PostgreSQL rate / SQLite rate            = {:.2}  (target >= 0.70)\n      {pg_vs_sqlite}",
        rate(ours_pg) / rate(ours)
    );
    // Sizes barely move between rounds; the median all the same.
    let on_disk = |mut sizes: Vec<u64>| {
        sizes.sort_unstable();
        sizes[sizes.len() / 2] as f64
    };
    println!(
        "\nstorage after the first sync ({:.1} MB of raw messages):",
        bytes as f64 / 1e6
    );
    for (name, size) in [
        ("SQLite file (clean close)           ", on_disk(disk)),
        ("PostgreSQL tables, indexes and TOAST", on_disk(disk_pg)),
    ] {
        println!(
            "  {name} {:>6.1} MB  {:>6.0} bytes/message  {:.2} x raw  (target <= 1.30)",
            size / 1e6,
            size / n as f64,
            size / bytes as f64
        );
    }
}
