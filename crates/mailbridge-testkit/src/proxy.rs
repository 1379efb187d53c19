//! [`CountingProxy`]: a TCP relay in front of a real server that counts connections (and
//! remembers when each was made), so a test can prove a connection or login limit holds; and
//! a fault injector. A [`Fault`] is a [`Step`] of a mail session — the greeting, the login,
//! SELECT, the middle of a FETCH literal, IDLE, DONE, UIDL, the middle of a RETR, MAIL FROM,
//! RCPT TO, DATA, the middle of the message, the answer to its final dot — recognised in the
//! bytes going by (so the client talks plain: `security: none`, which Mailbridge allows to
//! this machine), and an [`Action`] taken there: cut, reset, stall or drip. A fault fires the
//! [`Times::Nth`] time its step is reached over all connections, and never again, so the
//! client can recover on the next connection; or [`Times::Every`] time.
//!
//! Besides faults: [`CountingProxy::stall`] silences the connections open at that moment, as
//! a NAT or firewall that forgot them would, and [`CountingProxy::set_down`] refuses
//! connections, as a server stopped for maintenance would.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Where in a session a [`Fault`] fires. A step the client starts (a command) fires at the
/// start of the command's line, so the server never gets the command; a step the server
/// starts (an answer, a message) fires before the first byte that is not passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The server's first bytes on a connection: its greeting (IMAP, POP3, SMTP).
    Greeting,
    /// The login command: IMAP `AUTHENTICATE` or `LOGIN`, POP3 `AUTH` or `USER`, SMTP `AUTH`.
    Login,
    /// IMAP `SELECT` or `EXAMINE`.
    Select,
    /// This many bytes into the first literal (`{n}`) of the server's answer to an IMAP
    /// `FETCH`: in the middle of a message.
    FetchLiteral(usize),
    /// The server's answer to IMAP `IDLE` (`+ idling`): from here the session is idling.
    Idle,
    /// IMAP `DONE`, ending IDLE.
    Done,
    /// POP3 `UIDL`.
    Uidl,
    /// This many bytes into the message in the server's answer to POP3 `RETR` (after its
    /// `+OK` line).
    Retr(usize),
    /// SMTP `MAIL FROM`.
    MailFrom,
    /// SMTP `RCPT TO`.
    RcptTo,
    /// SMTP `DATA`.
    Data,
    /// This many bytes into the message the client sends after SMTP `DATA`.
    Message(usize),
    /// The server's answer to the end of an SMTP message (`<CRLF>.<CRLF>`): the server has
    /// the whole message and has answered, and the client does not know.
    AfterDot,
    /// The server's answer to the client's `pattern`.
    AnswerTo(&'static [u8]),
    /// Once the server has sent this many bytes on the connection.
    ServerBytes(usize),
}

/// What a [`Fault`] does to the connection where it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Both connections closed (FIN): a path that fails cleanly.
    Cut,
    /// Both connections reset (RST, `SO_LINGER` 0): the next read or write on either side
    /// fails with "connection reset".
    Reset,
    /// From here on whatever either side sends is swallowed and nothing is closed until the
    /// client hangs up: a NAT or firewall that forgot the connection. TCP keepalive cannot
    /// notice it on loopback: the kernel still acknowledges on both sides of the proxy.
    Stall,
    /// From here on every byte, both ways, goes on alone after this pause: a slow link that
    /// still moves.
    Drip(Duration),
    /// The server's bytes from here are replaced by these, then both connections are closed:
    /// a provider's refusal no test server gives on demand (for a step the server starts,
    /// such as [`Step::Greeting`]).
    Answer(&'static [u8]),
}

/// Which times a step is reached a [`Fault`] fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// Only the nth time (from 1) the step is reached, counted over all connections.
    Nth(usize),
    /// Every time, on every connection.
    Every,
}

/// A [`Step`] and what to do there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub step: Step,
    pub action: Action,
    pub times: Times,
}

impl Fault {
    /// Fires the first time `step` is reached, then never again.
    pub fn once(step: Step, action: Action) -> Self {
        Self {
            step,
            action,
            times: Times::Nth(1),
        }
    }

    /// Fires every time `step` is reached.
    pub fn every(step: Step, action: Action) -> Self {
        Self {
            step,
            action,
            times: Times::Every,
        }
    }
}

pub struct CountingProxy {
    pub port: u16,
    peak: Arc<AtomicUsize>,
    /// Bytes the server sent, over all connections.
    served: Arc<AtomicUsize>,
    /// When each connection was accepted.
    accepted: Arc<Mutex<Vec<Instant>>>,
    /// Bumped by [`CountingProxy::stall`]; a connection accepted before the last bump is
    /// stalled.
    stalls: Arc<AtomicUsize>,
    /// See [`CountingProxy::set_down`].
    down: Arc<AtomicBool>,
    /// Wakes the open connections when the proxy goes down, so they close.
    went_down: Arc<tokio::sync::Notify>,
    injector: Option<Arc<Injector>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    /// Relays 127.0.0.1:`port` (a free one) to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        Self::relay(target, None).await
    }

    /// Like [`CountingProxy::start`], with `fault` injected.
    pub async fn with_fault(target: u16, fault: Fault) -> anyhow::Result<Self> {
        Self::relay(target, Some(fault)).await
    }

    /// Like [`CountingProxy::start`], but each connection is cut (both ways, no goodbye) as
    /// soon as the server has sent `server_bytes` bytes through it.
    pub async fn cutting_after(target: u16, server_bytes: usize) -> anyhow::Result<Self> {
        Self::with_fault(
            target,
            Fault::every(Step::ServerBytes(server_bytes), Action::Cut),
        )
        .await
    }

    /// Like [`CountingProxy::start`], but once the client has sent `pattern` (e.g. SMTP's
    /// final `\r\n.\r\n`), the server's answer to it is lost on the way back: both
    /// connections are cut as it arrives, as when a network fails at that very moment.
    pub async fn losing_the_answer_to(target: u16, pattern: &'static [u8]) -> anyhow::Result<Self> {
        Self::with_fault(target, Fault::every(Step::AnswerTo(pattern), Action::Cut)).await
    }

    async fn relay(target: u16, fault: Option<Fault>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (open, peak, served): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            Default::default();
        let accepted: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let stalls = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let went_down = Arc::new(tokio::sync::Notify::new());
        let injector = fault.map(|fault| {
            Arc::new(Injector {
                fault,
                reached: AtomicUsize::new(0),
                fired: AtomicUsize::new(0),
            })
        });
        let task = {
            let (peak, served, accepted, stalls, down, went_down, injector) = (
                peak.clone(),
                served.clone(),
                accepted.clone(),
                stalls.clone(),
                down.clone(),
                went_down.clone(),
                injector.clone(),
            );
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        // Refused: closed at once, before the server's greeting.
                        drop(client);
                        continue;
                    }
                    let (open, peak, served, stalls, went_down, injector) = (
                        open.clone(),
                        peak.clone(),
                        served.clone(),
                        stalls.clone(),
                        went_down.clone(),
                        injector.clone(),
                    );
                    accepted
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Instant::now());
                    tokio::spawn(async move {
                        // Stalled once `stall` is called after this connection was accepted.
                        let accepted_at = stalls.load(Ordering::SeqCst);
                        let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        let went_down = went_down.notified();
                        // Counted open until the client closes (or the relay ends), once.
                        let counted = std::sync::Once::new();
                        let close = || {
                            counted.call_once(|| {
                                open.fetch_sub(1, Ordering::SeqCst);
                            })
                        };
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await {
                            // Each byte of a drip goes out on its own, not held back for the
                            // next (Nagle); nothing else cares.
                            let _ = (client.set_nodelay(true), server.set_nodelay(true));
                            let conn = Conn {
                                watch: Mutex::new(
                                    injector.as_ref().map(|i| Watch::new(i.fault.step)),
                                ),
                                injector,
                                served,
                                phase: watch::channel(Phase::Relay).0,
                                stalled: Box::new(move || {
                                    stalls.load(Ordering::SeqCst) > accepted_at
                                }),
                            };
                            // Going down closes the connection (both ways, no goodbye).
                            tokio::select! {
                                () = relay(client, server, &conn, close) => {}
                                () = went_down => {}
                            }
                        }
                        close();
                    });
                }
            })
        };
        Ok(Self {
            port,
            peak,
            served,
            accepted,
            stalls,
            down,
            went_down,
            injector,
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

    /// Bytes the server sent through the proxy, over all connections.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Connections made in all.
    pub fn total(&self) -> usize {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The most connections made within any `window` (a login limit holds when this stays
    /// within it).
    pub fn most_within(&self, window: Duration) -> usize {
        let accepted = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
        accepted
            .iter()
            .enumerate()
            .map(|(i, start)| {
                accepted[i..]
                    .iter()
                    .take_while(|t| t.duration_since(*start) < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// How many times the fault fired.
    pub fn fired(&self) -> usize {
        self.injector
            .as_ref()
            .map_or(0, |i| i.fired.load(Ordering::SeqCst))
    }

    /// From now on, every connection open at this moment swallows what either side sends:
    /// the proxy keeps reading from both and passes nothing on, closing nothing until the
    /// client hangs up — a NAT or firewall that forgot the connection, or a path that went
    /// dark. Connections made afterwards are relayed as usual. TCP keepalive cannot notice
    /// this on loopback: the kernel still acknowledges on both sides of the proxy.
    pub fn stall(&self) {
        self.stalls.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fault and how often its step was reached (over all connections).
struct Injector {
    fault: Fault,
    reached: AtomicUsize,
    fired: AtomicUsize,
}

impl Injector {
    /// The step was reached once more: whether the fault fires now.
    fn reach(&self) -> bool {
        let fires = match self.fault.times {
            Times::Every => true,
            Times::Nth(n) => self.reached.fetch_add(1, Ordering::SeqCst) + 1 == n,
        };
        if fires {
            self.fired.fetch_add(1, Ordering::SeqCst);
        }
        fires
    }
}

/// What a connection does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Relay,
    Stall,
    Drip(Duration),
    /// Over: cut, or reset.
    Closed {
        reset: bool,
    },
}

/// One relayed connection.
struct Conn {
    /// Where the session is (only with a fault, and only until it fires).
    watch: Mutex<Option<Watch>>,
    injector: Option<Arc<Injector>>,
    /// The proxy's count of bytes the server sent.
    served: Arc<AtomicUsize>,
    /// Both directions follow it: one direction's fault changes what the other does.
    phase: watch::Sender<Phase>,
    /// Whether [`CountingProxy::stall`] caught this connection.
    stalled: Box<dyn Fn() -> bool + Send + Sync>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl Conn {
    /// Reads `chunk` from `side`: where in it the fault fires, if it does.
    fn observe(&self, side: Side, chunk: &[u8]) -> Option<(usize, Action)> {
        let injector = self.injector.as_ref()?;
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        let watch = watch.as_mut()?;
        let mut reach = || injector.reach();
        let at = match side {
            Side::Client => watch.client(chunk, &mut reach),
            Side::Server => watch.server(chunk, &mut reach),
        }?;
        Some((at, injector.fault.action))
    }
}

/// Relays both ways under the connection's [`Phase`]. `client_gone` runs as soon as the
/// client's direction is over: the connection is the client's no longer, even while the
/// server takes a moment to close its own side.
async fn relay(client: TcpStream, server: TcpStream, conn: &Conn, client_gone: impl FnOnce()) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // All four halves live until both directions are over: dropping one would send a FIN.
    let ((client_read, server_write), (server_read, client_write)) = tokio::join!(
        async {
            let halves = pipe(Side::Client, client_read, server_write, conn).await;
            client_gone();
            halves
        },
        pipe(Side::Server, server_read, client_write, conn),
    );
    if *conn.phase.borrow() == (Phase::Closed { reset: true }) {
        // Whole again, so that closing sends no FIN first: with SO_LINGER 0 the close is a RST.
        for (read, write) in [(client_read, client_write), (server_read, server_write)] {
            if let Ok(stream) = read.reunite(write) {
                let _ = stream.set_zero_linger();
            }
        }
    }
}

/// One direction of [`relay`]; gives back its halves.
async fn pipe(
    side: Side,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    conn: &Conn,
) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut phase = conn.phase.subscribe();
    let mut buf = vec![0; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = phase.wait_for(|p| matches!(p, Phase::Closed { .. })) => break,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let current = *conn.phase.borrow();
                match current {
                    Phase::Relay | Phase::Drip(_) => {
                        let _ = to.shutdown().await;
                    }
                    // The client gave up on a silent connection: the relay is over. A server
                    // that gave up is not told to the client, which still waits.
                    Phase::Stall if side == Side::Client => {
                        conn.phase.send_replace(Phase::Closed { reset: false });
                    }
                    Phase::Stall | Phase::Closed { .. } => {}
                }
                break;
            }
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if side == Side::Server {
            conn.served.fetch_add(n, Ordering::SeqCst);
        }
        if (conn.stalled)() {
            conn.phase.send_if_modified(|p| {
                let relaying = matches!(p, Phase::Relay | Phase::Drip(_));
                if relaying {
                    *p = Phase::Stall;
                }
                relaying
            });
        }
        let current = *conn.phase.borrow();
        let (now, fired) = match current {
            Phase::Closed { .. } => break,
            Phase::Stall => continue,
            Phase::Drip(pause) => {
                if drip(&mut to, chunk, pause, conn).await.is_err() {
                    break;
                }
                continue;
            }
            Phase::Relay => match conn.observe(side, chunk) {
                Some((at, action)) => (at, Some(action)),
                None => (n, None),
            },
        };
        if to.write_all(&chunk[..now]).await.is_err() {
            break;
        }
        let Some(action) = fired else { continue };
        if let Action::Answer(bytes) = action
            && side == Side::Server
        {
            let _ = to.write_all(bytes).await;
        }
        conn.phase.send_replace(match action {
            Action::Cut | Action::Answer(_) => Phase::Closed { reset: false },
            Action::Reset => Phase::Closed { reset: true },
            Action::Stall => Phase::Stall,
            Action::Drip(pause) => Phase::Drip(pause),
        });
        match action {
            Action::Cut | Action::Reset | Action::Answer(_) => break,
            Action::Stall => {}
            Action::Drip(pause) => {
                if drip(&mut to, &chunk[now..], pause, conn).await.is_err() {
                    break;
                }
            }
        }
    }
    (from, to)
}

/// Writes `bytes` one at a time, one every `pause` on average (a byte late for a busy timer
/// is caught up with, so the rate does not depend on the machine's load); stops when the
/// connection is closed.
async fn drip(
    to: &mut OwnedWriteHalf,
    bytes: &[u8],
    pause: Duration,
    conn: &Conn,
) -> std::io::Result<()> {
    let mut due = tokio::time::Instant::now();
    for byte in bytes {
        due += pause;
        tokio::time::sleep_until(due).await;
        if matches!(*conn.phase.borrow(), Phase::Closed { .. }) {
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        }
        to.write_all(std::slice::from_ref(byte)).await?;
    }
    Ok(())
}

/// SMTP's end of message data (RFC 5321 §4.1.1.4).
const END_OF_DATA: &[u8] = b"\r\n.\r\n";

/// Where one connection's session is, as far as its fault's [`Step`] needs to know: read
/// from the bytes either side sends, one byte at a time (tests move little data).
struct Watch {
    step: Step,
    /// The first bytes of the client's current line: enough for its command words.
    line: Vec<u8>,
    /// The client's last bytes, for a pattern that spans reads.
    tail: Vec<u8>,
    /// Inside an SMTP message (after `DATA`, before its final dot), where its lines are not
    /// commands: how many bytes of it went by.
    in_message: Option<usize>,
    server_bytes: usize,
    /// The last bytes of the server's current line, to find a literal's `{n}`.
    server_line: Vec<u8>,
    /// A position in the server's answer the client's last command set up.
    armed: Option<Arm>,
}

enum Arm {
    /// The server's next byte.
    Next,
    /// This many bytes after the end of the server's current line.
    AfterLine { past: bool, left: usize },
    /// This many bytes into the next literal.
    Literal { open: bool, left: usize },
}

impl Watch {
    fn new(step: Step) -> Self {
        Self {
            step,
            line: Vec::new(),
            tail: Vec::new(),
            in_message: None,
            server_bytes: 0,
            server_line: Vec::new(),
            armed: None,
        }
    }

    /// The client sent `chunk`: where the step is reached in it, if it is and `reach` says
    /// the fault fires there.
    fn client(&mut self, chunk: &[u8], reach: &mut dyn FnMut() -> bool) -> Option<usize> {
        // Where the current line began in this chunk (0: in an earlier one).
        let mut line_start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if let Some(seen) = self.in_message {
                if self.step == Step::Message(seen) && reach() {
                    return Some(i);
                }
                self.in_message = Some(seen + 1);
            }
            self.tail.push(b);
            if self.tail.len() > 64 {
                self.tail.drain(..32);
            }
            if self.in_message.is_some() {
                if self.tail.ends_with(END_OF_DATA) {
                    self.in_message = None;
                    line_start = i + 1;
                    if self.step == Step::AfterDot {
                        self.armed = Some(Arm::Next);
                    }
                }
            } else {
                if self.line.len() < 64 {
                    self.line.push(b);
                }
                if b == b'\n' {
                    let line = std::mem::take(&mut self.line);
                    if self.command(&line) && reach() {
                        return Some(line_start);
                    }
                    line_start = i + 1;
                }
            }
            if let Step::AnswerTo(pattern) = self.step
                && self.tail.ends_with(pattern)
            {
                self.armed = Some(Arm::Next);
            }
        }
        None
    }

    /// The client's `line` is a whole command: whether it is the step's (arming the server's
    /// answer for steps there).
    fn command(&mut self, line: &[u8]) -> bool {
        let line = String::from_utf8_lossy(line).to_ascii_uppercase();
        let mut words = line.split_ascii_whitespace();
        let (first, second, third) = (
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        );
        if first == "DATA" {
            self.in_message = Some(0);
        }
        match self.step {
            Step::Login => {
                ["AUTH", "USER"].contains(&first) || ["AUTHENTICATE", "LOGIN"].contains(&second)
            }
            Step::Select => ["SELECT", "EXAMINE"].contains(&second),
            Step::Done => first == "DONE",
            Step::Uidl => first == "UIDL",
            Step::MailFrom => first == "MAIL",
            Step::RcptTo => first == "RCPT",
            Step::Data => first == "DATA",
            Step::Idle if second == "IDLE" => {
                self.armed = Some(Arm::Next);
                false
            }
            Step::FetchLiteral(n) if second == "FETCH" || (second == "UID" && third == "FETCH") => {
                self.armed = Some(Arm::Literal {
                    open: false,
                    left: n,
                });
                false
            }
            Step::Retr(n) if first == "RETR" => {
                self.armed = Some(Arm::AfterLine {
                    past: false,
                    left: n,
                });
                false
            }
            _ => false,
        }
    }

    /// The server sent `chunk`: where the step is reached in it (0..=len), if it is and
    /// `reach` says the fault fires there.
    fn server(&mut self, chunk: &[u8], reach: &mut dyn FnMut() -> bool) -> Option<usize> {
        for (i, &b) in chunk.iter().enumerate() {
            if self.server_bytes == 0 && self.step == Step::Greeting && reach() {
                return Some(i);
            }
            let reached = match self.armed.as_mut() {
                None => false,
                Some(Arm::Next) => true,
                Some(Arm::AfterLine {
                    past: past @ false, ..
                }) => {
                    *past = b == b'\n';
                    false
                }
                Some(Arm::AfterLine { left, .. } | Arm::Literal { open: true, left }) => {
                    let at = *left == 0;
                    *left = left.saturating_sub(1);
                    at
                }
                Some(Arm::Literal { open, .. }) => {
                    // A literal opens at the end of a line ending in `{digits}`.
                    if b == b'\n' {
                        *open = opens_literal(&self.server_line);
                        self.server_line.clear();
                    } else {
                        self.server_line.push(b);
                        if self.server_line.len() > 64 {
                            self.server_line.drain(..32);
                        }
                    }
                    false
                }
            };
            if reached {
                self.armed = None;
                if reach() {
                    return Some(i);
                }
            }
            self.server_bytes += 1;
            if self.step == Step::ServerBytes(self.server_bytes) && reach() {
                return Some(i + 1);
            }
        }
        None
    }
}

/// Whether a server line (without its LF) ends in a literal's announcement, `{digits}`.
fn opens_literal(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(rest) = line.strip_suffix(b"}") else {
        return false;
    };
    let Some(brace) = rest.iter().rposition(|c| *c == b'{') else {
        return false;
    };
    let digits = &rest[brace + 1..];
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where `watch` fires (fault always firing) over these reads: (read index, offset).
    fn fires(step: Step, reads: &[(Side, &[u8])]) -> Option<(usize, usize)> {
        let mut watch = Watch::new(step);
        let mut yes = || true;
        reads.iter().enumerate().find_map(|(k, (side, bytes))| {
            let at = match side {
                Side::Client => watch.client(bytes, &mut yes),
                Side::Server => watch.server(bytes, &mut yes),
            };
            at.map(|at| (k, at))
        })
    }

    use Side::{Client as C, Server as S};

    #[test]
    fn imap_steps_are_found() {
        let session: &[(Side, &[u8])] = &[
            (S, b"* OK [CAPABILITY IMAP4rev1] ready\r\n"),
            (C, b"A1 LOGIN \"u\" \"p\"\r\n"),
            (S, b"A1 OK Logged in\r\n"),
            (C, b"A2 EXAMINE \"INBOX\"\r\n"),
            (S, b"* 2 EXISTS\r\nA2 OK done\r\n"),
            (C, b"A3 UID FETCH 1,2 (UID BODY.PEEK[])\r\n"),
            (
                S,
                b"* 1 FETCH (UID 1 BODY[] {12}\r\nSubject: x\r\n)\r\nA3 OK\r\n",
            ),
            (C, b"A4 IDLE\r\n"),
            (S, b"+ idling\r\n"),
            (C, b"DONE\r\n"),
        ];
        assert_eq!(fires(Step::Greeting, session), Some((0, 0)));
        assert_eq!(fires(Step::Login, session), Some((1, 0)));
        assert_eq!(fires(Step::Select, session), Some((3, 0)));
        // 4 bytes into the literal: after "* 1 FETCH (UID 1 BODY[] {12}\r\n" (30 bytes).
        assert_eq!(fires(Step::FetchLiteral(4), session), Some((6, 34)));
        assert_eq!(fires(Step::Idle, session), Some((8, 0)));
        assert_eq!(fires(Step::Done, session), Some((9, 0)));
        assert_eq!(fires(Step::ServerBytes(5), session), Some((0, 5)));
    }

    #[test]
    fn pop3_steps_are_found() {
        let session: &[(Side, &[u8])] = &[
            (S, b"+OK ready\r\n"),
            (C, b"CAPA\r\n"),
            (S, b"+OK\r\nSASL PLAIN\r\n.\r\n"),
            (C, b"AUTH PLAIN AHUAcA==\r\n"),
            (S, b"+OK\r\n"),
            (C, b"UIDL\r\n"),
            (S, b"+OK\r\n1 a\r\n.\r\n"),
            (C, b"RETR 1\r\n"),
            (S, b"+OK 20 octets\r\nSubject: x\r\n"),
        ];
        assert_eq!(fires(Step::Login, session), Some((3, 0)));
        assert_eq!(fires(Step::Uidl, session), Some((5, 0)));
        assert_eq!(fires(Step::Retr(3), session), Some((8, 18)));
    }

    #[test]
    fn smtp_steps_are_found_and_message_lines_are_not_commands() {
        let session: &[(Side, &[u8])] = &[
            (S, b"220 ready\r\n"),
            (C, b"EHLO me\r\n"),
            (S, b"250 ok\r\n"),
            (C, b"AUTH PLAIN AHUAcA==\r\n"),
            (S, b"235 ok\r\n"),
            (C, b"MAIL FROM:<a@b>\r\n"),
            (S, b"250 ok\r\n"),
            (C, b"RCPT TO:<c@d>\r\n"),
            (S, b"250 ok\r\n"),
            (C, b"DATA\r\n"),
            (S, b"354 go\r\n"),
            (C, b"Subject: x\r\n\r\nMAIL FROM me\r\nDATA\r\n.\r\n"),
            (S, b"250 queued\r\n"),
        ];
        assert_eq!(fires(Step::Login, session), Some((3, 0)));
        assert_eq!(fires(Step::MailFrom, session), Some((5, 0)));
        assert_eq!(fires(Step::RcptTo, session), Some((7, 0)));
        assert_eq!(fires(Step::Data, session), Some((9, 0)));
        assert_eq!(fires(Step::Message(4), session), Some((11, 4)));
        assert_eq!(fires(Step::AfterDot, session), Some((12, 0)));
        assert_eq!(fires(Step::AnswerTo(b"\r\n.\r\n"), session), Some((12, 0)));
    }

    #[test]
    fn a_command_split_over_reads_fires_where_it_is_still_held() {
        let session: &[(Side, &[u8])] = &[(C, b"NOOP\r\nA2 EXA"), (C, b"MINE INBOX\r\n")];
        assert_eq!(fires(Step::Select, session), Some((1, 0)));
        let whole: &[(Side, &[u8])] = &[(C, b"NOOP\r\nA2 EXAMINE INBOX\r\n")];
        assert_eq!(fires(Step::Select, whole), Some((0, 6)));
    }

    #[test]
    fn the_nth_time_fires_once() {
        let injector = Injector {
            fault: Fault {
                step: Step::Greeting,
                action: Action::Cut,
                times: Times::Nth(2),
            },
            reached: AtomicUsize::new(0),
            fired: AtomicUsize::new(0),
        };
        let fired: Vec<bool> = (0..4).map(|_| injector.reach()).collect();
        assert_eq!(fired, [false, true, false, false]);
        assert_eq!(injector.fired.load(Ordering::SeqCst), 1);
    }
}
