//! [`CountingProxy`]: a TCP relay in front of a real server that counts connections, so a
//! test can prove a connection limit holds; or cuts each connection once the server has sent
//! a given number of bytes, as a network failure in the middle of a transfer would.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct CountingProxy {
    pub port: u16,
    peak: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
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
        let counters = (Arc::clone(&open), Arc::clone(&peak), Arc::clone(&total));
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (open, peak, total) =
                    (counters.0.clone(), counters.1.clone(), counters.2.clone());
                tokio::spawn(async move {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    total.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await {
                        match cut_after {
                            None => {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
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
