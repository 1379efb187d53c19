//! Incoming mail: decide what to fetch ([`plan`], pure), then fetch, parse, filter by the
//! tracking rule and store ([`imap`], [`pop3`]), one committed batch at a time.

pub mod imap;
pub mod plan;
pub mod pop3;
mod track;

/// Messages fetched and committed per batch, at most: big enough to amortize round trips,
/// lookups and commits (the store writes a full one in four INSERTs of
/// [`mailbridge_store::ROWS_PER_INSERT`] rows, kept prepared), small enough that a crash or a
/// cut connection repeats little. A first sync of the benchmark's corpus took about 5 % less
/// time than in batches of 250 (the README's Benchmark).
pub const BATCH_SIZE: usize = 4 * mailbridge_store::ROWS_PER_INSERT;

/// Messages in a pass's first batch; the k-th may hold 2^k times as many (64, 128, 256 …), up
/// to [`BATCH_SIZE`]. The stages each wait for a whole batch, so the parse and the store start
/// once this many messages are read, not a full batch.
pub const FIRST_BATCH: usize = 64;

/// Bytes per IMAP download at most (a single larger message is a download of its own): with
/// the pipeline's stages a batch apart, a few of these are in memory at once.
pub const BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// What one sync pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Messages read from the server.
    pub fetched: usize,
    /// New email records stored (the tracking rule may keep fewer than fetched).
    pub stored: usize,
}

/// Why a sync pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Proto(#[from] mailbridge_proto::ProtoError),
    #[error(transparent)]
    Store(#[from] mailbridge_store::StoreError),
    #[error(transparent)]
    Token(#[from] crate::tokens::TokenError),
    #[error("no password is stored for this mailbox")]
    NoPassword,
    /// The runtime is shutting down mid-pass.
    #[error("the pass was interrupted")]
    Interrupted,
}

/// See [`SyncError::is_provider_limit`].
pub(crate) fn is_provider_limit(e: &mailbridge_proto::ProtoError) -> bool {
    let words = e.to_string().to_ascii_lowercase();
    words.contains("[overquota]")
        || words.contains("exceeded command or bandwidth limits")
        // Exchange Online over SMTP: more than 3 connections of a mailbox at once, or sending
        // faster than it allows (`432 4.3.2 … limit exceeded`).
        || matches!(&e.kind, mailbridge_proto::ErrorKind::Rejected { transient: true, words } if words.contains("4.3.2"))
}

impl SyncError {
    /// Whether trying again later may help (network, timeouts, a provider outage).
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Proto(e) => e.is_transient(),
            SyncError::Store(_) => true,
            SyncError::Token(e) => e.is_transient(),
            SyncError::NoPassword => false,
            SyncError::Interrupted => true,
        }
    }

    /// Whether the provider said the account is over one of its limits for now (Gmail:
    /// `[OVERQUOTA]`, "Account exceeded command or bandwidth limits", when a day's download
    /// allowance is spent; Exchange Online: `432 4.3.2`): weather, not a failure — the
    /// mailbox waits and resumes.
    pub fn is_provider_limit(&self) -> bool {
        matches!(self, SyncError::Proto(e) if is_provider_limit(e))
    }

    /// Whether the database was the trouble (not answering, or its disk full): nothing about
    /// the mailbox, so it must not count towards disabling it.
    pub fn is_database_outage(&self) -> bool {
        match self {
            SyncError::Store(e) | SyncError::Token(crate::tokens::TokenError::Store(e)) => {
                e.is_database_outage()
            }
            _ => false,
        }
    }
}
