//! [`CountingProxy`]: a TCP relay in front of a real server that counts connections, so a
//! test can prove a connection limit holds; or cuts each connection once the server has sent
//! a given number of bytes, as a network failure in the middle of a transfer would; or, on
//! [`CountingProxy::stall`], goes silent on the connections open at that moment, as a NAT or
//! firewall that forgot them would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    /// See [`CountingProxy::set_down`].
    down: Arc<AtomicBool>,
    /// Wakes the open connections when the proxy goes down, so they close.
    went_down: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxy does to each connection.
#[derive(Clone, Copy)]
enum Mode {
    Relay,
    CutAfterServerBytes(usize),
    LoseAnswerTo(&'static [u8]),
}

impl CountingProxy {
    /// Relays 127.0.0.1:`port` (a free one) to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        Self::relay(target, Mode::Relay).await
    }

    /// Like [`CountingProxy::start`], but each connection is cut (both ways, no goodbye) as
    /// soon as the server has sent `server_bytes` bytes through it.
    pub async fn cutting_after(target: u16, server_bytes: usize) -> anyhow::Result<Self> {
        Self::relay(target, Mode::CutAfterServerBytes(server_bytes)).await
    }

    /// Like [`CountingProxy::start`], but once the client has sent `pattern` (e.g. SMTP's
    /// final `\r\n.\r\n`) and the server has it, the client's connection is cut: the server's
    /// answer to it is lost on the way back, as when a network fails at that very moment.
    /// The server's side stays open a little, so it finishes what it was doing.
    pub async fn losing_the_answer_to(target: u16, pattern: &'static [u8]) -> anyhow::Result<Self> {
        Self::relay(target, Mode::LoseAnswerTo(pattern)).await
    }

    async fn relay(target: u16, mode: Mode) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (open, peak, total): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            Default::default();
        let stalls = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let went_down = Arc::new(tokio::sync::Notify::new());
        let closing = Arc::clone(&went_down);
        let counters = (Arc::clone(&open), Arc::clone(&peak), Arc::clone(&total));
        let stall_count = Arc::clone(&stalls);
        let is_down = Arc::clone(&down);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    // Refused: closed at once, before the server's greeting.
                    drop(client);
                    continue;
                }
                let (open, peak, total) =
                    (counters.0.clone(), counters.1.clone(), counters.2.clone());
                let stalls = stall_count.clone();
                let closing = closing.clone();
                tokio::spawn(async move {
                    // Stalled once `stall` is called after this connection was accepted.
                    let accepted_at = stalls.load(Ordering::SeqCst);
                    let stalled = move || stalls.load(Ordering::SeqCst) > accepted_at;
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    total.fetch_add(1, Ordering::SeqCst);
                    let went_down = closing.notified();
                    // Counted open until the client closes (or the relay ends), once.
                    let counted = std::sync::Once::new();
                    let close = || {
                        counted.call_once(|| {
                            open.fetch_sub(1, Ordering::SeqCst);
                        })
                    };
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await {
                        let relay = async {
                            match mode {
                                Mode::Relay => {
                                    stallable_relay(client, server, stalled, close).await;
                                }
                                Mode::CutAfterServerBytes(limit) => {
                                    cut_relay(client, server, limit).await;
                                }
                                Mode::LoseAnswerTo(pattern) => {
                                    lose_answer_relay(client, server, pattern).await;
                                }
                            }
                        };
                        // Going down closes the connection (both ways, no goodbye).
                        tokio::select! {
                            () = relay => {}
                            () = went_down => {}
                        }
                    }
                    close();
                });
            }
        });
        Ok(Self {
            port,
            peak,
            total,
            stalls,
            down,
            went_down,
            task,
        })
    }

    /// While down, the connections open are cut and every new one is closed at once, as a
    /// server stopped for maintenance (or refusing connections) would.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.went_down.notify_waiters();
        }
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
/// `client_gone` runs as soon as the client has closed its side: the connection is the
/// client's no longer, even while the server takes a moment to close its own.
async fn stallable_relay(
    client: TcpStream,
    server: TcpStream,
    stalled: impl Fn() -> bool + Clone,
    client_gone: impl FnOnce(),
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Both write halves live until both directions are over: dropping one would send a FIN.
    let upstream = stalled.clone();
    let _halves = tokio::join!(
        async move {
            let half = pipe(client_read, server_write, upstream).await;
            client_gone();
            half
        },
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

/// Relays both ways until the client has sent `pattern` and it went on to the server; then
/// drops the client's connection and discards what the server answers, closing the server's
/// side after a few seconds.
async fn lose_answer_relay(client: TcpStream, server: TcpStream, pattern: &'static [u8]) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (sent, mut seen) = tokio::sync::oneshot::channel::<()>();
    let upstream = tokio::spawn(async move {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return server_write,
                Ok(n) => n,
            };
            if server_write.write_all(&buf[..n]).await.is_err() {
                return server_write;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(pattern.len()).any(|w| w == pattern) {
                let _ = sent.send(());
                return server_write;
            }
            let keep = tail.len().saturating_sub(pattern.len());
            tail.drain(..keep);
        }
    });
    let mut buf = vec![0; 16 * 1024];
    loop {
        tokio::select! {
            _ = &mut seen => break,
            read = server_read.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
    drop(client_write);
    let server_write = upstream.await.ok();
    // The server's answer goes nowhere; its side closes once it has had time to finish.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while let Ok(n) = server_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    drop(server_write);
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
