//! [`CountingProxy`]: a TCP relay in front of a real server that counts connections, so a
//! test can prove a connection limit holds; or cuts each connection once the server has sent
//! a given number of bytes, as a network failure in the middle of a transfer would; or, on
//! [`CountingProxy::stall`], goes silent on the connections open at that moment, as a NAT or
//! firewall that forgot them would.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

pub struct CountingProxy {
    pub port: u16,
    peak: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    /// Bumped by [`CountingProxy::stall`]; a connection accepted before the last bump is
    /// stalled.
    stalls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// Relays 127.0.0.1:`port` (a free one) to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        Self::relay(target, None).await
    }

    /// Like [`CountingProxy::start`], but each connection is cut (both ways, no goodbye) as
    /// soon as the server has sent `server_bytes` bytes through it.
    pub async fn cutting_after(target: u16, server_bytes: usize) -> anyhow::Result<Self> {
        Self::relay(target, Some(server_bytes)).await
    }

    async fn relay(target: u16, cut_after: Option<usize>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (open, peak, total): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            Default::default();
        let stalls = Arc::new(AtomicUsize::new(0));
        let counters = (Arc::clone(&open), Arc::clone(&peak), Arc::clone(&total));
        let stall_count = Arc::clone(&stalls);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (open, peak, total) =
                    (counters.0.clone(), counters.1.clone(), counters.2.clone());
                let stalls = stall_count.clone();
                tokio::spawn(async move {
                    // Stalled once `stall` is called after this connection was accepted.
                    let accepted_at = stalls.load(Ordering::SeqCst);
                    let stalled = move || stalls.load(Ordering::SeqCst) > accepted_at;
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    total.fetch_add(1, Ordering::SeqCst);
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await {
                        match cut_after {
                            None => stallable_relay(client, server, stalled).await,
                            Some(limit) => cut_relay(client, server, limit).await,
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            port,
            peak,
            total,
            stalls,
            task,
        })
    }

    /// The most connections that were open at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Connections made in all.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// From now on, every connection open at this moment swallows what either side sends:
    /// the proxy keeps reading from both and passes nothing on, closing nothing (not even
    /// when a side hangs up) — a NAT or firewall that forgot the connection, or a path that
    /// went dark. Connections made afterwards are relayed as usual. TCP keepalive cannot
    /// notice this on loopback: the kernel still acknowledges on both sides of the proxy.
    pub fn stall(&self) {
        self.stalls.fetch_add(1, Ordering::SeqCst);
    }
}

/// Relays both ways, passing a side's end of stream on, until `stalled()` turns true; from
/// then on reads both sides and drops what it reads.
async fn stallable_relay(client: TcpStream, server: TcpStream, stalled: impl Fn() -> bool + Clone) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Both write halves live until both directions are over: dropping one would send a FIN.
    let _halves = tokio::join!(
        pipe(client_read, server_write, stalled.clone()),
        pipe(server_read, client_write, stalled),
    );
}

/// One direction of [`stallable_relay`]; gives back the write half.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    stalled: impl Fn() -> bool,
) -> OwnedWriteHalf {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stalled() {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if !stalled() {
        let _ = to.shutdown().await;
    }
    to
}

/// Relays until the server has sent `limit` bytes, then drops both connections.
async fn cut_relay(client: TcpStream, server: TcpStream, limit: usize) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut sent = 0;
    let mut buf = vec![0; 16 * 1024];
    while sent < limit {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(limit - sent),
        };
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    upstream.abort();
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
