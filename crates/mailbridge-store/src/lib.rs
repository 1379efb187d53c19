//! [`Store`]: Mailbridge's persistence on SQLite (the embedded default) or PostgreSQL, chosen
//! by the database URL. Queries are runtime queries over sqlx's `Any` driver with portable
//! SQL and column types, so one code base serves both; each backend has its own migrations.
//! On SQLite, sync batches run the same statements through SQLite's C API (`native`).

pub mod alerts;
pub mod audit;
pub mod backup;
pub mod contacts;
pub mod crypto;
pub mod emails;
pub mod events;
pub mod folders;
mod gate;
pub mod health;
mod inserts;
pub mod mailboxes;
mod native;
pub mod nodes;
pub mod oauth;
pub mod outgoing;
pub mod profiles;
mod raw;
#[cfg(test)]
mod raw_only_tests;
pub mod sessions;
mod sql;
pub mod users;
pub mod webhooks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use mailbridge_core::{Clock, MailboxId};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use alerts::{AlertRecord, NewAlert};
pub use audit::{Actor, AuditEntry};
pub use contacts::Contact;
pub use crypto::{CryptoError, Keyring};
pub use emails::{AttachmentInfo, EmailFilter, EmailRecord, NewEmail, RawMessage, SyncBatch};
pub use events::{Event, EventPage, EventQuery, NewEvent};
pub use folders::{
    FolderChangeReport, FolderChanges, FolderPosition, FolderProgress, PassProgress, PresentUids,
    ServerState,
};
pub use inserts::ROWS_PER_INSERT;
pub use mailboxes::{MailboxRecord, SyncStatus, TestOutcome};
pub use nodes::{Balance, Fence, Lease, NodeInfo};
pub use oauth::{NewOAuthState, OAuthState, SignInLink, StoredTokens, TokenSet};
pub use outgoing::OutgoingEmail;
pub use profiles::ProfileRecord;
pub use sessions::SessionToken;
pub use users::{ApiToken, UserRecord};
pub use webhooks::{Attempt, DeliveryJob, DeliveryRecord, Verdict, WebhookRecord, WebhookRound};

/// How long a query waits for a pooled connection (see [`Store::connect`]).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    /// The change would break a rule; the message says which and what to do.
    #[error("{0}")]
    Conflict(String),
    /// A mailbox cannot join a profile already serving its limit.
    #[error("{message}")]
    ProfileFull { message: String },
    /// An input names a row that does not exist (a mailbox's owner or profile).
    #[error("{field}: {message}")]
    InvalidReference {
        field: &'static str,
        message: String,
    },
    #[error(
        "the database URL '{0}' is not supported; use sqlite://<path> or postgres://<user>@<host>/<db>"
    )]
    UnsupportedUrl(String),
    /// A PostgreSQL server older than Mailbridge can use.
    #[error(
        "the database server is PostgreSQL {version}; Mailbridge needs PostgreSQL {MIN_POSTGRES} or later (a sync batch's statements are planned with plan_cache_mode, new in 12): upgrade the server"
    )]
    UnsupportedPostgres { version: String },
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database is not answering (stopped, restarting, unreachable, out of connections).
    /// Nothing needs doing here: trying again once it answers works.
    #[error(
        "the database is not answering ({source}); check that it runs and is reachable, work resumes on its own when it answers"
    )]
    Unavailable {
        #[source]
        source: sqlx::Error,
    },
    /// The database cannot write: the disk that holds it is full. Reads still work.
    #[error(
        "the database cannot write, its disk is full ({source}); free space on the disk that holds it, work resumes on its own"
    )]
    DiskFull {
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// This node no longer holds the mailbox's lease (it expired, or another node took it):
    /// the write was refused so two nodes never write one mailbox's sync.
    #[error("this node no longer holds the lease of mailbox {mailbox}")]
    LeaseLost { mailbox: String },
    /// An `Idempotency-Key` already used for a different email from the same mailbox.
    #[error("{message}")]
    IdempotencyKeyReused { message: String },
    /// What was asked for is no longer kept (an event-feed cursor older than retention).
    #[error("{message}")]
    Gone { message: String },
    /// A limit on how much a mailbox may queue; trying again after `retry_after_secs` may work.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// A file the store was asked to write (a backup) cannot be written.
    #[error("cannot write {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A stored row no longer parses (edited by hand, or written by a newer version).
    #[error("stored {what} is invalid: {why}")]
    Corrupt { what: String, why: String },
}

impl From<sqlx::Error> for StoreError {
    /// Sorts out the failures that are the database's state, not the request's: see
    /// [`StoreError::Unavailable`] and [`StoreError::DiskFull`].
    fn from(e: sqlx::Error) -> Self {
        match classify(&e) {
            Outage::None => Self::Database(e),
            Outage::NotAnswering => Self::Unavailable { source: e },
            Outage::DiskFull => Self::DiskFull { source: e },
        }
    }
}

enum Outage {
    None,
    NotAnswering,
    DiskFull,
}

fn classify(e: &sqlx::Error) -> Outage {
    match e {
        // The pool found no live connection in time (PostgreSQL stopped or unreachable), the
        // connection broke mid-query, or the pool is closing.
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Outage::NotAnswering,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // SQLite: SQLITE_FULL. PostgreSQL: disk_full.
            Some("13") | Some("53100") => Outage::DiskFull,
            // PostgreSQL: connection_exception (class 08), too_many_connections, and the
            // server shutting down, crashed or starting up (admin_shutdown, crash_shutdown,
            // cannot_connect_now).
            Some(code)
                if code.starts_with("08")
                    || matches!(code, "53300" | "57P01" | "57P02" | "57P03") =>
            {
                Outage::NotAnswering
            }
            _ => Outage::None,
        },
        _ => Outage::None,
    }
}

impl StoreError {
    /// Whether the database itself is the trouble (not answering, or its disk full), not
    /// what was asked: the same request works once it is fixed, and nothing about the
    /// mailbox or the request is to blame.
    pub fn is_database_outage(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::DiskFull { .. })
    }

    pub(crate) fn corrupt(what: impl Into<String>, why: impl ToString) -> Self {
        Self::Corrupt {
            what: what.into(),
            why: why.to_string(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database and the keyring that protects its secrets.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    writers: Writers,
    backend: Backend,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    /// Bumped after each commit that appended events (see `events`).
    events_signal: Arc<tokio::sync::watch::Sender<u64>>,
    /// SQLite: this process's writers take turns here (see [`Store::begin_write`]).
    write_gate: Arc<gate::WriteGate>,
    /// SQLite (a database file): the connection sync batches are written on, through
    /// SQLite's C API (see `native`).
    native: Option<Arc<native::NativeWriter>>,
    /// PostgreSQL: the connection on which each node of this process holds its session lock
    /// (see `nodes`), with when that session began, by node id.
    node_sessions:
        Arc<tokio::sync::Mutex<std::collections::HashMap<String, (sqlx::AnyConnection, i64)>>>,
    /// PostgreSQL: whether this process's nodes hold session locks and end the leases of
    /// nodes found dead by theirs (see [`Store::without_node_session_locks`]).
    node_session_locks: bool,
}

/// The connections write transactions run on, besides the store's pool.
#[derive(Clone)]
enum Writers {
    /// SQLite: the pool of the one connection of this process's write transactions but its
    /// sync batches' (those take the native writer on a database file; see
    /// [`Store::connect`]).
    Sqlite(AnyPool),
    /// PostgreSQL: the [`BATCH_WRITERS`] connections for sync batches, a mailbox's on the
    /// same one while it is free (see [`Store::begin_batch_write`]); other writes take the
    /// store's pool (and so does a batch whose writer is busy: then its INSERTs are the
    /// padded VALUES lists `Any` can bind, not arrays).
    Postgres(Arc<[BatchWriter]>),
}

/// PostgreSQL: a connection for sync batches, a pool of one, of sqlx's PostgreSQL driver
/// (not `Any`): its multi-row INSERTs bind one array a column (see `inserts`).
struct BatchWriter {
    pool: sqlx::PgPool,
    /// The mailbox whose batch had it last (its id's low 64 bits).
    last: std::sync::atomic::AtomicU64,
    /// After its connection could not be opened: until when batches skip it for the pool.
    refused_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl BatchWriter {
    /// Whether batches skip this writer for now (see [`WRITER_REFUSED`]).
    fn refused(&self) -> bool {
        self.refused_until()
            .is_some_and(|t| std::time::Instant::now() < t)
    }

    /// The lock on `refused_until` (which holds no state a panic could leave half made).
    fn refused_until(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        self.refused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Its connection could not be opened: batches skip it for [`WRITER_REFUSED`]. Said in
    /// the log once, when it begins, with why: sqlx reports a connection its pool could not
    /// open as a timeout (`PoolTimedOut`) whatever the server answered, so one more try, on
    /// its own, asks the server (PostgreSQL's 53300: "too many connections for role …").
    async fn refuse(&self, k: usize, error: sqlx::Error) {
        let error = if self.refused_until().is_none() && matches!(error, sqlx::Error::PoolTimedOut)
        {
            let options = self.pool.connect_options();
            match tokio::time::timeout(
                WRITER_OPEN,
                <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
            )
            .await
            {
                Ok(Err(cause)) => cause,
                Ok(Ok(opened)) => {
                    let _ = sqlx::Connection::close(opened).await; // it was only a question
                    error
                }
                Err(_) => error,
            }
        } else {
            error
        };
        let mut until = self.refused_until();
        if self.pool.size() > 0 {
            return; // another batch opened it meanwhile
        }
        if until.is_none() {
            tracing::warn!(
                %error,
                connection = %batch_writer_name(k),
                "a connection for sync batches could not be opened within {} s (the server's or \
                 the role's connection limit reached?); its batches take pooled connections, and \
                 it is tried again every {} s",
                WRITER_OPEN.as_secs(),
                WRITER_REFUSED.as_secs()
            );
        }
        *until = Some(std::time::Instant::now() + WRITER_REFUSED);
    }

    /// Its connection is open: if it had been refused, that is over, and said.
    fn opened(&self, k: usize) {
        if self.refused_until().take().is_some() {
            tracing::info!(connection = %batch_writer_name(k), "a connection for sync batches is open again");
        }
    }
}

/// PostgreSQL: which of the [`BATCH_WRITERS`] takes `mailbox`'s batches (its id's last byte,
/// counted from 0), so a mailbox's batches keep to one connection.
fn batch_writer_of(mailbox: MailboxId) -> usize {
    usize::from(mailbox.0.as_bytes()[15]) % BATCH_WRITERS as usize
}

/// PostgreSQL: the `application_name` of the `k`th batch writer's connection (from 0), by
/// which `pg_stat_activity` shows it.
fn batch_writer_name(k: usize) -> String {
    format!("mailbridge batches {}", k + 1)
}

/// Who writes, for [`Store::begin_write_turn`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    /// A request's or the engine's own write.
    Request,
    /// The webhook worker's bookkeeping, which gives way on SQLite.
    Background,
    /// A sync batch of this mailbox.
    Batch(MailboxId),
}

/// A write transaction from [`Store::begin_write`], used as the connection it runs on; on
/// SQLite it holds this process's turn to write until it commits or is dropped.
pub(crate) struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _turn: Option<gate::Turn>,
}

impl WriteTx {
    pub(crate) async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub(crate) async fn rollback(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

/// A sync batch's transaction (see [`Store::begin_batch_write`]).
pub(crate) enum BatchTx {
    /// On the store's writer (SQLite), or one of the pool's connections (PostgreSQL, when its
    /// writer is busy or could not be opened).
    Pooled(WriteTx),
    /// PostgreSQL: on its mailbox's batch writer.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl BatchTx {
    pub(crate) async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        match self {
            Self::Pooled(tx) => tx.commit().await,
            Self::Postgres(tx) => tx.commit().await,
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Copies SQLite's write-ahead log into the database file twice a second, on a connection
/// of its own, so no commit pays for it: a checkpoint at commit time (SQLite's default)
/// cost the first sync a fifth of its time. `PASSIVE` never blocks readers or writers.
async fn checkpoint_in_background(pool: AnyPool) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "background checkpoint failed; the next one will retry");
        }
    }
}

/// SQLite: what the write-ahead log's file is cut back to when a commit starts the log over
/// (`journal_size_limit`). The log grows while the background checkpoint falls behind a run
/// of writes — 61 MB at the peak of the benchmark's first sync, for a 28 MB database — and
/// SQLite keeps the file at its largest for as long as the database is open unless told.
const WAL_KEPT_BYTES: u64 = 8 << 20;

/// A pool of SQLite connections to the database of `options`, each set up for it, then given
/// `extra` pragmas. WAL lets the API read while the engine writes; foreign keys enforce the
/// RESTRICT rules; a busy writer is waited for. The WAL is checkpointed in the background
/// (see above); a commit checkpoints itself only if that falls far behind (16,384 pages:
/// 256 MiB, or 64 MiB in a database made with 4 KiB pages), and cuts the log's file back to
/// [`WAL_KEPT_BYTES`] when it starts the log over. Sized for mail, whose rows are
/// kilobytes (see the README's Benchmark): 16 KiB pages (a new database only; SQLite fixes
/// the size when it creates the file), a quarter of the WAL frames and writes; statement
/// journals (every multi-row INSERT has one) in memory, not in temporary files.
async fn sqlite_pool(
    pool_options: AnyPoolOptions,
    options: &AnyConnectOptions,
    extra: &'static str,
) -> Result<AnyPool> {
    Ok(pool_options
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(sqlite_settings(extra)))
                    .await?;
                Ok(())
            })
        })
        .connect_with(options.clone())
        .await?)
}

/// What [`sqlite_pool`]'s connections run when they open, then `extra`.
fn sqlite_settings(extra: &str) -> String {
    format!(
        "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA wal_autocheckpoint = 16384; PRAGMA temp_store = MEMORY; \
         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; \
         PRAGMA journal_size_limit = {WAL_KEPT_BYTES}; {extra}"
    )
}

/// SQLite: the database file of `url` for the native batch writer, or `None` for a database
/// in memory (which only its own connections see), or opened otherwise than read-write.
fn sqlite_file(url: &str) -> Result<Option<std::path::PathBuf>> {
    // sqlx names a `:memory:` database `file:sqlx-in-memory-…`: the URL tells. A store
    // opened read-only, immutable, or through a VFS of its own keeps the pool's writer too.
    if [":memory:", "mode=memory", "mode=ro", "immutable=", "vfs="]
        .iter()
        .any(|kind| url.contains(kind))
    {
        return Ok(None);
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    Ok(Some(options.get_filename().to_path_buf()))
}

/// SQLite: what the writer's connection runs when it opens, beyond [`sqlite_settings`].
const SQLITE_WRITER_SETTINGS: &str = "PRAGMA cache_size = -32768;";

/// A table's multi-row INSERTs: its `table (column, …)`, and its statement for each number
/// of rows it is written with (the rest of a batch's rows padding, NULLs it leaves out).
pub type BatchStatements = (&'static str, Vec<(usize, &'static str)>);

/// What a sync batch's multi-row INSERTs are on SQLite, for a benchmark that replays them
/// through another driver (`bench/first-sync`): the settings the writer's connection runs
/// when it opens, and the emails', their attachments' and the events' statements — the very
/// texts the store runs.
pub fn sqlite_batch_inserts() -> (String, [BatchStatements; 3]) {
    (
        sqlite_settings(SQLITE_WRITER_SETTINGS),
        [
            emails::INSERT_EMAILS.statements(Backend::Sqlite),
            emails::INSERT_ATTACHMENTS.statements(Backend::Sqlite),
            events::INSERT_EVENTS.statements(Backend::Sqlite),
        ],
    )
}

/// PostgreSQL: the connections a node's store keeps at most, [`BATCH_WRITERS`] of them for
/// sync batches and the rest for everything else.
const POSTGRES_CONNECTIONS: u32 = 16;
/// PostgreSQL: the connections that write sync batches, a pool of one each.
const BATCH_WRITERS: u32 = 4;
/// PostgreSQL: how long a batch waits for its mailbox's writer to come back from the
/// mailbox's batch before (sqlx pings a connection before it is idle again: a round trip),
/// before it takes any pooled connection instead.
const WRITER_WAIT: Duration = Duration::from_millis(50);
/// PostgreSQL: how long a batch tries to open its mailbox's writer before it takes a pooled
/// connection instead. sqlx tries again until its acquire timeout while the server refuses
/// for want of connections; a batch need not wait the pool's 5 s for that.
const WRITER_OPEN: Duration = Duration::from_secs(1);
/// PostgreSQL: how long a mailbox's batches skip its writer for a pooled connection after the
/// writer's connection could not be opened, before it is tried (for up to [`WRITER_OPEN`])
/// again: while the server refuses, only one batch in this long waits for it.
const WRITER_REFUSED: Duration = Duration::from_secs(30);

/// A PostgreSQL pool of up to `max` connections, each of which runs `settings` (more `SET`s)
/// when it opens.
fn postgres_pool(pool_options: AnyPoolOptions, max: u32) -> AnyPoolOptions {
    pool_options.max_connections(max).after_connect(|conn, _| {
        Box::pin(async move {
            conn.execute(sqlx::AssertSqlSafe(postgres_session("")))
                .await?;
            Ok(())
        })
    })
}

/// Whether a connection given back to its pool may serve again: not while sqlx counts it in
/// a transaction (see [`Store::connect`]'s pool options).
async fn reusable<C>(conn: &mut C) -> std::result::Result<bool, sqlx::Error>
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
{
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    // A rollback queued by a dropped transaction runs before this query.
    let _ = sqlx::raw_sql("SELECT 1").execute(&mut *conn).await;
    Ok(!conn.is_in_transaction())
}

/// PostgreSQL: the `k`th batch writer's pool of one, as [`postgres_pool`]'s connections, its
/// connection named (`application_name`).
fn batch_writer_pool(k: usize) -> sqlx::postgres::PgPoolOptions {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(WRITER_OPEN)
        .after_release(|conn, _| Box::pin(reusable(conn)))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                let name = format!("SET application_name = '{}'", batch_writer_name(k));
                conn.execute(sqlx::AssertSqlSafe(postgres_session(&name)))
                    .await?;
                Ok(())
            })
        })
}

/// PostgreSQL: what every connection runs when it opens, and then `settings`. A node paused in
/// the middle of a transaction (a VM pause, SIGSTOP) would hold its row locks for as long as
/// it stays paused: its expired leases could not be taken over, nor the node drained. Every
/// transaction here is a few statements with no waiting on anything else in between, so one
/// whose client says nothing for 10 s is ended by the server.
fn postgres_session(settings: &str) -> String {
    format!("SET idle_in_transaction_session_timeout = '10s'; {settings}")
}

/// PostgreSQL: how a sync batch's transaction begins (see [`Store::begin_batch_write`]).
const BATCH_BEGIN: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan";

/// The oldest PostgreSQL major version Mailbridge runs on.
const MIN_POSTGRES: u32 = 12;

/// Whether a server whose `server_version_num` is `num` (`170002`: 17.2, `90624`: 9.6.24) is
/// recent enough; an error that names its version if not.
fn postgres_supported(num: &str) -> Result<()> {
    let n: u32 = num
        .trim()
        .parse()
        .map_err(|_| StoreError::UnsupportedPostgres {
            version: format!("reporting version {num:?}"),
        })?;
    if n / 10_000 >= MIN_POSTGRES {
        return Ok(());
    }
    let version = if n >= 100_000 {
        format!("{}.{}", n / 10_000, n % 10_000)
    } else {
        format!("{}.{}.{}", n / 10_000, n / 100 % 100, n % 100)
    };
    Err(StoreError::UnsupportedPostgres { version })
}

impl Store {
    /// Connects to `url` (`sqlite://path` creates the file; `postgres://…`). Does not migrate.
    pub async fn connect(url: &str, keyring: Keyring, clock: Arc<dyn Clock>) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options = AnyConnectOptions::from_str(url)?;
        // While the database does not answer, a request waits this long for a connection and
        // then fails as `Unavailable` (503 from the API), rather than hanging for as long as
        // the outage lasts. SQLite connections are local, so only a pool this busy waits.
        let pool_options = AnyPoolOptions::new()
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection goes back to the pool only outside any transaction. sqlx counts a
            // transaction open until its COMMIT or ROLLBACK succeeds; when SQLite has rolled
            // one back itself (SQLITE_FULL at COMMIT: the disk full), the ROLLBACK sent for
            // the dropped transaction fails too, and the connection stayed "in a transaction"
            // for good: every later write on it failed ("begin_with at non-zero transaction
            // depth"), long after space was freed. Such a connection is closed instead, and
            // the pool opens a new one.
            .after_release(|conn, _| Box::pin(reusable(conn)));
        let native = match backend {
            Backend::Sqlite => sqlite_file(url)?,
            Backend::Postgres => None,
        };
        let (pool, writers) = match backend {
            Backend::Sqlite => {
                // The writers of this process queue at the write gate (see `begin_write`):
                // sync batches on the native writer (a database file: see `native`), every
                // other write on one pooled connection. The one that writes batches keeps a
                // large page cache, up to 32 MiB, grown only as pages are used (SQLite's
                // default, 2 MiB, is less than one sync batch, which then spilled to the WAL
                // before its commit); the others keep SQLite's default: in WAL mode a
                // connection empties its cache whenever another has committed since its last
                // read, which here is all the time, so a large one only held memory: with 8
                // connections of up to 32 MiB, 10,000 idle mailboxes took 23.4 KiB each, with
                // 3 readers and one large writer 20.0 KiB (the README's Benchmark). Reads are
                // short; 3 serve a node.
                let readers =
                    sqlite_pool(pool_options.clone().max_connections(3), &options, "").await?;
                let settings = match native {
                    Some(_) => "",
                    None => SQLITE_WRITER_SETTINGS,
                };
                let writer =
                    sqlite_pool(pool_options.max_connections(1), &options, settings).await?;
                (readers, Writers::Sqlite(writer))
            }
            Backend::Postgres => {
                let max = POSTGRES_CONNECTIONS - BATCH_WRITERS;
                let pool = postgres_pool(pool_options.clone(), max)
                    .connect_with(options.clone())
                    .await?;
                // Opened when a mailbox's first batch needs one, each named in the server's
                // `pg_stat_activity`.
                let own = sqlx::postgres::PgConnectOptions::try_from(&options)?;
                let writers = (0..BATCH_WRITERS as usize)
                    .map(|k| BatchWriter {
                        pool: batch_writer_pool(k).connect_lazy_with(own.clone()),
                        last: Default::default(),
                        refused_until: Default::default(),
                    })
                    .collect();
                let (version,): (String,) = sqlx::query_as("SHOW server_version_num")
                    .fetch_one(&pool)
                    .await?;
                postgres_supported(&version)?;
                (pool, Writers::Postgres(writers))
            }
        };
        // Its thread started before the checkpoints' task, which would keep the pools alive
        // if the store were not made after all.
        let native = match native {
            Some(path) => Some(Arc::new(
                native::NativeWriter::new(path, sqlite_settings(SQLITE_WRITER_SETTINGS))
                    .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?,
            )),
            None => None,
        };
        if backend == Backend::Sqlite {
            tokio::spawn(checkpoint_in_background(pool.clone()));
        }
        Ok(Self {
            pool,
            writers,
            backend,
            keyring: Arc::new(keyring),
            clock,
            events_signal: Arc::new(tokio::sync::watch::Sender::new(0)),
            write_gate: Arc::new(gate::WriteGate::default()),
            native,
            node_sessions: Arc::default(),
            node_session_locks: true,
        })
    }

    /// PostgreSQL: this process's nodes hold no session lock, and find no node dead by its
    /// session: a node that stops heartbeating keeps its mailboxes until its leases run out.
    /// Their rows say so (`nodes.session_lock`), so nodes that do hold locks never take one
    /// of them, late, for dead.
    /// For nodes that reach PostgreSQL through a pooler in transaction mode (PgBouncer), which
    /// lends each statement whichever server connection is free: a session lock there is
    /// held by a connection the pooler keeps, not by the node, so it tells the others nothing
    /// (`node_session_lock = false` in the service's configuration).
    pub fn without_node_session_locks(mut self) -> Self {
        // It means nothing on SQLite, where one process is the only node.
        if self.backend == Backend::Postgres {
            tracing::info!(
                "node_session_lock is off: a dead node's mailboxes move to the others when its leases run out"
            );
        }
        self.node_session_locks = false;
        self
    }

    /// Applies the backend's pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.end_node_sessions().await;
        if let Some(native) = &self.native {
            native.close().await; // after a batch it is writing
        }
        match &self.writers {
            Writers::Sqlite(writer) => writer.close().await,
            Writers::Postgres(writers) => {
                for writer in writers.iter() {
                    writer.pool.close().await;
                }
            }
        }
        self.pool.close().await;
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// A transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so a read-check-write sequence cannot be overtaken by another
    /// writer and fail with SQLITE_BUSY at commit; PostgreSQL locks rows as it goes.
    ///
    /// On SQLite this process's writers also queue, first come first served, at a gate of
    /// their own before they ask for the lock. SQLite makes a writer that finds the lock
    /// taken sleep and try again (1, 2, 5, 10 … 100 ms): with two busy writers — a sync
    /// committing its batches and the webhook worker — each wait cost up to a hundred times
    /// the transaction it waited for, and one of them could starve the other. Other
    /// processes (a `mailbridge` command) still meet SQLite's own wait.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx> {
        self.begin_write_turn(WriteKind::Request).await
    }

    /// [`Store::begin_write`] for background bookkeeping (the webhook worker's rounds): on
    /// SQLite it gives way to the other writers for a bounded time (see `gate`).
    pub(crate) async fn begin_background_write(&self) -> Result<WriteTx> {
        self.begin_write_turn(WriteKind::Background).await
    }

    /// [`Store::begin_write`] for a sync batch. On PostgreSQL its statements run on the plan
    /// each connection caches for them from the first run on (`force_generic_plan`, set in the
    /// same round trip as the `BEGIN`), not on one planned anew for each of the first five
    /// runs as PostgreSQL's default chooses: planning took about a sixth of the server's CPU
    /// in `bench/first-sync` (perf; a full batch's INSERT had 7,750 values, as `Any`'s VALUES list), a third of that
    /// after. Its lookups find their index in generic plans too (`emails::tests`); other
    /// transactions keep the default, which suits queries whose filters are optional.
    ///
    /// A mailbox's batches all go to one of [`BATCH_WRITERS`] connections (by its id), each a
    /// pool of its own: from a pool of several, a sync's batches took turns on two
    /// connections (sqlx hands a returned connection back to its pool by a task, after a
    /// ping, and the next batch took another meanwhile), and each connection parsed and
    /// planned the batch's statements for itself — the 7,750-value INSERT among them. On one
    /// connection, `bench/first-sync`'s PostgreSQL sync in a scratch loop of new stores took
    /// 0.580 s against 0.617 s (the middle of 4 alternated runs' medians of 7 syncs), the
    /// server's CPU a sync 0.32 against 0.36 s. While another mailbox's batch holds the
    /// connection, a batch takes a pooled one (see [`Store::begin_batch_on_postgres`]).
    pub(crate) async fn begin_batch_write(&self, mailbox: MailboxId) -> Result<BatchTx> {
        match &self.writers {
            Writers::Postgres(writers) => self.begin_batch_on_postgres(writers, mailbox).await,
            Writers::Sqlite(_) => Ok(BatchTx::Pooled(
                self.begin_write_turn(WriteKind::Batch(mailbox)).await?,
            )),
        }
    }

    /// PostgreSQL: the name (`application_name`) of the connection `mailbox`'s batches keep
    /// to while it is free; `None` on SQLite. For tests that watch `pg_stat_activity`.
    #[doc(hidden)]
    pub fn batch_connection_of(&self, mailbox: MailboxId) -> Option<String> {
        matches!(self.writers, Writers::Postgres(_))
            .then(|| batch_writer_name(batch_writer_of(mailbox)))
    }

    /// SQLite: this process's turn to write (see [`Store::begin_write`]).
    async fn sqlite_turn(&self, kind: WriteKind) -> Result<gate::Turn> {
        // As long as SQLite's own `busy_timeout` would have waited: then, as there, the write
        // fails and is tried again by its caller.
        let turn = if kind == WriteKind::Background {
            self.write_gate.enter_giving_way(ACQUIRE_TIMEOUT).await
        } else {
            self.write_gate.enter(ACQUIRE_TIMEOUT).await
        };
        turn.ok_or(StoreError::Unavailable {
            source: sqlx::Error::PoolTimedOut,
        })
    }

    async fn begin_write_turn(&self, kind: WriteKind) -> Result<WriteTx> {
        Ok(match &self.writers {
            Writers::Sqlite(writer) => {
                let turn = self.sqlite_turn(kind).await?;
                WriteTx {
                    tx: writer.begin_with("BEGIN IMMEDIATE").await?,
                    _turn: Some(turn),
                }
            }
            // A sync batch's, when its writer is busy (see `begin_batch_on_postgres`).
            Writers::Postgres(_) => WriteTx {
                tx: match kind {
                    WriteKind::Batch(_) => self.pool.begin_with(BATCH_BEGIN).await?,
                    WriteKind::Request | WriteKind::Background => {
                        self.pool.begin_with("BEGIN").await?
                    }
                },
                _turn: None,
            },
        })
    }

    /// PostgreSQL: a batch's transaction on its mailbox's writer (see [`Store::begin_batch_write`]),
    /// opened there when it has no connection (the first batch, or one after sqlx closed an
    /// idle one). While the writer is busy: if this mailbox's own batch had it last, its
    /// connection is on its way back (sqlx pings it first), and the batch waits for it up to
    /// [`WRITER_WAIT`]; if another mailbox's batch has it (a large batch, one stuck on a row
    /// lock), the batch takes any of the pool's connections at once rather than queue. When the
    /// writer's connection cannot be opened (the server's or the role's connection limit
    /// reached; sqlx tries for [`WRITER_OPEN`]), the batch takes a pooled connection too — the
    /// pool's open connections still serve — and so do the writer's batches for
    /// [`WRITER_REFUSED`], before it is tried again.
    ///
    /// The wait runs in a task of its own, left to finish when it is given up: a `begin_with`
    /// dropped midway loses its connection (in the ping before it is handed out) or leaves it
    /// in a transaction sqlx does not know it began (in the `BEGIN`); finished and dropped, its
    /// transaction is rolled back and the connection goes back clean. (Polling the idle
    /// connection instead, every millisecond or by yielding, was slower: 0.58–0.60 s against
    /// 0.57 s in the scratch loop.)
    async fn begin_batch_on_postgres(
        &self,
        writers: &[BatchWriter],
        mailbox: MailboxId,
    ) -> Result<BatchTx> {
        let k = batch_writer_of(mailbox);
        let writer = &writers[k];
        let me = mailbox.0.as_u64_pair().1;
        let ordering = std::sync::atomic::Ordering::Relaxed;
        let begun = if writer.pool.is_closed() {
            // Closing: the batch is not written elsewhere meanwhile.
            Err(sqlx::Error::PoolClosed)
        } else if writer.refused() {
            Ok(None)
        } else if writer.pool.size() == 0 {
            match writer.pool.begin_with(BATCH_BEGIN).await {
                Ok(tx) => Ok(Some(tx)),
                Err(sqlx::Error::PoolClosed) => Err(sqlx::Error::PoolClosed),
                // Another batch opened it first and holds it: as if it had been busy.
                Err(_) if writer.pool.size() > 0 => Ok(None),
                Err(error) => {
                    writer.refuse(k, error).await;
                    Ok(None)
                }
            }
        } else if writer.last.load(ordering) == me {
            let pool = writer.pool.clone();
            let pending = tokio::spawn(async move { pool.begin_with(BATCH_BEGIN).await });
            match tokio::time::timeout(WRITER_WAIT, pending).await {
                Ok(Ok(begun)) => begun.map(Some),
                Ok(Err(_)) | Err(_) => Ok(None), // the task failed, or was given up
            }
        } else {
            writer.pool.try_begin_with(BATCH_BEGIN).await
        };
        match begun {
            Ok(Some(tx)) => {
                writer.opened(k);
                writer.last.store(me, ordering);
                return Ok(BatchTx::Postgres(tx));
            }
            Ok(None) => {}
            Err(sqlx::Error::PoolClosed) => return Err(sqlx::Error::PoolClosed.into()),
            // A `BEGIN` on its open connection failed (the connection lost: sqlx closes it,
            // and the next batch opens another), or its reopening while this mailbox waited.
            Err(error) => tracing::debug!(
                %error,
                connection = %batch_writer_name(k),
                "a sync batch's connection failed; it takes a pooled one"
            ),
        }
        Ok(BatchTx::Pooled(
            self.begin_write_turn(WriteKind::Batch(mailbox)).await?,
        ))
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// The time on this store's clock (the one its records are stamped with).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Decrypts every stored secret with the keyring and encrypts it again with its active
    /// key, in one transaction. Returns how many secrets were re-encrypted.
    pub async fn reencrypt_secrets(&self) -> Result<usize> {
        let mut tx = self.begin_write().await?;
        let mut count = 0;
        for (table, key, column) in ENCRYPTED_COLUMNS {
            let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL"
            )))
            .fetch_all(&mut *tx)
            .await?;
            for (id, blob) in &rows {
                let aad = aad(table, column, id);
                let plain = self.keyring.decrypt(blob, &aad)?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET {column} = $1 WHERE {key} = $2"
                )))
                .bind(self.keyring.encrypt(&plain, &aad))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            count += rows.len();
        }
        tx.commit().await?;
        Ok(count)
    }

    /// Seals a secret for one column of one row.
    pub(crate) fn seal(&self, table: &str, column: &str, id: &str, secret: &str) -> Vec<u8> {
        self.keyring
            .encrypt(secret.as_bytes(), &aad(table, column, id))
    }

    /// The ciphertext to store for a secret change: `Some` for a new secret; `None` when the
    /// stored one is kept (or cleared, which the caller's SQL handles).
    pub(crate) fn seal_change(
        &self,
        table: &str,
        column: &str,
        id: &str,
        change: &mailbridge_core::SecretChange,
    ) -> Option<Vec<u8>> {
        use secrecy::ExposeSecret;
        match change {
            mailbridge_core::SecretChange::Set(s) => {
                Some(self.seal(table, column, id, s.expose_secret()))
            }
            mailbridge_core::SecretChange::Keep | mailbridge_core::SecretChange::Clear => None,
        }
    }

    /// Opens a secret sealed by [`Store::seal`] for the same row and column.
    pub(crate) fn open_secret(
        &self,
        table: &str,
        column: &str,
        id: &str,
        blob: &[u8],
    ) -> Result<secrecy::SecretString> {
        let plain = self.keyring.decrypt(blob, &aad(table, column, id))?;
        String::from_utf8(plain.to_vec())
            .map(secrecy::SecretString::from)
            .map_err(|_| StoreError::corrupt(format!("{table}.{column} of {id}"), "not UTF-8"))
    }
}

/// Every encrypted column: (table, key column, column). Its associated data is
/// `table/column/key`, so a ciphertext moved to another row or column does not decrypt.
const ENCRYPTED_COLUMNS: &[(&str, &str, &str)] = &[
    ("server_profiles", "id", "oauth_client_secret"),
    ("mailbox_tokens", "mailbox_id", "access_token"),
    ("mailbox_tokens", "mailbox_id", "refresh_token"),
    ("oauth_states", "state_hash", "pkce_verifier"),
    ("mailboxes", "id", "password"),
    ("webhook_endpoints", "id", "secret"),
    ("webhook_endpoints", "id", "previous_secret"),
];

fn aad(table: &str, column: &str, id: &str) -> String {
    format!("{table}/{column}/{id}")
}

/// SHA-256 as lower-case hex: content hashes, and how tokens and states are stored.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Digit by digit into one string: a `format!` per byte was 32 allocations per message.
    let mut hex = String::with_capacity(64);
    for b in sha2::Sha256::digest(bytes) {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    hex
}

/// Rows store times as Unix milliseconds.
pub(crate) fn time_from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Whether a database error is a unique-constraint violation (both backends).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}

/// A URL with its password replaced, fit for an error message.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Sync batches get a native writer on a database file only: one in memory is seen by
    /// its own connections alone.
    #[test]
    fn a_database_file_is_found_in_its_url_and_one_in_memory_has_none() {
        assert_eq!(
            sqlite_file("sqlite://data/mailbridge.db?mode=rwc").unwrap(),
            Some(std::path::PathBuf::from("data/mailbridge.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:").unwrap(), None);
        assert_eq!(sqlite_file("sqlite://shared?mode=memory").unwrap(), None);
    }

    #[test]
    fn a_postgresql_older_than_12_is_refused_naming_its_version() {
        for ok in ["120000", "130014", "170002\n"] {
            assert!(postgres_supported(ok).is_ok(), "{ok}");
        }
        for (num, shown) in [
            ("110022", "PostgreSQL 11.22;"),
            ("90624", "PostgreSQL 9.6.24;"),
            ("devel", "reporting version \"devel\""),
        ] {
            let e = postgres_supported(num).unwrap_err().to_string();
            assert!(e.contains(shown), "{e}");
            assert!(e.contains("needs PostgreSQL 12 or later"), "{e}");
        }
    }

    #[test]
    fn sha256_hex_is_the_digest_in_lowercase_hex() {
        // FIPS 180-2's example for "abc".
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    pub(crate) async fn fresh_sqlite(dir: &std::path::Path) -> Store {
        migrated(&format!("sqlite://{}?mode=rwc", dir.join("t.db").display())).await
    }

    /// A store on a new, migrated PostgreSQL database of the test server.
    pub(crate) async fn fresh_postgres(dir: &std::path::Path) -> Store {
        let url = mailbridge_testdb::TestDatabase::Postgres
            .url_for(dir)
            .await
            .unwrap();
        migrated(&url).await
    }

    async fn migrated(url: &str) -> Store {
        let store = Store::connect(
            url,
            Keyring::generate(),
            Arc::new(mailbridge_core::SystemClock),
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// A store on a new database of `db`'s kind, with no migration run.
    pub(crate) async fn unmigrated(
        db: mailbridge_testdb::TestDatabase,
        dir: &std::path::Path,
    ) -> Store {
        let url = db.url_for(dir).await.unwrap();
        Store::connect(
            &url,
            Keyring::generate(),
            Arc::new(mailbridge_core::SystemClock),
        )
        .await
        .unwrap()
    }

    /// A store on a database as an earlier version left it: migrated up to, not including,
    /// the migration whose name begins with `first_not_run` (say `"0022"`).
    pub(crate) async fn before_migration(
        db: mailbridge_testdb::TestDatabase,
        dir: &std::path::Path,
        first_not_run: &str,
    ) -> Store {
        let store = unmigrated(db, dir).await;
        let source = match store.backend {
            Backend::Sqlite => "migrations/sqlite",
            Backend::Postgres => "migrations/postgres",
        };
        let before = tempfile::tempdir().unwrap();
        let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
        for entry in std::fs::read_dir(&all).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.as_str() < first_not_run {
                std::fs::copy(&path, before.path().join(&name)).unwrap();
            }
        }
        sqlx::migrate::Migrator::new(before.path())
            .await
            .unwrap()
            .run(&store.pool)
            .await
            .unwrap();
        store
    }

    /// `raw` as the sync hands it to the store: INBOX's message of UID 1, read now.
    pub(crate) fn inbox_email(raw: &[u8]) -> crate::emails::NewEmail {
        crate::emails::NewEmail {
            remote_key: "imap/INBOX/1/1".to_owned(),
            folder: Some("INBOX".to_owned()),
            uid: Some(1),
            gmail_labels: Vec::new(),
            gmail_thread_id: None,
            tracking_token: None,
            parsed: mailbridge_core::parse::parse(raw),
            raw: crate::emails::RawMessage::new(raw.to_vec()),
            truncated_from: None,
            flags: Some(mailbridge_core::message::MessageFlags::default()),
            sent_by_owner: false,
            renumbered_from: None,
        }
    }

    /// A user, a profile and a mailbox as the version of migration 0021 wrote them (today's
    /// code writes columns that schema does not have yet); the mailbox's id.
    pub(crate) async fn old_mailbox(store: &Store) -> &'static str {
        let mailbox = "0190f0a0-0000-7000-8000-0000000000a1";
        for insert in [
            "INSERT INTO users (id, email, role, token_hash, created_at, updated_at) \
             VALUES ('0190f0a0-0000-7000-8000-0000000000b1', 'ann@example.com', 'user', 'h', 0, 0)",
            "INSERT INTO server_profiles (id, name, incoming_protocol, incoming_host, incoming_port, \
             incoming_security, outgoing_host, outgoing_port, outgoing_security, auth_method, \
             max_mailboxes, poll_interval_seconds, created_at, updated_at) VALUES \
             ('0190f0a0-0000-7000-8000-0000000000c1', 'files', 'imap', '127.0.0.1', 993, 'tls', \
             '127.0.0.1', 465, 'tls', 'password', 10, 60, 0, 0)",
            "INSERT INTO mailboxes (id, owner_user_id, email, profile_id, incoming_method, \
             outgoing_method, tracking_rule, created_at, updated_at) VALUES \
             ('0190f0a0-0000-7000-8000-0000000000a1', '0190f0a0-0000-7000-8000-0000000000b1', \
             'ann@example.com', '0190f0a0-0000-7000-8000-0000000000c1', 'server_side_sync', \
             'server_side_sync', 'all', 0, 0)",
        ] {
            sqlx::query(insert).execute(&store.pool).await.unwrap();
        }
        mailbox
    }

    #[tokio::test]
    async fn a_full_disk_and_a_database_that_does_not_answer_are_told_apart_from_other_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh_sqlite(dir.path()).await;
        // SQLite answers SQLITE_FULL when a write would grow the file past max_page_count,
        // exactly as when the disk is full.
        let mut conn = store.pool.acquire().await.unwrap();
        let (pages,): (i64,) = sqlx::query_as("PRAGMA page_count")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA max_page_count = {pages}"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        let full = StoreError::from(
            sqlx::query("CREATE TABLE filler (b BLOB)")
                .execute(&mut *conn)
                .await
                .unwrap_err(),
        );
        assert!(matches!(full, StoreError::DiskFull { .. }), "{full}");
        assert!(full.is_database_outage());
        assert!(full.to_string().contains("disk is full"), "{full}");
        let wrong = StoreError::from(
            sqlx::query("SELECT nothing FROM nowhere")
                .execute(&mut *conn)
                .await
                .unwrap_err(),
        );
        assert!(matches!(wrong, StoreError::Database(_)), "{wrong}");
        assert!(!wrong.is_database_outage());
        drop(conn);
        store.close().await;
        let gone = store.ping().await.unwrap_err();
        assert!(matches!(gone, StoreError::Unavailable { .. }), "{gone}");
        assert!(gone.is_database_outage());
    }

    #[tokio::test]
    async fn a_new_sqlite_database_is_laid_out_for_mail() {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh_sqlite(dir.path()).await;
        let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(page_size, 16384);
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        // Only the connection that writes sync batches keeps a large page cache (see
        // `Store::connect`).
        let cache = "PRAGMA cache_size";
        let (readers,): (i64,) = sqlx::query_as(cache).fetch_one(&store.pool).await.unwrap();
        let mut tx = store.begin_write().await.unwrap();
        let (writer,): (i64,) = sqlx::query_as(cache).fetch_one(&mut *tx).await.unwrap();
        tx.rollback().await.unwrap();
        let runtime = tokio::runtime::Handle::current();
        let batches = store
            .native
            .as_ref()
            .unwrap()
            .run(move |slot| {
                slot.transaction(|tx| {
                    runtime.block_on(crate::sql::SqlConn::fetch_optional::<(i64,)>(
                        tx,
                        crate::sql::Stmt::new("PRAGMA cache_size"),
                    ))
                })
            })
            .await
            .unwrap()
            .map(|(size,)| size);
        assert_eq!((readers, writer, batches), (-2000, -2000, Some(-32768)));
    }

    /// SQLite is built with the flags of `.cargo/config.toml` (no count of its memory, so no
    /// process-wide mutex around each of its allocations).
    #[tokio::test]
    async fn sqlite_is_built_without_its_memory_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh_sqlite(dir.path()).await;
        let options: Vec<(String,)> = sqlx::query_as("PRAGMA compile_options")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        assert!(
            options.iter().any(|(o,)| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    /// A long run of writes (a first sync) grows the write-ahead log past what the background
    /// checkpoint keeps up with; once it has caught up, the next commit starts the log over
    /// and cuts the file back, so a running service's data folder does not keep the peak.
    #[tokio::test]
    async fn the_write_ahead_log_shrinks_back_after_a_burst_of_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh_sqlite(dir.path()).await;
        let wal = dir.path().join("t.db-wal");
        // Statements run in one write transaction.
        let commit = async |statements: &[&'static str]| {
            let mut tx = store.begin_write().await.unwrap();
            for statement in statements {
                sqlx::query(*statement).execute(&mut *tx).await.unwrap();
            }
            tx.commit().await.unwrap();
        };
        commit(&["CREATE TABLE burst (b BLOB)"]).await;
        // 24 MiB that do not compress, in one transaction (the checkpoint cannot copy a
        // transaction before it commits).
        commit(&["INSERT INTO burst (b) VALUES (randomblob(1048576))"; 24]).await;
        let peak = std::fs::metadata(&wal).unwrap().len();
        assert!(peak > 24 << 20, "{peak} bytes");
        // The background checkpoint runs twice a second; small commits meanwhile, as a
        // service makes them, until one finds the log copied and starts it over.
        let started = std::time::Instant::now();
        let mut after = peak;
        while after > WAL_KEPT_BYTES && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            commit(&["INSERT INTO burst (b) VALUES (x'00')"]).await;
            after = std::fs::metadata(&wal).unwrap().len();
        }
        assert!(after <= WAL_KEPT_BYTES, "{after} bytes left of {peak}");
        store.close().await;
    }
}
