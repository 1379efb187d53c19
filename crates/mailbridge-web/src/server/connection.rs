//! [`Activity`]: what one connection is doing — waiting for a request head, serving a
//! request, or idle between requests — and the deadline that goes with it; [`Watched`]
//! reports its socket's reads and writes.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection waits for its
//! next request, so it cannot tell a slow head from an idle connection; this does both.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Limits;

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for (the rest of) a request head since this instant: a new connection, or
    /// the first bytes after an idle spell.
    Head(Instant),
    /// Requests being served (handlers running); no deadline here — bodies have their own.
    Busy(usize),
    /// Between requests since the last response or write.
    Idle(Instant),
}

/// Why a connection was closed by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// No complete request head within `header_timeout`.
    Head,
    /// Idle for `idle_timeout`.
    Idle,
}

pub(crate) struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
        })
    }

    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        let before = *phase;
        *phase = f(before);
        // Only a change of phase moves the deadline earlier; later ones are found when the
        // old deadline is reached.
        if std::mem::discriminant(&before) != std::mem::discriminant(&*phase) {
            self.changed.notify_one();
        }
    }

    fn read(&self) {
        self.update(|p| match p {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    fn wrote(&self) {
        self.update(|p| match p {
            Phase::Idle(_) => Phase::Idle(Instant::now()),
            other => other,
        });
    }

    /// A request head arrived and its handler starts; the guard marks its end.
    pub(crate) fn request(self: &Arc<Self>) -> RequestGuard {
        self.update(|p| match p {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
        RequestGuard(self.clone())
    }

    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expired)> {
        match *self.phase.lock().unwrap_or_else(PoisonError::into_inner) {
            Phase::Head(since) => Some((since + limits.header_timeout, Expired::Head)),
            Phase::Idle(since) => Some((since + limits.idle_timeout, Expired::Idle)),
            Phase::Busy(_) => None,
        }
    }

    /// Completes when the connection has outlived its deadline.
    pub(crate) async fn expired(&self, limits: &Limits) -> Expired {
        loop {
            let changed = self.changed.notified();
            match self.deadline(limits) {
                None => changed.await,
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }
}

/// Ends one request's busy spell when its handler is done (or dropped).
pub(crate) struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.update(|p| match p {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }
}

/// A socket whose reads and writes are reported to its [`Activity`].
pub(crate) struct Watched<T> {
    pub(crate) io: T,
    pub(crate) activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_must_send_its_head_in_time() {
        let a = Activity::new();
        let start = Instant::now();
        assert_eq!(a.expired(&limits()).await, Expired::Head);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_has_no_deadline_and_idle_follows_it() {
        let a = Activity::new();
        let start = Instant::now();
        let guard = a.request();
        let l = limits();
        let waiting = a.expired(&l);
        tokio::pin!(waiting);
        // A long handler is not cut by either timeout.
        tokio::select! {
            _ = &mut waiting => panic!("expired while busy"),
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
        drop(guard);
        assert_eq!(waiting.await, Expired::Idle);
        assert_eq!(start.elapsed(), Duration::from_secs(360));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_after_idle_starts_the_head_clock() {
        let a = Activity::new();
        drop(a.request());
        tokio::time::sleep(Duration::from_secs(30)).await;
        a.read();
        let start = Instant::now();
        assert_eq!(a.expired(&limits()).await, Expired::Head);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
