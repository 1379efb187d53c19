//! [`Limits`]: how much one client may hold of this node — time to send a request, body
//! size, idle connections, connections at once — and [`TestRuns`], the cap on Test & Enable
//! runs at once (each opens mail connections).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// What the HTTP server allows; [`Default`] is what `mailbridge serve` uses unless configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A request head (request line and headers) must arrive within this, counted from the
    /// connection's start or from the first byte after an idle spell (`http_header_timeout_ms`).
    pub header_timeout: Duration,
    /// A request body must arrive within this, counted from the end of its head, however
    /// steadily it trickles (`http_body_timeout_ms`).
    pub body_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this
    /// (`http_idle_timeout_ms`).
    pub idle_timeout: Duration,
    /// Larger request bodies are refused with 413 (`http_max_body_bytes`).
    pub max_body_bytes: usize,
    /// Connections served at once; more wait in the listen queue until one closes
    /// (`http_max_connections`).
    pub max_connections: usize,
    /// Test & Enable runs at once on this node; more are answered 429
    /// (`max_test_enable_runs`).
    pub max_test_enable_runs: usize,
    /// Pending "Sign in" links per mailbox; starting one more drops the oldest
    /// (`max_pending_sign_ins`).
    pub max_pending_sign_ins: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            // The send API takes base64 attachments: 25 MiB of JSON.
            max_body_bytes: 25 * 1024 * 1024,
            max_connections: 1024,
            max_test_enable_runs: 8,
            max_pending_sign_ins: mailbridge_sync::DEFAULT_MAX_PENDING_SIGN_INS,
        }
    }
}

/// How long a client refused by [`TestRuns`] is asked to wait: most runs end within a few
/// seconds; one against an unresponsive server ends at the mail timeout.
pub const TEST_RUN_RETRY_AFTER_SECS: u64 = 10;

/// The Test & Enable runs this node allows at once. A run holds its permit until it ends, so
/// a crowd of requests against hanging mail servers cannot open connections without bound.
#[derive(Clone)]
pub struct TestRuns {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl TestRuns {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A place for one more run, or a 429 `too_many_requests` (with Retry-After) when every
    /// place is taken. Refused rather than queued: a queued request would hold its HTTP
    /// connection (and perhaps a proxy's timeout) for an unknown time.
    pub fn try_start(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!(
                    "{} Test & Enable runs are already in progress on this server, the most it runs at once (setting max_test_enable_runs); try again in {TEST_RUN_RETRY_AFTER_SECS} seconds",
                    self.limit
                ),
            )
            .with_retry_after(TEST_RUN_RETRY_AFTER_SECS)
        })
    }
}
