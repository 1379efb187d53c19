//! Connections: [`Endpoint`] (where, and how protected), [`TlsSettings`] (which
//! certificates to trust), and [`MailStream`] (plain or TLS, upgraded in place by STARTTLS).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

pub use mailbridge_core::Security;
use rustls_pki_types::ServerName;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{ErrorKind, ProtoError};

/// A server to dial, how to protect the connection, and how long to wait for each step.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Bound on connecting and on every read; a server that accepts and then never
    /// answers fails with a timeout instead of hanging a task.
    pub timeout: Duration,
    /// The largest message a POP3 download (`RETR`, `TOP`) accepts, in bytes; a larger one
    /// fails with [`ErrorKind::TooLarge`] instead of filling memory. Default
    /// [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
}

/// 64 MiB: above the default message size limits of the big providers (Gmail 25 MB,
/// Microsoft 365 35 MB), low enough that a server sending an endless message cannot take
/// the process down.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16, security: Security) -> Self {
        Self {
            host: host.into(),
            port,
            security,
            timeout: Duration::from_secs(30),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    #[must_use]
    pub fn with_max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// `host:port`, for messages.
    pub fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub(crate) fn error(&self, step: &str, kind: ErrorKind) -> ProtoError {
        ProtoError::new(&self.label(), step, kind)
    }

    /// Runs `fut` as `step`, failing once the server has sent nothing for the endpoint's
    /// timeout (counted from the start of the step, or from the last byte that arrived on
    /// `activity`, whichever is later). A long answer that keeps arriving — a batch of large
    /// messages over a slow link — takes as long as it takes; a server or path that goes
    /// quiet fails within the timeout.
    pub(crate) async fn timed_quiet<T>(
        &self,
        step: &str,
        activity: &Activity,
        fut: impl Future<Output = Result<T, ProtoError>>,
    ) -> Result<T, ProtoError> {
        let started = tokio::time::Instant::now();
        let mut fut = std::pin::pin!(fut);
        loop {
            let quiet_since = activity.last().max(started);
            tokio::select! {
                result = &mut fut => return result,
                () = tokio::time::sleep_until(quiet_since + self.timeout) => {
                    if activity.last().max(started) == quiet_since {
                        return Err(self.error(step, ErrorKind::Timeout(self.timeout)));
                    }
                }
            }
        }
    }

    /// Runs `fut` within the endpoint's timeout, as `step`.
    pub(crate) async fn timed<T>(
        &self,
        step: &str,
        fut: impl Future<Output = Result<T, ProtoError>>,
    ) -> Result<T, ProtoError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.error(step, ErrorKind::Timeout(self.timeout))),
        }
    }
}

/// When bytes last arrived on a connection (see [`Endpoint::timed_quiet`]); clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    origin: tokio::time::Instant,
    /// Nanoseconds from `origin` to the last byte read.
    last: Arc<AtomicU64>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let since = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(since, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// A stream that notes on an [`Activity`] every time bytes arrive through it (after TLS, so
/// a slow link is seen a TLS record at a time: at most 16 KiB).
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            me.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The certificates a TLS connection trusts: the Mozilla roots (webpki-roots), plus any
/// extra CA an operator configures for servers with a private CA; and which servers may be
/// reached without TLS at all (`security: none`): this machine, and the hosts an operator
/// lists. Anywhere else a password or a bearer token would cross the network in clear.
#[derive(Clone)]
pub struct TlsSettings {
    connector: TlsConnector,
    plaintext_hosts: Arc<Vec<String>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSettings")
    }
}

impl TlsSettings {
    /// Trusts the public roots and the certificates in `extra_ca_pem`, if given.
    pub fn new(extra_ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            let mut added = 0;
            for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(pem) {
                let cert: rustls_pki_types::CertificateDer<'static> =
                    cert.map_err(|e| format!("cannot read a certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("cannot trust a certificate: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("the CA file holds no PEM certificate".to_owned());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            plaintext_hosts: Arc::new(Vec::new()),
        })
    }

    /// Also lets these hosts (names or IP addresses, compared without case) be reached
    /// without TLS.
    #[must_use]
    pub fn with_plaintext_hosts(mut self, hosts: &[String]) -> Self {
        self.plaintext_hosts = Arc::new(hosts.iter().map(|h| h.to_ascii_lowercase()).collect());
        self
    }

    /// Whether `host` may be reached without TLS: a loopback address, `localhost`, or a
    /// listed host. Decided on the name as written — never by resolving it, so nothing is
    /// sent anywhere to decide.
    pub fn plaintext_allowed(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        loopback
            || self
                .plaintext_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Public roots only.
    pub fn public() -> Self {
        Self::new(None).unwrap_or_else(|e| unreachable!("the built-in roots load: {e}"))
    }
}

/// TCP keepalive on every mail connection: after 60 s without traffic the kernel probes
/// every 15 s, and 4 unanswered probes fail the connection — a server, NAT or firewall that
/// dropped it without a word is noticed within about 2 minutes, as a read error, even while
/// the session waits in IDLE. Keepalive cannot notice a middlebox that still acknowledges at
/// the TCP level but passes nothing on (or a server process that hangs): that is left to the
/// read timeout and to the sync engine re-issuing IDLE (`EngineConfig::idle_refresh`).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 4;

fn keepalive() -> TcpKeepalive {
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let keepalive = keepalive
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    keepalive
}

/// A connection, plain or TLS.
#[derive(Debug)]
pub enum MailStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-memory peer, so the fuzz targets (`crate::fuzzing`) drive the real sessions
    /// over scripted bytes. Never built otherwise; STARTTLS leaves it as it is.
    #[cfg(any(test, feature = "fuzzing"))]
    #[doc(hidden)]
    Memory(tokio::io::DuplexStream),
}

impl MailStream {
    /// Dials the endpoint; with implicit TLS, also completes the handshake.
    pub async fn connect(endpoint: &Endpoint, tls: &TlsSettings) -> Result<Self, ProtoError> {
        if endpoint.security == Security::None && !tls.plaintext_allowed(&endpoint.host) {
            // Every session here logs in: on a plain connection the password or token would
            // cross the network readable by anyone on the way.
            return Err(endpoint.error(
                "connect",
                ErrorKind::Unsupported(format!(
                    "refusing to log in to {} without TLS (security none): passwords and tokens would travel in clear; use tls or starttls, or list the host in plaintext_mail_hosts if it is on a network you trust",
                    endpoint.host
                )),
            ));
        }
        let tcp = endpoint
            .timed("connect", async {
                TcpStream::connect((endpoint.host.as_str(), endpoint.port))
                    .await
                    .map_err(|e| endpoint.error("connect", ErrorKind::Connect(e.to_string())))
            })
            .await?;
        let _ = tcp.set_nodelay(true);
        if let Err(e) = SockRef::from(&tcp).set_tcp_keepalive(&keepalive()) {
            tracing::debug!(server = %endpoint.label(), error = %e, "cannot turn on TCP keepalive");
        }
        let plain = MailStream::Plain(tcp);
        match endpoint.security {
            Security::Tls => plain.upgrade(endpoint, tls).await,
            Security::Starttls | Security::None => Ok(plain),
        }
    }

    /// The TLS handshake, for implicit TLS or after STARTTLS.
    pub async fn upgrade(self, endpoint: &Endpoint, tls: &TlsSettings) -> Result<Self, ProtoError> {
        let MailStream::Plain(tcp) = self else {
            return Ok(self);
        };
        let name = ServerName::try_from(endpoint.host.clone())
            .map_err(|e| endpoint.error("start TLS", ErrorKind::Tls(e.to_string())))?;
        let stream = endpoint
            .timed("start TLS", async {
                tls.connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| endpoint.error("start TLS", ErrorKind::Tls(e.to_string())))
            })
            .await?;
        Ok(MailStream::Tls(Box::new(stream)))
    }
}

impl AsyncRead for MailStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(any(test, feature = "fuzzing"))]
            MailStream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(any(test, feature = "fuzzing"))]
            MailStream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(any(test, feature = "fuzzing"))]
            MailStream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(any(test, feature = "fuzzing"))]
            MailStream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_and_listed_hosts_go_without_tls() {
        let tls = TlsSettings::public().with_plaintext_hosts(&["Mail.Office.Lan".to_owned()]);
        for ok in [
            "127.0.0.1",
            "127.5.6.7",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST",
            "mail.office.lan",
        ] {
            assert!(tls.plaintext_allowed(ok), "{ok}");
        }
        for refused in [
            "10.0.0.5",
            "192.168.1.10",
            "imap.gmail.com",
            "localhost.example.com",
            "0.0.0.0",
        ] {
            assert!(!tls.plaintext_allowed(refused), "{refused}");
        }
    }

    #[tokio::test]
    async fn a_plain_connection_elsewhere_is_refused_before_anything_is_sent() {
        // Not this machine. Even if the check were missing, no packet would leave: the kernel
        // refuses a TCP connection to the limited broadcast address itself.
        let endpoint = Endpoint::new("255.255.255.255", 143, Security::None)
            .with_timeout(std::time::Duration::from_secs(60));
        let started = std::time::Instant::now();
        let e = MailStream::connect(&endpoint, &TlsSettings::public())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("without TLS") && e.contains("plaintext_mail_hosts"),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn mail_connections_have_tcp_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = Endpoint::new("127.0.0.1", port, Security::None);
        let MailStream::Plain(tcp) = MailStream::connect(&endpoint, &TlsSettings::public())
            .await
            .unwrap()
        else {
            panic!("a plain connection was asked for");
        };
        let socket = SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(15)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
    }
}
