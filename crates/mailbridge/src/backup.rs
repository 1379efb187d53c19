//! `mailbridge backup FILE`: a consistent copy of the embedded SQLite database, taken while
//! `mailbridge serve` runs ([`mailbridge_store::Store::backup_to`]); on PostgreSQL, what to
//! run instead.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use mailbridge_core::SystemClock;
use mailbridge_store::{Keyring, Store};

use crate::config::{Config, MasterKeySource};

pub async fn run(config: &Config, file: &Path) -> anyhow::Result<()> {
    let url = &config.database_url;
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        bail!("{}", pg_dump_hint(url, &config.master_key));
    }
    let Some(database) = sqlite_path(url) else {
        bail!(
            "cannot back up the database {}: 'mailbridge backup' copies a sqlite:// database",
            mailbridge_store::redact_url(url)
        );
    };
    if !Path::new(database).exists() {
        bail!(
            "there is no database at {database} to back up; run 'mailbridge backup' where 'mailbridge serve' runs, or with the same MAILBRIDGE_DATA_DIR / MAILBRIDGE_DATABASE_URL"
        );
    }
    if file.exists() {
        bail!(
            "{} already exists; a backup never overwrites a file: choose a new name or move that one away",
            file.display()
        );
    }
    eprintln!(
        "backing up {database} to {} (the service may keep running)…",
        file.display()
    );
    let started = Instant::now();
    // The copy needs no key (the secrets are copied as they are stored, encrypted), so none is
    // loaded or created: this keyring is never used.
    let store = Store::connect(url, Keyring::generate(), Arc::new(SystemClock))
        .await
        .with_context(|| format!("cannot open the database {database}"))?;
    let written = store.backup_to(file).await;
    store.close().await;
    let size = written.with_context(|| format!("cannot back up {database}"))?;
    eprintln!(
        "backup written: {} ({:.1} MB in {:.2} s)",
        file.display(),
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    eprintln!("{}", key_warning(&config.master_key));
    eprintln!(
        "To restore: stop the service, copy the backup to {database}, delete {database}-wal and {database}-shm if they exist, and start the service with the same master key."
    );
    Ok(())
}

/// The database file of a `sqlite:` URL.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    rest.split('?').next().filter(|p| !p.is_empty())
}

/// Where the key is, and why it must be kept: a backup restored without it has secrets that
/// no longer decrypt, so no mailbox can log in.
fn key_warning(key: &MasterKeySource) -> String {
    let at = match key {
        MasterKeySource::File(path) => format!("the key file {}", path.display()),
        MasterKeySource::Env(_) => "MAILBRIDGE_MASTER_KEY".to_owned(),
    };
    format!(
        "KEEP THE MASTER KEY TOO: the secrets in this backup (OAuth client secrets and tokens, mailbox passwords) are encrypted with it, and it is not in the backup. The key is {at}. Restored without it, the database cannot sign in to any mailbox. Keep a copy of the key as safely as the backup, but not beside it: whoever has both can read every secret."
    )
}

/// What to run on PostgreSQL: its own dump, consistent while the service runs. The URL is
/// shown without its password (pg_dump reads it from PGPASSWORD or ~/.pgpass).
fn pg_dump_hint(url: &str, key: &MasterKeySource) -> String {
    let without_password = match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => mailbridge_store::redact_url(url),
    };
    format!(
        "'mailbridge backup' copies the embedded SQLite database, and this one is PostgreSQL ({}); nothing was done. Back it up with PostgreSQL's own tool, which takes a consistent snapshot while the service runs:\n  pg_dump --format=custom --file=mailbridge.dump --dbname='{without_password}'\n(with the password in PGPASSWORD or ~/.pgpass), and restore it with pg_restore.\n{}",
        mailbridge_store::redact_url(url),
        key_warning(key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pg_dump_hint_names_the_database_but_not_the_password() {
        let hint = pg_dump_hint(
            "postgres://mb:hunter2@db.example.com:5433/mail?sslmode=require",
            &MasterKeySource::File("/data/master.key".into()),
        );
        assert!(
            hint.contains(
                "pg_dump --format=custom --file=mailbridge.dump --dbname='postgres://mb@db.example.com:5433/mail?sslmode=require'"
            ),
            "{hint}"
        );
        assert!(!hint.contains("hunter2"), "{hint}");
        assert!(hint.contains("/data/master.key"), "{hint}");
    }

    #[test]
    fn the_database_file_is_read_from_the_sqlite_url() {
        assert_eq!(
            sqlite_path("sqlite:///d/mailbridge.db?mode=rwc"),
            Some("/d/mailbridge.db")
        );
        assert_eq!(sqlite_path("sqlite:./x.db"), Some("./x.db"));
        assert_eq!(sqlite_path("postgres://h/d"), None);
    }
}
