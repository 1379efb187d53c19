//! [`Limits`]: how much one client may hold of this node — time to send a request, body
//! size, idle connections, connections at once.

use std::time::Duration;

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
        }
    }
}
