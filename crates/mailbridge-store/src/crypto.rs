//! [`Keyring`]: the master keys that encrypt secrets at rest with XChaCha20-Poly1305.
//!
//! Every ciphertext names the key that made it, so keys can be rotated: the first key of a
//! keyring encrypts, every key of it decrypts. The associated data is the row's identity
//! (`table/column/id`), so a ciphertext copied into another row does not decrypt.
//!
//! Layout of a ciphertext: `MB1` · key id length (1 byte) · key id · nonce (24 bytes) ·
//! ciphertext and tag.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

const MAGIC: &[u8; 3] = b"MB1";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot read the master key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the master key file {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the master key {origin} is malformed at entry {entry}: {why}; each entry is '<key id>:<32 bytes in base64>'"
    )]
    Malformed {
        origin: String,
        entry: usize,
        why: &'static str,
    },
    #[error(
        "the master key file {path} is readable by other users (mode {mode:o}); run 'chmod 600 {path}'"
    )]
    Permissions { path: String, mode: u32 },
    #[error(
        "a secret was encrypted with key '{0}', which the keyring does not hold; add that key back (MAILBRIDGE_MASTER_KEY or the key file)"
    )]
    UnknownKey(String),
    #[error("a stored secret cannot be decrypted: {0}")]
    Corrupt(&'static str),
}

/// One 256-bit master key and its id. The key bytes are wiped on drop and never printed.
struct MasterKey {
    id: String,
    cipher: XChaCha20Poly1305,
    bytes: Zeroizing<[u8; 32]>,
}

/// Master keys, the first of which encrypts.
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// A keyring of one fresh random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        let mut id_bytes = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut id_bytes);
        let id = format!(
            "k{}",
            id_bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Self {
            keys: vec![MasterKey::new(id, bytes)],
        }
    }

    /// Parses `<id>:<base64>` entries separated by commas or newlines; `#` starts a comment.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CryptoError> {
        let malformed = |entry, why| CryptoError::Malformed {
            origin: origin.to_owned(),
            entry,
            why,
        };
        let mut keys = Vec::new();
        for (i, entry) in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, b64) = entry.split_once(':').ok_or(malformed(i + 1, "no ':'"))?;
            let id = id.trim();
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(malformed(
                    i + 1,
                    "the key id must be 1-64 letters, digits, '-' or '_'",
                ));
            }
            let raw = Zeroizing::new(
                B64.decode(b64.trim())
                    .map_err(|_| malformed(i + 1, "the key is not base64"))?,
            );
            let bytes: [u8; 32] = raw
                .as_slice()
                .try_into()
                .map_err(|_| malformed(i + 1, "the key is not 32 bytes"))?;
            if keys.iter().any(|k: &MasterKey| k.id == id) {
                return Err(malformed(i + 1, "the key id is used twice"));
            }
            keys.push(MasterKey::new(id.to_owned(), Zeroizing::new(bytes)));
        }
        if keys.is_empty() {
            return Err(malformed(0, "it holds no key"));
        }
        Ok(Self { keys })
    }

    /// Reads the key file, or creates it with one new key (mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                check_permissions(path)?;
                Self::parse(&text, &path.display().to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ring = Self::generate();
                ring.write_file(path)?;
                tracing::info!(path = %path.display(), key_id = ring.active_id(), "created a new master key file");
                Ok(ring)
            }
            Err(source) => Err(CryptoError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes the keyring to `path` with mode 0600, replacing it atomically.
    pub fn write_file(&self, path: &Path) -> Result<(), CryptoError> {
        let werr = |source| CryptoError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(werr)?;
        }
        let tmp = path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = opts.open(&tmp).map_err(werr)?;
        let text = Zeroizing::new(format!(
            "# Mailbridge master keys: the first encrypts, all decrypt. Keep this file secret.\n{}\n",
            self.export().replace(',', "\n")
        ));
        file.write_all(text.as_bytes()).map_err(werr)?;
        file.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, path).map_err(werr)
    }

    /// The keys as `<id>:<base64>` entries joined by commas: what `parse` reads and
    /// `MAILBRIDGE_MASTER_KEY` holds.
    pub fn export(&self) -> Zeroizing<String> {
        Zeroizing::new(
            self.keys
                .iter()
                .map(|k| format!("{}:{}", k.id, B64.encode(k.bytes.as_ref())))
                .collect::<Vec<_>>()
                .join(","),
        )
    }

    /// The id of the key that encrypts.
    pub fn active_id(&self) -> &str {
        self.keys.first().map_or("", |k| k.id.as_str())
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// This keyring with `newer`'s keys in front: encrypts with `newer`, decrypts with both.
    #[must_use]
    pub fn rotated_to(self, newer: Keyring) -> Keyring {
        let mut keys = newer.keys;
        for old in self.keys {
            if keys.iter().all(|n| n.id != old.id) {
                keys.push(old);
            }
        }
        Keyring { keys }
    }

    /// Only the active key: what is left once every secret has been re-encrypted with it.
    #[must_use]
    pub fn active_only(mut self) -> Keyring {
        self.keys.truncate(1);
        self
    }

    pub fn encrypt(&self, plaintext: &[u8], aad: &str) -> Vec<u8> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            // Encryption fails only for inputs of gigabytes; a secret is never that.
            .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 refused a small plaintext"));
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + key.id.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.push(u8::try_from(key.id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn decrypt(&self, blob: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let rest = blob
            .strip_prefix(MAGIC.as_slice())
            .ok_or(CryptoError::Corrupt("unknown format"))?;
        let (&id_len, rest) = rest
            .split_first()
            .ok_or(CryptoError::Corrupt("truncated"))?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN {
            return Err(CryptoError::Corrupt("truncated"));
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let id = std::str::from_utf8(id).map_err(|_| CryptoError::Corrupt("bad key id"))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        key.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Corrupt("authentication failed (wrong key or tampered row)"))
    }

    /// The key id a ciphertext was made with.
    pub fn key_id_of(blob: &[u8]) -> Option<&str> {
        let rest = blob.strip_prefix(MAGIC.as_slice())?;
        let (&n, rest) = rest.split_first()?;
        std::str::from_utf8(rest.get(..usize::from(n))?).ok()
    }
}

impl MasterKey {
    fn new(id: String, bytes: Zeroizing<[u8; 32]>) -> Self {
        let cipher = XChaCha20Poly1305::new(bytes.as_ref().into());
        Self { id, cipher, bytes }
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), CryptoError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| CryptoError::Read {
            path: path.display().to_string(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::Permissions {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), CryptoError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_binds_the_row_identity() {
        let ring = Keyring::generate();
        let blob = ring.encrypt(b"hunter2", "server_profiles/oauth_client_secret/1");
        assert!(!blob.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            ring.decrypt(&blob, "server_profiles/oauth_client_secret/1")
                .unwrap()
                .as_slice(),
            b"hunter2"
        );
        assert!(matches!(
            ring.decrypt(&blob, "server_profiles/oauth_client_secret/2"),
            Err(CryptoError::Corrupt(_))
        ));
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(
            ring.decrypt(&tampered, "server_profiles/oauth_client_secret/1")
                .is_err()
        );
    }

    #[test]
    fn a_rotated_ring_reads_old_secrets_and_writes_with_the_new_key() {
        let old = Keyring::generate();
        let old_id = old.active_id().to_owned();
        let blob = old.encrypt(b"s", "a");
        let new = Keyring::generate();
        let new_id = new.active_id().to_owned();
        let ring = old.rotated_to(new);
        assert_eq!(ring.key_ids(), vec![new_id.as_str(), old_id.as_str()]);
        assert_eq!(ring.decrypt(&blob, "a").unwrap().as_slice(), b"s");
        let fresh = ring.encrypt(b"s", "a");
        assert_eq!(Keyring::key_id_of(&fresh), Some(new_id.as_str()));
        let only = ring.active_only();
        assert!(
            matches!(only.decrypt(&blob, "a"), Err(CryptoError::UnknownKey(id)) if id == old_id)
        );
    }

    #[test]
    fn key_file_is_created_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/master.key");
        let ring = Keyring::load_or_create(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let again = Keyring::load_or_create(&path).unwrap();
        assert_eq!(again.active_id(), ring.active_id());
        let blob = ring.encrypt(b"x", "r");
        assert_eq!(again.decrypt(&blob, "r").unwrap().as_slice(), b"x");

        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        assert!(matches!(
            Keyring::load_or_create(&path),
            Err(CryptoError::Permissions { .. })
        ));
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "no key"),
            ("k1", "no ':'"),
            ("k1:not base64!", "not base64"),
            ("k1:AAAA", "not 32 bytes"),
            ("k 1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "key id"),
        ] {
            let err = Keyring::parse(text, "MAILBRIDGE_MASTER_KEY")
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains("MAILBRIDGE_MASTER_KEY"));
        }
        let two = "a:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=, b:AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert_eq!(
            Keyring::parse(two, "env").unwrap().key_ids(),
            vec!["a", "b"]
        );
    }
}
