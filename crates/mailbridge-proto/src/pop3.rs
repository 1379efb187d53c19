//! POP3 (RFC 1939) with CAPA (RFC 2449), STLS (RFC 2595) and AUTH (RFC 5034), our own: no
//! maintained crate does POP3 with SASL XOAUTH2 and its error exchange. Messages are read
//! one at a time, line by line, so a large maildrop is never held in memory.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::ExposeSecret;

use crate::error::{ErrorKind, ProtoError};
use crate::line::{LineBudget, LineConn, refuse_unsafe_credentials};
use crate::net::{Endpoint, MailStream, Security, TlsSettings};
use crate::sasl::{self, Credentials, Mechanism};

/// RFC 5034 §4: an initial response that would make the command longer than 255 octets
/// is not sent on the command line; the client waits for the server's empty challenge.
const MAX_IR_LINE: usize = 255;

/// Bounds on the CAPA list (RFC 2449 §5): a dozen short lines in practice.
const MAX_CAPA_LINES: usize = 100;
const MAX_CAPA_BYTES: usize = 64 * 1024;

/// Bounds on the UIDL list (RFC 1939 §7): one line per message, a unique-id of at most 70
/// characters (a million such lines are about 80 MiB).
const MAX_UIDL_LINES: usize = 1_000_000;
const MAX_UIDL_BYTES: usize = 128 * 1024 * 1024;

pub struct Pop3Session {
    conn: LineConn,
    capabilities: Vec<String>,
}

impl std::fmt::Debug for Pop3Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pop3Session")
            .field("server", &self.conn.endpoint.label())
            .finish_non_exhaustive()
    }
}

/// A message's number in this session and its unique id (UIDL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub number: u32,
    pub uid: String,
}

impl Pop3Session {
    pub async fn login(
        endpoint: &Endpoint,
        tls: &TlsSettings,
        credentials: &Credentials,
    ) -> Result<Self, ProtoError> {
        refuse_unsafe_credentials(endpoint, credentials)?;
        let stream = MailStream::connect(endpoint, tls).await?;
        Self::login_over(stream, endpoint, tls, credentials).await
    }

    /// [`Pop3Session::login`] on a stream already connected (the fuzz targets' in-memory one).
    pub(crate) async fn login_over(
        stream: MailStream,
        endpoint: &Endpoint,
        tls: &TlsSettings,
        credentials: &Credentials,
    ) -> Result<Self, ProtoError> {
        let mut me = Self {
            conn: LineConn::new(endpoint.clone(), stream),
            capabilities: Vec::new(),
        };
        let greeting = me.conn.read_line("read the greeting").await?;
        if !greeting.starts_with("+OK") {
            return Err(me.conn.error(
                "read the greeting",
                ErrorKind::Rejected {
                    words: greeting,
                    transient: true,
                },
            ));
        }
        me.capabilities = me.capa().await?;
        if endpoint.security == Security::Starttls {
            if !me.has("STLS") {
                return Err(me.conn.error(
                    "start TLS",
                    ErrorKind::Unsupported(
                        "the server does not offer STLS; use security tls or check the port".into(),
                    ),
                ));
            }
            me.simple("STLS", "start TLS").await?;
            me.conn = me.conn.start_tls(tls).await?;
            me.capabilities = me.capa().await?;
        }
        let sasl: Vec<String> = me
            .capabilities
            .iter()
            .filter_map(|c| c.strip_prefix("SASL "))
            .flat_map(|l| l.split_whitespace().map(str::to_owned))
            .collect();
        match (Mechanism::choose(credentials, &sasl), credentials) {
            (Some(mechanism), _) => me.authenticate(mechanism, credentials).await?,
            (None, Credentials::Password { user, password }) => {
                let step = "log in with a password";
                me.simple(&format!("USER {user}"), step)
                    .await
                    .map_err(into_auth_refused)?;
                me.simple(&format!("PASS {}", password.expose_secret()), step)
                    .await
                    .map_err(into_auth_refused)?;
            }
            (None, Credentials::OAuth { .. }) => {
                return Err(me.conn.error("log in", ErrorKind::Unsupported(format!("the server offers no OAuth login (SASL {}); is OAuth enabled for POP3 there?", sasl.join(" ")))));
            }
        }
        Ok(me)
    }

    /// RFC 5034 AUTH with the error exchange.
    async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        credentials: &Credentials,
    ) -> Result<(), ProtoError> {
        let step = format!("log in with {}", mechanism.name());
        let initial = mechanism.encoded_initial_response(credentials);
        let with_ir = format!("AUTH {} {initial}", mechanism.name());
        if with_ir.len() <= MAX_IR_LINE {
            self.conn.write_line(&step, &with_ir).await?;
        } else {
            self.conn
                .write_line(&step, &format!("AUTH {}", mechanism.name()))
                .await?;
            let ready = self.conn.read_line(&step).await?;
            if !ready.starts_with('+') || ready.starts_with("+OK") {
                return Err(self.conn.error(&step, ErrorKind::Protocol(ready)));
            }
            self.conn.write_line(&step, &initial).await?;
        }
        let mut detail = None;
        loop {
            let reply = self.conn.read_line(&step).await?;
            if reply.starts_with("+OK") {
                return Ok(());
            }
            if let Some(challenge) = reply.strip_prefix("+ ").or_else(|| reply.strip_prefix('+')) {
                // An error report (RFC 7628 §3.2.2 / Gmail's XOAUTH2): answer, then read the -ERR.
                detail = sasl::describe_challenge(challenge);
                self.conn
                    .write_line(&step, &B64.encode(mechanism.error_reply()))
                    .await?;
                continue;
            }
            let words = reply
                .strip_prefix("-ERR")
                .unwrap_or(&reply)
                .trim()
                .to_owned();
            return Err(self.conn.error(
                &step,
                if is_temporary(&words) {
                    ErrorKind::Rejected {
                        words,
                        transient: true,
                    }
                } else {
                    ErrorKind::AuthRefused { words, detail }
                },
            ));
        }
    }

    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| {
            c.split_whitespace()
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(capability))
        })
    }

    /// `CAPA` (RFC 2449); a server without it has no capabilities to tell.
    async fn capa(&mut self) -> Result<Vec<String>, ProtoError> {
        self.conn.write_line("read capabilities", "CAPA").await?;
        let first = self.conn.read_line("read capabilities").await?;
        if !first.starts_with("+OK") {
            return Ok(Vec::new());
        }
        let mut budget = LineBudget::new("the capability list", MAX_CAPA_LINES, MAX_CAPA_BYTES);
        let mut caps = Vec::new();
        loop {
            let line = self.conn.read_line("read capabilities").await?;
            if line == "." {
                return Ok(caps
                    .into_iter()
                    .map(|c: String| c.to_ascii_uppercase())
                    .collect());
            }
            budget
                .take(&line)
                .map_err(|kind| self.conn.error("read capabilities", kind))?;
            caps.push(line);
        }
    }

    /// `STAT`: (messages, octets).
    pub async fn stat(&mut self) -> Result<(u32, u64), ProtoError> {
        let reply = self.simple("STAT", "count messages (STAT)").await?;
        let mut parts = reply.split_whitespace();
        let parse = |p: Option<&str>| p.and_then(|s| s.parse::<u64>().ok());
        match (parse(parts.next()), parse(parts.next())) {
            (Some(n), Some(size)) => Ok((u32::try_from(n).unwrap_or(u32::MAX), size)),
            _ => Err(self.conn.error(
                "count messages (STAT)",
                ErrorKind::Protocol(format!("+OK {reply}")),
            )),
        }
    }

    /// `UIDL`: every message's unique id.
    pub async fn uidl(&mut self) -> Result<Vec<Listing>, ProtoError> {
        let lines = self
            .numbered_lines("UIDL", "list message ids (UIDL)")
            .await?;
        Ok(lines
            .into_iter()
            .map(|(number, uid)| Listing { number, uid })
            .collect())
    }

    /// `LIST`: every message's size in octets, by message number.
    pub async fn list(&mut self) -> Result<std::collections::HashMap<u32, u64>, ProtoError> {
        let step = "list message sizes (LIST)";
        let lines = self.numbered_lines("LIST", step).await?;
        lines
            .into_iter()
            .map(|(number, size)| match size.parse() {
                Ok(size) => Ok((number, size)),
                Err(_) => Err(self
                    .conn
                    .error(step, ErrorKind::Protocol(format!("{number} {size}")))),
            })
            .collect()
    }

    /// A multi-line answer of `<message number> <word>` lines (`UIDL`, `LIST`).
    async fn numbered_lines(
        &mut self,
        command: &str,
        step: &str,
    ) -> Result<Vec<(u32, String)>, ProtoError> {
        self.simple(command, step).await?;
        let mut budget = LineBudget::new("the message list", MAX_UIDL_LINES, MAX_UIDL_BYTES);
        let mut out = Vec::new();
        loop {
            let line = self.conn.read_line(step).await?;
            if line == "." {
                return Ok(out);
            }
            budget
                .take(&line)
                .map_err(|kind| self.conn.error(step, kind))?;
            let mut parts = line.split_whitespace();
            match (parts.next().and_then(|n| n.parse().ok()), parts.next()) {
                (Some(number), Some(word)) => out.push((number, word.to_owned())),
                _ => return Err(self.conn.error(step, ErrorKind::Protocol(line))),
            }
        }
    }

    /// The largest message this session downloads whole (the endpoint's bound).
    pub fn max_message_bytes(&self) -> usize {
        self.conn.endpoint.max_message_bytes
    }

    /// `RETR n`: the message, dot-unstuffed (RFC 1939 §3), bytes as sent.
    pub async fn retr(&mut self, number: u32) -> Result<Vec<u8>, ProtoError> {
        let step = format!("download message {number} (RETR)");
        self.simple(&format!("RETR {number}"), &step).await?;
        self.read_multiline(&step).await
    }

    /// `TOP n lines`: the header and the first lines of the body.
    pub async fn top(&mut self, number: u32, lines: u32) -> Result<Vec<u8>, ProtoError> {
        let step = format!("read the top of message {number} (TOP)");
        self.simple(&format!("TOP {number} {lines}"), &step).await?;
        self.read_multiline(&step).await
    }

    /// A multi-line response (RFC 1939 §3): lines up to the one holding only `.`, each
    /// leading `.` of a stuffed line removed; at most the endpoint's `max_message_bytes`.
    async fn read_multiline(&mut self, step: &str) -> Result<Vec<u8>, ProtoError> {
        let max = self.conn.endpoint.max_message_bytes;
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            // Room for what is left of the limit, plus the final ".\r\n" or a stuffing dot.
            let room = max.saturating_sub(out.len()).saturating_add(3);
            let whole = self.conn.read_raw_line(step, &mut line, room).await?;
            let content = line
                .strip_suffix(b"\r\n")
                .or_else(|| line.strip_suffix(b"\n"))
                .unwrap_or(&line);
            if whole && content == b"." {
                return Ok(out);
            }
            // A line starting with '.' was stuffed with one more.
            let unstuffed = if line.starts_with(b"..") {
                &line[1..]
            } else {
                &line[..]
            };
            if !whole || out.len() + unstuffed.len() > max {
                // The rest of the message is still on its way: this session is unusable now,
                // and the caller drops it.
                return Err(self.conn.error(
                    step,
                    ErrorKind::TooLarge(format!(
                        "the message is larger than {}",
                        crate::error::size(max)
                    )),
                ));
            }
            out.extend_from_slice(unstuffed);
        }
    }

    /// Ends the session (`QUIT`), which is when a POP3 server commits deletions.
    pub async fn quit(mut self) -> Result<(), ProtoError> {
        self.simple("QUIT", "end the session (QUIT)")
            .await
            .map(drop)
    }

    /// A one-line command; the text after `+OK`, or the server's refusal.
    async fn simple(&mut self, command: &str, step: &str) -> Result<String, ProtoError> {
        self.conn.write_line(step, command).await?;
        let reply = self.conn.read_line(step).await?;
        if let Some(rest) = reply.strip_prefix("+OK") {
            return Ok(rest.trim().to_owned());
        }
        let words = reply
            .strip_prefix("-ERR")
            .unwrap_or(&reply)
            .trim()
            .to_owned();
        Err(self.conn.error(
            step,
            ErrorKind::Rejected {
                transient: is_temporary(&words),
                words,
            },
        ))
    }
}

/// RFC 2449 / RFC 3206 response codes that mean "try later".
fn is_temporary(words: &str) -> bool {
    words.starts_with("[IN-USE]") || words.starts_with("[SYS/TEMP]")
}

fn into_auth_refused(e: ProtoError) -> ProtoError {
    match e.kind {
        ErrorKind::Rejected {
            words,
            transient: false,
        } => ProtoError {
            kind: ErrorKind::AuthRefused {
                words,
                detail: None,
            },
            ..e
        },
        _ => e,
    }
}
