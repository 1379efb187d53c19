//! `mailbridge`: the server-side email synchronization service and its admin commands.

mod admin;
mod backup;
mod config;
mod open_files;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mailbridge_core::SystemClock;
use mailbridge_store::{Keyring, Store};
use secrecy::ExposeSecret;

use crate::config::{Config, LogFormat, MasterKeySource};

#[derive(Parser)]
#[command(
    name = "mailbridge",
    version,
    about = "Server-side email synchronization for business applications"
)]
struct Cli {
    /// Configuration file (TOML). Default: ./mailbridge.toml when it exists. Every setting can
    /// also be set as MAILBRIDGE_<SETTING>, which wins over the file.
    #[arg(long, global = true, env = "MAILBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, the console and the sync engine (the default command).
    Serve,
    /// Apply database migrations and exit (serve also applies them).
    Migrate,
    /// Manage users and their API tokens.
    #[command(subcommand)]
    Users(admin::UsersCommand),
    /// Manage email server profiles.
    #[command(subcommand)]
    Profiles(admin::ProfilesCommand),
    /// Manage mailboxes.
    #[command(subcommand)]
    Mailboxes(admin::MailboxesCommand),
    /// Manage the master key that encrypts secrets at rest.
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// The nodes sharing this database: list them, drain one.
    #[command(subcommand)]
    Nodes(admin::NodesCommand),
    /// Write a consistent copy of the SQLite database to a new FILE while the service runs
    /// (on PostgreSQL: says to use pg_dump). Keep the master key with it: the secrets in it
    /// are encrypted with that key.
    Backup {
        /// The backup to write; must not exist yet.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = Config::load(cli.config.as_deref()).and_then(|config| {
        init_logging(&config);
        tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")?
            .block_on(run(cli.command.unwrap_or(Command::Serve), config))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve::run(config).await,
        Command::Migrate => {
            let store = open_store(&config).await?;
            store.close().await;
            eprintln!("database is up to date");
            Ok(())
        }
        Command::Users(c) => admin::users(c, &open_admin_store(&config).await?).await,
        Command::Profiles(c) => admin::profiles(c, &open_admin_store(&config).await?).await,
        Command::Mailboxes(c) => admin::mailboxes(c, &open_admin_store(&config).await?).await,
        Command::Keys(c) => admin::keys(c, &config).await,
        Command::Nodes(c) => admin::nodes(c, &open_admin_store(&config).await?).await,
        Command::Backup { file } => backup::run(&config, &file).await,
    }
}

fn init_logging(config: &Config) {
    // RUST_LOG, when set, wins over the configured filter.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub(crate) fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    Ok(match &config.master_key {
        MasterKeySource::Env(text) => {
            Keyring::parse(text.expose_secret(), "MAILBRIDGE_MASTER_KEY")?
        }
        MasterKeySource::File(path) => Keyring::load_or_create(path)?,
    })
}

/// Opens the database (creating the data folder for the embedded default) and migrates it.
pub(crate) async fn open_store_with(config: &Config, keyring: Keyring) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url, keyring, Arc::new(SystemClock))
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                mailbridge_store::redact_url(&config.database_url)
            )
        })?;
    store.migrate().await?;
    Ok(store)
}

/// The data folder holds the database and the key file: only its owner may enter it.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the data folder {}", dir.display()))
}

/// The store for an admin command, saying so when it is a new, empty one: run from another
/// folder than `serve`, an admin command would otherwise quietly start its own database.
async fn open_admin_store(config: &Config) -> anyhow::Result<Store> {
    let file = config
        .database_url
        .strip_prefix("sqlite://")
        .map(|rest| rest.split('?').next().unwrap_or(rest));
    if let Some(file) = file.filter(|f| !std::path::Path::new(f).exists()) {
        eprintln!(
            "note: no database at {file} yet; creating a new, empty one (admin commands must run where 'mailbridge serve' runs, or with the same MAILBRIDGE_DATA_DIR / MAILBRIDGE_DATABASE_URL)"
        );
    }
    open_store(config).await
}

pub(crate) async fn open_store(config: &Config) -> anyhow::Result<Store> {
    // The embedded database and the default key file live in the data folder.
    if config.database_url.starts_with("sqlite:")
        || matches!(config.master_key, MasterKeySource::File(_))
    {
        create_private_dir(&config.data_dir)?;
    }
    let keyring = load_keyring(config)?;
    open_store_with(config, keyring).await
}
