//! SQLite: sync batches written through SQLite's C API (rusqlite) on a connection of their
//! own, a whole batch on one blocking thread. Through sqlx's `Any` driver each bound value is
//! copied twice more on its way (its `Option` encoding, its conversion to SQLite's arguments)
//! and each of a batch's dozen statements is handed to the connection's thread and back: a
//! batch's multi-row INSERTs took 0.184 s of CPU a first sync of the benchmark's corpus that
//! way, 0.095 s through the C API (`bench/first-sync`; the README's Benchmark). Every other
//! write keeps the pool's writer; both take turns at the process's write gate, and SQLite's
//! own lock (with the writer's `busy_timeout`) keeps any other process out as before.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use crate::sql::{Arg, Columns, SqlConn, Stmt};
use crate::{Result, StoreError};

/// The connection sync batches are written on, opened the first time one is, and again after
/// one was left unusable (a transaction it could not end).
pub(crate) struct NativeWriter {
    path: PathBuf,
    /// What the connection runs when it opens: the pool writer's settings.
    settings: String,
    conn: Mutex<Option<rusqlite::Connection>>,
}

impl NativeWriter {
    /// For the database file at `path`, its connection set up with `settings`.
    pub(crate) fn new(path: PathBuf, settings: String) -> Self {
        Self {
            path,
            settings,
            conn: Mutex::new(None),
        }
    }

    /// Runs `write` in a transaction (`BEGIN IMMEDIATE`) and commits it; rolled back if
    /// `write` or the commit fails. Blocks: call it from a blocking thread.
    pub(crate) fn in_transaction<T>(
        &self,
        write: impl FnOnce(&mut NativeTx<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = match &mut *slot {
            Some(conn) => conn,
            empty => empty.insert(self.open()?),
        };
        let done = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(StoreError::from)
            .and_then(|()| write(&mut NativeTx(conn)))
            .and_then(|value| {
                conn.execute_batch("COMMIT")?;
                Ok(value)
            });
        if done.is_err() && !conn.is_autocommit() {
            // A failed statement leaves the transaction open; a failed COMMIT may too (the
            // disk full). Rolled back — or, if even that fails, the connection is closed
            // and the next batch opens another: a connection stuck in a transaction would
            // fail every later batch, long after the cause was gone.
            if conn.execute_batch("ROLLBACK").is_err() || !conn.is_autocommit() {
                *slot = None;
            }
        }
        done
    }

    fn open(&self) -> Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(&self.path)?;
        conn.execute_batch(&self.settings)?;
        // Every statement a batch runs stays prepared: nine lengths of three INSERTs, the
        // lookups' seven sizes, the rest (sqlx keeps 100 a connection too).
        conn.set_prepared_statement_cache_capacity(100);
        Ok(conn)
    }

    /// Closes its connection (the next batch would open another).
    pub(crate) fn close(&self) {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(conn) = conn {
            let _ = conn.close(); // closing is all that is left to do with it
        }
    }
}

/// The writer's connection in a transaction, running [`Stmt`]s at once (the futures it
/// returns are ready).
pub(crate) struct NativeTx<'c>(&'c rusqlite::Connection);

impl NativeTx<'_> {
    /// `stmt` prepared (kept prepared) and bound: a `$n` or `?n` parameter takes the n-th
    /// argument, a bare `?` the one of its own place among the parameters.
    fn run<T>(
        &self,
        stmt: &Stmt,
        read: impl FnOnce(&mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut prepared = self.0.prepare_cached(stmt.sql())?;
        let args = stmt.args();
        for place in 1..=prepared.parameter_count() {
            let n = prepared
                .parameter_name(place)
                .and_then(|name| name.get(1..))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(place);
            match args.get(n.wrapping_sub(1)) {
                Some(Arg::Null(_)) | None => {
                    prepared.raw_bind_parameter(place, rusqlite::types::Null)?
                }
                Some(Arg::Int(v)) => prepared.raw_bind_parameter(place, v)?,
                Some(Arg::Text(v)) => prepared.raw_bind_parameter(place, v.as_str())?,
                Some(Arg::Blob(v)) => prepared.raw_bind_parameter(place, v.as_slice())?,
            }
        }
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
        f.write_str(&self.message)
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

    /// A statement's `$n` take the n-th argument wherever they stand (SQLite numbers
    /// parameters in the order they first appear), bare `?`s those of their places; NULLs
    /// and each type arrive as bound; a failed statement rolls its transaction back.
    #[tokio::test]
    async fn numbered_and_bare_parameters_take_their_arguments_and_a_failure_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let writer = NativeWriter::new(dir.path().join("t.db"), sqlite_settings(""));
        writer
            .in_transaction(|tx| {
                tx.0.execute_batch("CREATE TABLE t (a INTEGER, b TEXT, c BLOB, d TEXT)")?;
                Ok(())
            })
            .unwrap();
        let read = |tx: &mut NativeTx<'_>| {
            futures_ready(
                tx.fetch_all::<(i64, Option<String>, Vec<u8>, String)>(Stmt::new(
                    "SELECT a, b, c, d FROM t ORDER BY a",
                )),
            )
        };
        let rows = writer
            .in_transaction(|tx| {
                futures_ready(
                    tx.execute(
                        Stmt::new(
                            "INSERT INTO t (d, a, b, c) VALUES ($4, $1, $2, $3), (?, ?, ?, ?)",
                        )
                        .bind(7_i64)
                        .bind(None::<String>)
                        .bind(vec![1_u8, 2])
                        .bind("seven")
                        .bind("eight")
                        .bind(8_i64)
                        .bind("b8")
                        .bind(vec![3_u8]),
                    ),
                )?;
                read(tx)
            })
            .unwrap();
        assert_eq!(
            rows,
            [
                (7, None, vec![1, 2], "seven".to_owned()),
                (8, Some("b8".to_owned()), vec![3], "eight".to_owned())
            ]
        );
        let failed = writer.in_transaction(|tx| {
            futures_ready(tx.execute(Stmt::new("DELETE FROM t")))?;
            futures_ready(tx.execute(Stmt::new("INSERT INTO nowhere VALUES (1)")))
        });
        assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
        let kept = writer.in_transaction(read).unwrap();
        assert_eq!(
            kept.len(),
            2,
            "the DELETE was rolled back with the failed INSERT"
        );
    }

    /// A ready future's output.
    fn futures_ready<T>(future: impl Future<Output = T>) -> T {
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
