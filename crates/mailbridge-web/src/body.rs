//! Request bodies within [`crate::Limits`]: [`limit_body`] refuses a declared length over
//! `max_body_bytes` before reading a byte of it and gives every body a deadline
//! (`body_timeout` from the end of the head), so a body that trickles in is cut rather than
//! holding a connection and a handler for as long as the client likes.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;

/// The body limits, as the middleware's state and as a request extension (for the
/// extractors' error messages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Refuses a declared body over the limit with 413 and puts a deadline on the rest.
pub(crate) async fn limit_body(
    State(limits): State<BodyLimits>,
    mut req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return too_large(Some(limits)).into_response();
    }
    req.extensions_mut().insert(limits);
    if req.body().size_hint().exact() == Some(0) {
        return next.run(req).await;
    }
    let deadline = Instant::now() + limits.timeout;
    let req = req.map(|body| {
        Body::new(DeadlineBody {
            body,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timeout: limits.timeout,
        })
    });
    next.run(req).await
}

/// A body that fails with [`BodyTimedOut`] once its deadline passes, however steadily bytes
/// arrive before then.
struct DeadlineBody {
    body: Body,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut {
                timeout: this.timeout,
            }))));
        }
        Pin::new(&mut this.body)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The request body did not arrive in full before its deadline.
#[derive(Debug)]
pub(crate) struct BodyTimedOut {
    timeout: Duration,
}

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body did not arrive in full within {} ms",
            self.timeout.as_millis()
        )
    }
}

impl StdError for BodyTimedOut {}

/// Whether `e` (or what caused it) is a body cut at its deadline.
pub(crate) fn is_timeout(e: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// 413 `payload_too_large`, naming the limit and the setting that sets it.
pub(crate) fn too_large(limits: Option<BodyLimits>) -> ApiError {
    let limit = limits.map_or_else(String::new, |l| format!(" ({})", size(l.max_bytes)));
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the request body is larger than this server accepts{limit}; send a smaller one, or raise the setting http_max_body_bytes"
        ),
    )
}

/// 408 `request_timeout`: the body was cut at its deadline.
pub(crate) fn timed_out(limits: Option<BodyLimits>) -> ApiError {
    let within = limits.map_or_else(String::new, |l| {
        format!(" within {} ms", l.timeout.as_millis())
    });
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive in full{within} (setting http_body_timeout_ms); send it again over a faster connection"
        ),
    )
}

/// A byte count as a person reads it: `25 MiB`, `64 KiB`, `1000 bytes`.
fn size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_settings() {
        assert_eq!(size(25 * 1024 * 1024), "25 MiB");
        assert_eq!(size(64 * 1024), "64 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }

    #[test]
    fn a_timeout_is_found_under_wrappers() {
        let e: BoxError = Box::new(BodyTimedOut {
            timeout: Duration::from_secs(1),
        });
        let wrapped = axum::Error::new(e);
        assert!(is_timeout(&wrapped));
        assert!(!is_timeout(&std::io::Error::other("x")));
    }
}
