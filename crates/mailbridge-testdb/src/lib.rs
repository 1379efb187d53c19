//! [`Postgres`]: a real PostgreSQL server from Debian's packages, one per test process, on a
//! free port in its own data directory; each test gets a fresh database from
//! [`Postgres::database`]. With `MAILBRIDGE_TEST_POSTGRES_URL` set (`postgres://user@host:port`)
//! that server is used instead.
//!
//! Tests choose their backend with `MAILBRIDGE_TEST_DATABASE=postgres` (see [`TestDatabase`]);
//! the store's own tests run on both every time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod ports;
pub use ports::spare_ports;

/// Which database a test's store lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDatabase {
    Sqlite,
    Postgres,
}

impl TestDatabase {
    /// From `MAILBRIDGE_TEST_DATABASE` (`sqlite`, the default, or `postgres`).
    pub fn from_env() -> Self {
        match std::env::var("MAILBRIDGE_TEST_DATABASE").as_deref() {
            Ok("postgres") | Ok("postgresql") => Self::Postgres,
            _ => Self::Sqlite,
        }
    }

    /// The database URL for the data kept in `dir`: the SQLite file there, or a new
    /// PostgreSQL database whose URL is remembered in `dir`, so a restarted app finds it again.
    pub async fn url_for(self, dir: &Path) -> anyhow::Result<String> {
        match self {
            Self::Sqlite => Ok(format!(
                "sqlite://{}?mode=rwc",
                dir.join("mailbridge.db").display()
            )),
            Self::Postgres => {
                let remembered = dir.join("postgres-url");
                if let Ok(url) = std::fs::read_to_string(&remembered) {
                    return Ok(url);
                }
                let url = Postgres::shared()?.database().await?;
                std::fs::write(&remembered, &url)?;
                Ok(url)
            }
        }
    }
}

impl TestDatabase {
    /// Everything the database keeps for the data in `dir`, to search for what must not be
    /// there in clear: every byte of the SQLite file and its write-ahead log; or every row of
    /// every PostgreSQL table as text, BYTEA in `escape` form (printable bytes as themselves,
    /// so a secret stored unencrypted in a BYTEA column is found too).
    pub async fn contents(self, dir: &Path) -> anyhow::Result<Vec<u8>> {
        use sqlx::Connection;
        match self {
            Self::Sqlite => Ok(["mailbridge.db", "mailbridge.db-wal"]
                .iter()
                .flat_map(|f| std::fs::read(dir.join(f)).unwrap_or_default())
                .collect()),
            Self::Postgres => {
                let url = self.url_for(dir).await?;
                let mut c = sqlx::PgConnection::connect(&url).await?;
                sqlx::raw_sql("SET bytea_output = 'escape'")
                    .execute(&mut c)
                    .await?;
                let tables: Vec<(String,)> = sqlx::query_as(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                )
                .fetch_all(&mut c)
                .await?;
                let mut all = Vec::new();
                for (table,) in tables {
                    let (rows,): (Option<String>,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT string_agg(t::text, E'\\n') FROM \"{table}\" t"
                    )))
                    .fetch_one(&mut c)
                    .await?;
                    all.extend(rows.unwrap_or_default().into_bytes());
                }
                c.close().await?;
                Ok(all)
            }
        }
    }

    /// The bytes the data in `dir` takes on disk, for the storage figures of the benchmarks:
    /// the SQLite file with its write-ahead log (after a clean close, the log is empty); on
    /// PostgreSQL, the tables of the database with their indexes and TOAST (what its rows
    /// cost, without the catalogs every database has).
    pub async fn bytes_on_disk(self, dir: &Path) -> anyhow::Result<u64> {
        use sqlx::Connection;
        match self {
            Self::Sqlite => Ok(["mailbridge.db", "mailbridge.db-wal"]
                .iter()
                .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
                .map(|m| m.len())
                .sum()),
            Self::Postgres => {
                let url = self.url_for(dir).await?;
                let mut c = sqlx::PgConnection::connect(&url).await?;
                let (bytes,): (i64,) = sqlx::query_as(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = 'public' AND c.relkind = 'r'",
                )
                .fetch_one(&mut c)
                .await?;
                c.close().await?;
                Ok(u64::try_from(bytes)?)
            }
        }
    }
}

pub struct Postgres {
    /// `postgres://postgres@127.0.0.1:port`, without a database.
    server_url: String,
    /// A server this process started (none for `MAILBRIDGE_TEST_POSTGRES_URL`), which
    /// [`Postgres::stop`] and [`Postgres::restart`] act on.
    own: Option<Server>,
}

/// A PostgreSQL server started here: where its data is, how to run it.
struct Server {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_root: bool,
    /// Removed (and the server stopped) on drop: a private server's, not the shared one's.
    private: bool,
}

static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();

impl Postgres {
    /// The server of this test process, started on first use.
    pub fn shared() -> anyhow::Result<&'static Postgres> {
        SHARED
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("cannot start PostgreSQL for the tests: {e}"))
    }

    fn start() -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("MAILBRIDGE_TEST_POSTGRES_URL") {
            return Ok(Self {
                server_url: url.trim_end_matches('/').to_owned(),
                own: None,
            });
        }
        Self::start_in(
            std::env::temp_dir().join(format!("mailbridge-pg-{}", std::process::id())),
            false,
        )
    }

    /// A server of the test's own, which it may stop and start again (a database outage),
    /// always started here (`MAILBRIDGE_TEST_POSTGRES_URL` is not used); stopped and removed
    /// on drop.
    pub fn private() -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::start_in(
            std::env::temp_dir().join(format!("mailbridge-pg-{}.{n}", std::process::id())),
            true,
        )
    }

    /// The process id of the server's master process, which started every other (its first
    /// line of `postmaster.pid`); `None` for a server this process did not start.
    pub fn server_pid(&self) -> Option<u32> {
        let server = self.own.as_ref()?;
        let pid_file = std::fs::read_to_string(server.dir.join("data/postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// Stops the server (fast shutdown: sessions are ended, as when an operator stops it or
    /// it crashes); its data stays for [`Postgres::restart`].
    pub fn stop(&self) -> anyhow::Result<()> {
        let server = self
            .own
            .as_ref()
            .context("this PostgreSQL was not started here")?;
        server.pg_ctl_stop("fast")
    }

    /// Starts a server stopped by [`Postgres::stop`] again, on the same port and data.
    pub fn restart(&self) -> anyhow::Result<()> {
        let server = self
            .own
            .as_ref()
            .context("this PostgreSQL was not started here")?;
        server.spawn()?;
        server.wait_listening()
    }

    fn start_in(dir: PathBuf, private: bool) -> anyhow::Result<Self> {
        let bin = binaries()?;
        remove_stale_servers();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("data");
        let [port] = spare_ports()?;
        let as_root = is_root();
        if as_root {
            // initdb and postgres refuse to run as root: the data belongs to `postgres`.
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("chown of {} to postgres failed", dir.display());
            }
        }
        let initdb = as_postgres(as_root, &bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .context("running initdb")?;
        if !initdb.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr).trim()
            );
        }
        let server = Server {
            dir,
            bin,
            port,
            as_root,
            private,
        };
        server.spawn()?;
        server.wait_listening()?;
        Ok(Self {
            server_url: format!("postgres://postgres@127.0.0.1:{port}"),
            own: Some(server),
        })
    }

    /// A new, empty database: its URL.
    pub async fn database(&self) -> anyhow::Result<String> {
        use sqlx::Connection;
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let admin = format!("{}/postgres", self.server_url);
        // The server accepts connections a moment before it accepts logins.
        let started = Instant::now();
        let mut conn = loop {
            match sqlx::PgConnection::connect(&admin).await {
                Ok(c) => break c,
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("connecting to the test PostgreSQL"),
            }
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(format!("{}/{name}", self.server_url))
    }
}

impl Server {
    /// Starts `postgres` on the server's data and port (appending to its log).
    fn spawn(&self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))?;
        // Test data: the test server's own crash safety is not under test. Benchmarks set
        // MAILBRIDGE_TEST_POSTGRES_DURABLE to measure with fsync on.
        let durability: [&str; 4] =
            if std::env::var_os("MAILBRIDGE_TEST_POSTGRES_DURABLE").is_some() {
                ["-c", "fsync=on", "-c", "synchronous_commit=off"]
            } else {
                ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            };
        // Started from a thread that lives as long as the process, so the parent-death
        // signal (sent when the spawning *thread* ends) stops the server with the tests.
        let postgres = self.bin.join("postgres");
        let (data, socket_dir, port, as_root) = (
            self.dir.join("data"),
            self.dir.clone(),
            self.port,
            self.as_root,
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = as_postgres(as_root, &postgres)
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(&socket_dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=300",
                ])
                .args(durability)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn();
            let _ = tx.send(child.map(|_| ()));
            loop {
                std::thread::park();
            }
        });
        rx.recv()?.context("starting postgres")
    }

    fn wait_listening(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                let log =
                    std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                bail!("PostgreSQL did not start within 30 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `pg_ctl stop` in `mode` (`fast`, `immediate`), waiting until the server is gone.
    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let out = as_postgres(self.as_root, &self.bin.join("pg_ctl"))
            .args(["stop", "-w", "-m", mode, "-D"])
            .arg(self.dir.join("data"))
            .output()
            .context("running pg_ctl stop")?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.private {
            let _ = self.pg_ctl_stop("immediate");
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The newest PostgreSQL installed from Debian's packages.
fn binaries() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context(
        "PostgreSQL is not installed: run ./scripts/test (it installs Debian's postgresql), \
         or set MAILBRIDGE_TEST_POSTGRES_URL to a server to use",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// `program` run as the `postgres` user when we are root (with a parent-death signal set
/// after the switch, which would otherwise clear it), else as ourselves.
fn as_postgres(as_root: bool, program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    if as_root {
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--reset-env",
        ]);
    }
    c.args(["--pdeathsig", "SIGQUIT"]).arg(program);
    c
}

/// Data directories of test servers whose process is gone.
fn remove_stale_servers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("mailbridge-pg-"))
            // `<pid>` (the shared server) or `<pid>.<n>` (a private one).
            .and_then(|p| p.split('.').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
