//! [`Store::backup_to`]: a consistent copy of the embedded SQLite database, taken while the
//! service runs and writes.

use std::path::Path;

use crate::{Backend, Result, Store, StoreError};

impl Store {
    /// Writes a copy of the SQLite database to `path`, a new file that only its owner may
    /// read, and returns its size in bytes. `VACUUM INTO` copies one read transaction's
    /// snapshot: a backup taken while the engine syncs holds every batch committed before it
    /// began and nothing of a later one, so records and folder positions agree. With WAL,
    /// writers go on meanwhile. The secrets in it stay encrypted with the master key, which
    /// is not in the copy.
    ///
    /// Refuses an existing `path` (a backup never overwrites a file), and PostgreSQL, whose
    /// own `pg_dump` is the tool for that.
    pub async fn backup_to(&self, path: &Path) -> Result<u64> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Conflict(
                "this database is PostgreSQL: back it up with pg_dump".to_owned(),
            ));
        }
        let file_error = |source| StoreError::File {
            path: path.display().to_string(),
            source,
        };
        let target = path.to_str().ok_or_else(|| {
            file_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path is not UTF-8; choose another",
            ))
        })?;
        // Created here, empty (which VACUUM INTO accepts), so that an existing file is
        // refused without a race and the copy is private from its first byte.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                StoreError::Conflict(format!(
                    "{target} already exists; a backup never overwrites a file: choose a new name or move that one away"
                ))
            } else {
                file_error(e)
            }
        })?;
        let copied = sqlx::query("VACUUM INTO $1")
            .bind(target)
            .execute(&self.pool)
            .await;
        // SQLite writes the copy without syncing it: make it durable before saying it is done.
        let synced = copied.map_err(StoreError::from).and_then(|_| {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all().and_then(|()| f.metadata()))
                .map_err(file_error)
        });
        match synced {
            Ok(meta) => Ok(meta.len()),
            Err(e) => {
                // Half a copy is worse than none: it could be restored by mistake.
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[tokio::test]
    async fn a_backup_is_a_new_private_file_and_never_overwrites_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::tests::fresh_sqlite(dir.path()).await;
        let path = dir.path().join("backup.db");
        let size = store.backup_to(&path).await.unwrap();
        assert!(size > 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let again = store.backup_to(&path).await.unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size, "left alone");
    }
}
