//! SQLite: sync batches written through SQLite's C API (rusqlite) on a connection of their
//! own, a whole batch on one blocking thread. Through sqlx's `Any` driver each bound value is
//! copied twice more on its way (its `Option` encoding, its conversion to SQLite's arguments)
//! and each of a batch's dozen statements is handed to the connection's thread and back: a
//! batch's multi-row INSERTs took 0.184 s of CPU a first sync of the benchmark's corpus that
//! way, 0.095 s through the C API (`bench/first-sync`; the README's Benchmark). Every other
//! write keeps the pool's writer; both take turns at the process's write gate, and SQLite's
//! own lock (with the writer's `busy_timeout`) keeps any other process out as before.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;

use crate::sql::{Arg, Columns, SqlConn, Stmt};
use crate::{Result, StoreError};

/// The thread sync batches are written on, with its connection. One thread, like sqlx's
/// worker before it: SQLite's allocations stay in one of the allocator's arenas (batches on
/// the runtime's blocking threads spread them over several, and 10,000 idle mailboxes took
/// 0.7 KiB more each).
pub(crate) struct NativeWriter {
    jobs: std::sync::mpsc::Sender<Job>,
    /// Its thread, joined when the writer is dropped (see [`Drop`]).
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Work for the writer's thread.
type Job = Box<dyn FnOnce(&mut Slot) + Send>;

/// The writer thread's state: its connection, opened the first time a batch needs it and
/// again after one was left unusable (a transaction it could not end).
pub(crate) struct Slot {
    path: PathBuf,
    /// What the connection runs when it opens: the pool writer's settings.
    settings: String,
    conn: Option<rusqlite::Connection>,
    /// [`NativeWriter::close`] was called: no batch is written any more.
    closed: bool,
}

impl NativeWriter {
    /// For the database file at `path` (which must exist: the store's pool made it), its
    /// connection set up with `settings`; starts its thread.
    pub(crate) fn new(path: PathBuf, settings: String) -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let mut slot = Slot {
            path,
            settings,
            conn: None,
            closed: false,
        };
        let thread = std::thread::Builder::new()
            .name("sqlite-batches".into())
            .spawn(move || {
                for job in queue {
                    job(&mut slot);
                }
            })?;
        Ok(Self {
            jobs,
            thread: Some(thread),
        })
    }

    /// Runs `job` on the writer's thread and returns what it returns; a panic in it goes on
    /// here (the thread lives on).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Slot) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |slot| {
            let _ = done.send(catch_unwind(AssertUnwindSafe(|| job(slot))));
        });
        let gone = || StoreError::Unavailable {
            source: sqlx::Error::WorkerCrashed,
        };
        self.jobs.send(job).map_err(|_| gone())?;
        match outcome.await.map_err(|_| gone())? {
            Ok(result) => result,
            Err(panic) => resume_unwind(panic),
        }
    }

    /// Closes its connection; batches are refused from now on (as the pools refuse them).
    pub(crate) async fn close(&self) {
        let _ = self
            .run(|slot| {
                slot.closed = true;
                if let Some(conn) = slot.conn.take() {
                    let _ = conn.close(); // closing is all that is left to do with it
                }
                Ok(())
            })
            .await;
    }
}

/// The queue is closed and the thread joined, after the jobs queued before: a batch being
/// written when the store goes (`mailbridge serve` returning without [`NativeWriter::close`],
/// on an error) is committed or rolled back by its own thread, not cut off by the process's
/// exit — as a batch on the runtime's blocking threads was, which dropping the runtime waits
/// for.
impl Drop for NativeWriter {
    fn drop(&mut self) {
        let (closed, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, closed)); // the thread's loop ends
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join(); // a job's panic went to its caller already
        }
    }
}

impl Slot {
    /// Runs `write` in a transaction (`BEGIN IMMEDIATE`) and commits it; rolled back if
    /// `write` or the commit fails, or `write` panics (the panic then goes on).
    pub(crate) fn transaction<T>(
        &mut self,
        write: impl FnOnce(&mut NativeTx<'_>) -> Result<T>,
    ) -> Result<T> {
        if self.closed {
            return Err(StoreError::Unavailable {
                source: sqlx::Error::PoolClosed,
            });
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            empty => empty.insert(open(&self.path, &self.settings)?),
        };
        let written = match conn.execute_batch("BEGIN IMMEDIATE") {
            Err(e) => Err(StoreError::from(e)),
            Ok(()) => match catch_unwind(AssertUnwindSafe(|| write(&mut NativeTx(conn)))) {
                Ok(written) => written,
                Err(panic) => {
                    // Closing the connection rolls its transaction back and lets go of
                    // SQLite's lock; the next batch opens another.
                    self.conn = None;
                    resume_unwind(panic);
                }
            },
        };
        let done = written.and_then(|value| {
            conn.execute_batch("COMMIT")?;
            Ok(value)
        });
        // A failed statement leaves the transaction open; a failed COMMIT may too (the disk
        // full). Rolled back — or, if even that fails, the connection is closed and the next
        // batch opens another: one stuck in a transaction would fail every later batch, and
        // hold SQLite's lock against every other writer, long after the cause was gone.
        if done.is_err()
            && !conn.is_autocommit()
            && (conn.execute_batch("ROLLBACK").is_err() || !conn.is_autocommit())
        {
            self.conn = None;
        }
        done
    }
}

/// The writer's connection: read-write, never creating the file (a database gone from under
/// the store is an error, not a new empty one).
fn open(path: &std::path::Path, settings: &str) -> Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(settings)?;
    // Every statement a batch runs stays prepared: nine lengths of three INSERTs, the
    // lookups' seven sizes, the rest (sqlx keeps 100 a connection too).
    conn.set_prepared_statement_cache_capacity(100);
    Ok(conn)
}

/// The writer's connection in a transaction, running [`Stmt`]s at once (the futures it
/// returns are ready).
pub(crate) struct NativeTx<'c>(&'c rusqlite::Connection);

impl NativeTx<'_> {
    /// `stmt` prepared (kept prepared) and bound: a `$n` parameter takes the n-th argument,
    /// a bare `?` the one of its place ([`Stmt`]: a statement uses one kind or the other).
    fn run<T>(
        &self,
        stmt: &Stmt,
        read: impl FnOnce(&mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut prepared = self.0.prepare_cached(stmt.sql())?;
        let args = stmt.args();
        let (mut numbered, mut most) = (0, 0);
        for place in 1..=prepared.parameter_count() {
            let number = prepared
                .parameter_name(place)
                .and_then(|name| name.get(1..))
                .and_then(|n| n.parse::<usize>().ok());
            numbered += usize::from(number.is_some());
            let n = number.unwrap_or(place);
            most = most.max(n);
            match args.get(n.wrapping_sub(1)) {
                Some(Arg::Null(_)) | None => {
                    prepared.raw_bind_parameter(place, rusqlite::types::Null)?
                }
                Some(Arg::Int(v)) => prepared.raw_bind_parameter(place, v)?,
                Some(Arg::Text(v)) => prepared.raw_bind_parameter(place, v.as_str())?,
                Some(Arg::Blob(v)) => prepared.raw_bind_parameter(place, v.as_slice())?,
                Some(Arg::Array(_)) => {
                    unreachable!("arrays are bound by PostgreSQL's driver alone")
                }
            }
        }
        debug_assert!(
            numbered == 0 || numbered == prepared.parameter_count(),
            "numbered and bare parameters mixed: {}",
            stmt.sql()
        );
        debug_assert_eq!(most, args.len(), "arguments for {}", stmt.sql());
        Ok(read(&mut prepared)?)
    }

    fn rows<R: Columns>(&self, stmt: &Stmt, most: usize) -> Result<Vec<R>> {
        self.run(stmt, |prepared| {
            let mut rows = prepared.raw_query();
            let mut out = Vec::new();
            while out.len() < most {
                let Some(row) = rows.next()? else { break };
                out.push(R::from_sqlite(row)?);
            }
            Ok(out)
        })
    }
}

impl SqlConn for NativeTx<'_> {
    fn execute(&mut self, stmt: Stmt) -> impl Future<Output = Result<u64>> + Send {
        let changed = self.run(&stmt, |prepared| prepared.raw_execute());
        std::future::ready(changed.map(|n| n as u64))
    }

    fn fetch_all<R: Columns + Send>(
        &mut self,
        stmt: Stmt,
    ) -> impl Future<Output = Result<Vec<R>>> + Send {
        std::future::ready(self.rows(&stmt, usize::MAX))
    }

    fn fetch_optional<R: Columns + Send>(
        &mut self,
        stmt: Stmt,
    ) -> impl Future<Output = Result<Option<R>>> + Send {
        std::future::ready(self.rows(&stmt, 1).map(|rows| rows.into_iter().next()))
    }
}

/// A failure of SQLite's C API, as sqlx reports a database's: its code is SQLite's extended
/// result code, so [`StoreError`]'s sorting (a full disk, SQLITE_FULL: 13) holds for both.
#[derive(Debug)]
struct NativeError {
    message: String,
    code: Option<i32>,
    error: rusqlite::Error,
}

impl std::fmt::Display for NativeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "(code: {code}) {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for NativeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl sqlx::error::DatabaseError for NativeError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.code.map(|c| c.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        match self.error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => match self.code {
                Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
                | Some(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                    sqlx::error::ErrorKind::UniqueViolation
                }
                Some(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => {
                    sqlx::error::ErrorKind::ForeignKeyViolation
                }
                Some(rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL) => {
                    sqlx::error::ErrorKind::NotNullViolation
                }
                Some(rusqlite::ffi::SQLITE_CONSTRAINT_CHECK) => {
                    sqlx::error::ErrorKind::CheckViolation
                }
                _ => sqlx::error::ErrorKind::Other,
            },
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        let code = match &error {
            rusqlite::Error::SqliteFailure(failure, _) => Some(failure.extended_code),
            _ => None,
        };
        StoreError::from(sqlx::Error::Database(Box::new(NativeError {
            message: error.to_string(),
            code,
            error,
        })))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sqlite_settings;

    /// A writer on a new database file holding `t (a, b, c, d)`, and the file's path.
    fn writer_of_t(dir: &std::path::Path, extra: &str) -> (NativeWriter, PathBuf) {
        let path = dir.join("t.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c BLOB, d TEXT)")
            .unwrap();
        let writer = NativeWriter::new(path.clone(), sqlite_settings(extra)).unwrap();
        (writer, path)
    }

    /// `write` in a transaction on `writer`'s thread.
    async fn in_transaction<T: Send + 'static>(
        writer: &NativeWriter,
        write: impl FnOnce(&mut NativeTx<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        writer.run(move |slot| slot.transaction(write)).await
    }

    type Row = (i64, Option<String>, Vec<u8>, String);

    fn rows(tx: &mut NativeTx<'_>) -> Result<Vec<Row>> {
        ready(tx.fetch_all::<Row>(Stmt::new("SELECT a, b, c, d FROM t ORDER BY a")))
    }

    /// A writer on `dir`'s `t`, the file's path, and a batch on it that inserts `(1, 'late')`
    /// slowly (300 ms), its caller a task of its own — returned once the batch has begun.
    async fn writing_slowly(
        dir: &std::path::Path,
    ) -> (
        std::sync::Arc<NativeWriter>,
        PathBuf,
        tokio::task::JoinHandle<Result<u64>>,
    ) {
        let (writer, path) = writer_of_t(dir, "");
        let writer = std::sync::Arc::new(writer);
        let (started, running) = tokio::sync::oneshot::channel();
        let caller = tokio::spawn({
            let writer = std::sync::Arc::clone(&writer);
            async move {
                writer
                    .run(move |slot| {
                        slot.transaction(move |tx| {
                            let _ = started.send(());
                            std::thread::sleep(std::time::Duration::from_millis(300));
                            ready(tx.execute(Stmt::new("INSERT INTO t (a, d) VALUES (1, 'late')")))
                        })
                    })
                    .await
            }
        });
        running.await.unwrap();
        (writer, path, caller)
    }

    /// How many rows the slow batch stored, read on a connection of the test's own.
    fn late_rows(path: &std::path::Path) -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM t WHERE d = 'late'", [], |r| r.get(0))
            .unwrap()
    }

    /// Dropped with a batch still being written, the writer waits for it: its thread finishes
    /// the jobs queued before it goes.
    #[tokio::test]
    async fn a_dropped_writer_finishes_the_batch_it_was_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path, caller) = writing_slowly(dir.path()).await;
        // Its caller gone once the batch runs, then the writer (the last of it).
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        drop(writer);
        assert_eq!(
            late_rows(&path),
            1,
            "the batch was committed before the writer was gone"
        );
    }

    /// A sync batch whose caller is gone keeps the process's turn to write until its
    /// transaction has ended: no other write of the store begins before the batch is
    /// committed (it would otherwise wait on SQLite's lock, or read the batch half done).
    #[tokio::test]
    async fn a_batch_whose_caller_is_gone_keeps_the_turn_until_it_has_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::tests::fresh_sqlite(dir.path()).await;
        let mailbox: mailbridge_core::MailboxId =
            crate::tests::old_mailbox(&store).await.parse().unwrap();
        let native = std::sync::Arc::clone(store.native.as_ref().unwrap());
        // The writer's thread kept busy, so the batch's job waits in its queue.
        let (busy, kept_busy) = tokio::sync::oneshot::channel();
        let blocker = tokio::spawn(async move {
            native
                .run(move |_| {
                    let _ = busy.send(());
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    Ok(())
                })
                .await
        });
        kept_busy.await.unwrap();
        let raw = b"Message-ID: <gone@example.com>\r\nSubject: gone\r\n\r\nhi\r\n";
        let batch = crate::emails::SyncBatch {
            emails: vec![crate::tests::inbox_email(raw)],
            ..Default::default()
        };
        let saving = tokio::spawn({
            let store = store.clone();
            async move { store.save_sync_batch(mailbox, batch).await }
        });
        // It takes the turn and queues its job; then its caller is gone.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        saving.abort();
        assert!(saving.await.unwrap_err().is_cancelled());
        let mut tx = store.begin_write().await.unwrap();
        let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM emails")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(
            stored, 1,
            "the batch was committed before the next write began"
        );
        drop(tx);
        blocker.await.unwrap().unwrap();
        store.close().await;
    }

    /// `close` (a node stopping) waits behind the batch being written: it is committed, then
    /// the connection closes, and the next batch is refused.
    #[tokio::test]
    async fn close_waits_for_the_batch_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path, caller) = writing_slowly(dir.path()).await;
        writer.close().await;
        assert_eq!(late_rows(&path), 1, "committed before the close");
        assert_eq!(caller.await.unwrap().unwrap(), 1);
        assert!(
            in_transaction(&writer, rows).await.is_err(),
            "refused after"
        );
    }

    /// `$n` take the n-th argument wherever they stand (SQLite numbers parameters in the
    /// order they first appear), bare `?`s those of their places; NULLs and each type arrive
    /// as bound; a failed statement rolls its transaction back.
    #[tokio::test]
    async fn parameters_take_their_arguments_and_a_failure_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = writer_of_t(dir.path(), "");
        let stored = in_transaction(&writer, |tx| {
            ready(
                tx.execute(
                    Stmt::new("INSERT INTO t (d, a, b, c) VALUES ($4, $1, $2, $3)")
                        .bind(7_i64)
                        .bind(None::<String>)
                        .bind(vec![1_u8, 2])
                        .bind("seven"),
                ),
            )?;
            ready(
                tx.execute(
                    Stmt::new("INSERT INTO t (d, a, b, c) VALUES (?, ?, ?, ?)")
                        .bind("eight")
                        .bind(8_i64)
                        .bind("b8")
                        .bind(vec![3_u8]),
                ),
            )?;
            rows(tx)
        })
        .await
        .unwrap();
        assert_eq!(
            stored,
            [
                (7, None, vec![1, 2], "seven".to_owned()),
                (8, Some("b8".to_owned()), vec![3], "eight".to_owned())
            ]
        );
        let failed = in_transaction(&writer, |tx| {
            ready(tx.execute(Stmt::new("DELETE FROM t")))?;
            ready(tx.execute(Stmt::new("INSERT INTO nowhere VALUES (1)")))
        })
        .await;
        assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
        assert_eq!(
            in_transaction(&writer, rows).await.unwrap().len(),
            2,
            "the DELETE was rolled back with the failed INSERT"
        );
    }

    /// SQLite out of room (here its page limit: SQLITE_FULL, as on a full disk) is a full
    /// disk to the store, the batch is rolled back, and the next one is written once there is
    /// room again.
    #[tokio::test]
    async fn a_full_database_is_a_full_disk_and_the_next_batch_is_written_when_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = writer_of_t(dir.path(), "PRAGMA max_page_count = 8;");
        let big = |a: i64| {
            Stmt::new("INSERT INTO t (a, b, c, d) VALUES ($1, NULL, $2, 'big')")
                .bind(a)
                .bind(vec![7_u8; 200_000])
        };
        let full = in_transaction(&writer, move |tx| ready(tx.execute(big(1)))).await;
        assert!(matches!(full, Err(StoreError::DiskFull { .. })), "{full:?}");
        let stored = in_transaction(&writer, move |tx| {
            tx.0.execute_batch("PRAGMA max_page_count = 100000")?;
            ready(tx.execute(big(2)))?;
            rows(tx)
        })
        .await
        .unwrap();
        assert_eq!(stored.iter().map(|r| r.0).collect::<Vec<_>>(), [2]);
    }

    /// A batch that panics is rolled back and lets go of SQLite's lock (another connection
    /// can write at once); the panic goes on to the caller; the next batch is written.
    #[tokio::test]
    async fn a_batch_that_panics_is_rolled_back_and_holds_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer_of_t(dir.path(), "");
        let writer = std::sync::Arc::new(writer);
        let panicking = std::sync::Arc::clone(&writer);
        let panicked = tokio::spawn(async move {
            in_transaction(&panicking, |tx| -> Result<()> {
                ready(tx.execute(Stmt::new("INSERT INTO t (a, d) VALUES (1, 'lost')")))?;
                panic!("a batch that panics");
            })
            .await
        })
        .await;
        let panic = panicked.unwrap_err().into_panic();
        assert_eq!(
            panic.downcast_ref::<&str>(),
            Some(&"a batch that panics"),
            "the batch's own panic went on"
        );
        let other = rusqlite::Connection::open(&path).unwrap();
        other.busy_timeout(std::time::Duration::ZERO).unwrap();
        other.execute_batch("BEGIN IMMEDIATE; ROLLBACK").unwrap();
        let stored = in_transaction(&writer, |tx| {
            ready(tx.execute(Stmt::new(
                "INSERT INTO t (a, c, d) VALUES (2, x'00', 'kept')",
            )))?;
            rows(tx)
        })
        .await
        .unwrap();
        assert_eq!(stored, [(2, None, vec![0], "kept".to_owned())]);
    }

    /// After `close`, batches are refused as the closed pools refuse them: the database is not
    /// answering, which is what the engine waits out.
    #[tokio::test]
    async fn a_closed_writer_refuses_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = writer_of_t(dir.path(), "");
        in_transaction(&writer, rows).await.unwrap();
        writer.close().await;
        let refused = in_transaction(&writer, rows).await;
        assert!(
            matches!(
                refused,
                Err(StoreError::Unavailable {
                    source: sqlx::Error::PoolClosed
                })
            ),
            "{refused:?}"
        );
    }

    /// A ready future's output.
    fn ready<T>(future: impl Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => panic!("a native statement's future was not ready"),
        }
    }
}
