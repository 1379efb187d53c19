//! [`run`]: the HTTP/1.1 server under the router, within [`Limits`] — at most
//! `max_connections` connections (more wait in the listen queue), each closed when its
//! request head is late or it idles too long — and a graceful stop: on shutdown it accepts
//! no more, lets the requests in flight finish, and closes idle connections.

mod connection;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

use crate::Limits;
use connection::{Activity, Expired, Watched};

/// Serves `app` on `listener` until `shutdown` completes, then drains.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // Our own clock (connection::Activity) tells a late head from an idle connection.
    http.header_read_timeout(None);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot first, then accept: past the cap, connections wait in the kernel's listen
        // queue (and a client's connect timeout), not in our memory.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.map_err(io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_per_connection(&e) {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::error!(error = %e, "cannot accept connections");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let activity = Activity::new();
        let io = TokioIo::new(Watched {
            io: stream,
            activity: activity.clone(),
        });
        let service = {
            let activity = activity.clone();
            let app = app.clone();
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let busy = activity.request();
                let mut app = app.clone();
                async move {
                    let response = app.call(req).await;
                    drop(busy);
                    response
                }
            })
        };
        let conn = graceful.watch(http.serve_connection(io, service));
        let limits = limits.clone();
        tokio::spawn(async move {
            tokio::select! {
                served = conn => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                why = activity.expired(&limits) => match why {
                    Expired::Head => tracing::debug!(%peer, "closed a connection: no complete request head within http_header_timeout_ms"),
                    Expired::Idle => tracing::debug!(%peer, "closed an idle connection (http_idle_timeout_ms)"),
                },
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Errors that concern one connection only (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
