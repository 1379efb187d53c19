//! [`RawMessage`]: a message's bytes as the store keeps them — compressed with zstd when that
//! makes them smaller (`emails.raw_zstd`), with the SHA-256 of the original bytes.
//!
//! Mail text compresses to about a half at zstd's fast levels, so the store writes and keeps
//! fewer bytes than it reads from the server; the compression runs on the sync's parse
//! thread, before the database writer. Messages stored before migration 0023 are kept as
//! they were (`raw_zstd = 0`); a frame of any level reads back the same.

use std::cell::RefCell;

use crate::{Result, StoreError, sha256_hex};

/// One of zstd's fast levels (below 1): the benchmark's corpus to 0.54 of its bytes rather
/// than level 1's 0.42, in three quarters of the time. Since the native SQLite writer made
/// the store cheap, a first sync is bound by its CPU (the sync's and Dovecot's over 2 cores
/// is about the raw fetch's time), and level 1 was the parse stage's largest cost: with −1
/// the sync took 0.33 s against 0.35 s (4 alternated scratch runs of 7 syncs each, faster in
/// every pair), at 1.02× the raw bytes on disk rather than 0.87× (the target is 1.3×). −3
/// was no faster beyond the noise and stores more. Higher levels cost the parse thread
/// several times as much for a few percent.
const LEVEL: i32 = -1;

/// A message's raw bytes with their SHA-256 (the `content_sha256` that recognises a renumbered
/// message) and the form they are stored in, both made where the bytes are made: the sync does
/// it on its parse thread, so the one database writer does not wait for it.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub(crate) bytes: Vec<u8>,
    pub(crate) sha256: String,
    /// The zstd frame of `bytes`, when smaller than them.
    compressed: Option<Vec<u8>>,
}

impl RawMessage {
    pub fn new(bytes: Vec<u8>) -> Self {
        let sha256 = sha256_hex(&bytes);
        let compressed = compress(&bytes);
        Self {
            bytes,
            sha256,
            compressed,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The original length, for the `size` column.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// What goes into the row: (`raw`, `raw_zstd`). Moved out, not copied: a large message is
    /// big enough to count twice in a sync's memory, and nothing reads it after this.
    pub(crate) fn take_stored(&mut self) -> (Vec<u8>, i64) {
        match self.compressed.take() {
            Some(frame) => {
                self.bytes = Vec::new();
                (frame, 1)
            }
            None => (std::mem::take(&mut self.bytes), 0),
        }
    }
}

/// The zstd frame of `bytes`, when smaller. A compressor per thread: making zstd's context
/// anew for each message cost more than compressing a typical one.
fn compress(bytes: &[u8]) -> Option<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { RefCell::new(None) };
    }
    COMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            let compressor = match cell.as_mut() {
                Some(c) => c,
                None => cell.insert(zstd::bulk::Compressor::new(LEVEL).ok()?),
            };
            compressor.compress(bytes).ok()
        })
        .filter(|c| c.len() < bytes.len())
}

/// The original bytes of a stored `raw` column, given its `raw_zstd`.
pub(crate) fn original(stored: Vec<u8>, zstd: i64, email: &str) -> Result<Vec<u8>> {
    if zstd == 0 {
        return Ok(stored);
    }
    zstd::stream::decode_all(stored.as_slice())
        .map_err(|e| StoreError::corrupt(format!("the raw message of email {email}"), e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn text_is_stored_compressed_and_read_back_whole_and_noise_is_stored_as_it_is() {
        let text = b"From: a@example.com\r\nSubject: hello\r\n\r\n".repeat(200);
        let mut raw = RawMessage::new(text.clone());
        assert_eq!(raw.len(), text.len());
        let (stored, zstd) = raw.take_stored();
        assert_eq!(zstd, 1);
        assert!(stored.len() < text.len() / 10, "{} bytes", stored.len());
        assert_eq!(original(stored, zstd, "e").unwrap(), text);

        // Bytes that do not compress (a short message here) are kept as they came.
        let mut short = RawMessage::new(b"Subject: x\r\n\r\ny".to_vec());
        let (stored, zstd) = short.take_stored();
        assert_eq!((stored.as_slice(), zstd), (&b"Subject: x\r\n\r\ny"[..], 0));
        assert_eq!(original(stored, zstd, "e").unwrap(), b"Subject: x\r\n\r\ny");
    }

    #[test]
    fn a_damaged_frame_is_reported_as_damage() {
        let e = original(b"not zstd".to_vec(), 1, "e-1").unwrap_err();
        assert!(e.to_string().contains("e-1"), "{e}");
    }
}
