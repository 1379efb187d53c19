//! SMTP submission (RFC 6409) with STARTTLS (RFC 3207) and AUTH (RFC 4954), our own: lettre
//! 0.11 sends XOAUTH2 but fails on the error challenge instead of answering it, so a refused
//! token surfaces as a protocol error rather than the server's reason. Replies are classified
//! 4xx transient / 5xx permanent, and recipients are reported one by one.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::error::{ErrorKind, ProtoError};
use crate::line::{LineBudget, LineConn, refuse_line_breaks, refuse_unsafe_credentials};
use crate::net::{Endpoint, MailStream, Security, TlsSettings};
use crate::sasl::{self, Credentials, Mechanism};

/// RFC 4954 §4: a command line may carry an initial response if it fits in 12288 octets,
/// but many servers cut lines at 512 (Dovecot's submission does); longer responses wait
/// for the server's 334.
const MAX_IR_LINE: usize = 500;

/// Bounds on one reply: RFC 5321 §4.5.3.1.5 bounds a reply line (512 octets), not the number
/// of lines. An EHLO reply is a dozen or two short lines; a server that never sends the last
/// line is stopped here.
const MAX_REPLY_LINES: usize = 100;
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// One SMTP reply: code and text lines.
#[derive(Debug, Clone)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn words(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Rejected {
            words: self.words(),
            transient: (400..500).contains(&self.code),
        }
    }
}

/// What the server said about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    pub address: String,
    pub accepted: bool,
    /// The server's reply, e.g. `250 2.1.5 Ok` or `550 5.1.1 no such user`.
    pub reply: String,
    /// For a refusal: whether it was temporary (4xx).
    pub transient: bool,
}

/// The outcome of a submission that reached DATA.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub recipients: Vec<RecipientResult>,
    /// The final reply to the message data (usually carries the queue id).
    pub reply: String,
}

pub struct SmtpSession {
    conn: LineConn,
    extensions: Vec<String>,
}

impl std::fmt::Debug for SmtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSession")
            .field("server", &self.conn.endpoint.label())
            .finish_non_exhaustive()
    }
}

impl SmtpSession {
    /// Connects, says EHLO as `client_name`, upgrades with STARTTLS when asked, and logs in.
    pub async fn login(
        endpoint: &Endpoint,
        tls: &TlsSettings,
        credentials: &Credentials,
        client_name: &str,
    ) -> Result<Self, ProtoError> {
        refuse_unsafe_credentials(endpoint, credentials)?;
        refuse_line_breaks(endpoint, "say EHLO", "the client name", client_name)?;
        let stream = MailStream::connect(endpoint, tls).await?;
        Self::login_over(stream, endpoint, tls, credentials, client_name).await
    }

    /// Connects, says EHLO as `client_name` and upgrades with STARTTLS when asked, without
    /// logging in: for a relay that accepts mail from this machine's network. Whatever logins
    /// the server offers, none is tried.
    pub async fn connect(
        endpoint: &Endpoint,
        tls: &TlsSettings,
        client_name: &str,
    ) -> Result<Self, ProtoError> {
        refuse_line_breaks(endpoint, "say EHLO", "the client name", client_name)?;
        let stream = MailStream::connect(endpoint, tls).await?;
        Self::greet(stream, endpoint, tls, client_name).await
    }

    /// [`SmtpSession::login`] on a stream already connected (the fuzz targets' in-memory one).
    pub(crate) async fn login_over(
        stream: MailStream,
        endpoint: &Endpoint,
        tls: &TlsSettings,
        credentials: &Credentials,
        client_name: &str,
    ) -> Result<Self, ProtoError> {
        let mut me = Self::greet(stream, endpoint, tls, client_name).await?;
        let offered: Vec<String> = me
            .extensions
            .iter()
            .filter_map(|e| e.strip_prefix("AUTH ").or_else(|| e.strip_prefix("AUTH=")))
            .flat_map(|l| l.split_whitespace().map(str::to_owned))
            .collect();
        let mechanism = Mechanism::choose(credentials, &offered).ok_or_else(|| {
            me.conn.error("log in", ErrorKind::Unsupported(if offered.is_empty() {
                "the server offers no login on this connection (no AUTH after EHLO); use TLS or check the port".to_owned()
            } else {
                format!("the server offers no suitable login (AUTH {})", offered.join(" "))
            }))
        })?;
        me.authenticate(mechanism, credentials).await?;
        Ok(me)
    }

    /// The greeting, EHLO and, when the endpoint asks for it, STARTTLS and EHLO again.
    async fn greet(
        stream: MailStream,
        endpoint: &Endpoint,
        tls: &TlsSettings,
        client_name: &str,
    ) -> Result<Self, ProtoError> {
        let mut me = Self {
            conn: LineConn::new(endpoint.clone(), stream),
            extensions: Vec::new(),
        };
        let greeting = me.reply("read the greeting").await?;
        if greeting.code != 220 {
            return Err(me.conn.error("read the greeting", greeting.kind()));
        }
        me.ehlo(client_name).await?;
        if endpoint.security == Security::Starttls {
            if !me.has("STARTTLS") {
                return Err(me.conn.error(
                    "start TLS",
                    ErrorKind::Unsupported(
                        "the server does not offer STARTTLS; use security tls or check the port"
                            .into(),
                    ),
                ));
            }
            me.expect("STARTTLS", "start TLS", 220).await?;
            me.conn = me.conn.start_tls(tls).await?;
            // RFC 3207 §4.2: forget everything learned before TLS.
            me.ehlo(client_name).await?;
        }
        Ok(me)
    }

    async fn ehlo(&mut self, client_name: &str) -> Result<(), ProtoError> {
        let reply = self
            .command(&format!("EHLO {client_name}"), "say EHLO")
            .await?;
        if reply.code != 250 {
            return Err(self.conn.error("say EHLO", reply.kind()));
        }
        self.extensions = reply
            .lines
            .iter()
            .skip(1)
            .map(|l| l.to_ascii_uppercase())
            .collect();
        Ok(())
    }

    pub fn has(&self, extension: &str) -> bool {
        self.extensions.iter().any(|e| {
            e.split_whitespace()
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(extension))
        })
    }

    async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        credentials: &Credentials,
    ) -> Result<(), ProtoError> {
        let step = format!("log in with {}", mechanism.name());
        let initial = mechanism.encoded_initial_response(credentials);
        let with_ir = format!("AUTH {} {initial}", mechanism.name());
        let mut reply = if with_ir.len() <= MAX_IR_LINE {
            self.command(&with_ir, &step).await?
        } else {
            let ready = self
                .command(&format!("AUTH {}", mechanism.name()), &step)
                .await?;
            if ready.code != 334 {
                return Err(self.conn.error(&step, ready.kind()));
            }
            self.command(&initial, &step).await?
        };
        let mut detail = None;
        if reply.code == 334 {
            // An error report as a challenge (Gmail, Dovecot): answer it to get the final reply.
            detail = reply
                .lines
                .first()
                .and_then(|c| sasl::describe_challenge(c));
            reply = self
                .command(&B64.encode(mechanism.error_reply()), &step)
                .await?;
        }
        match reply.code {
            235 => Ok(()),
            code if (400..500).contains(&code) => Err(self.conn.error(&step, reply.kind())),
            _ => Err(self.conn.error(
                &step,
                ErrorKind::AuthRefused {
                    words: reply.words(),
                    detail,
                },
            )),
        }
    }

    /// Submits one message. `message` is RFC 5322 bytes; every line ending (CRLF, LF, bare
    /// CR) is sent as CRLF and leading dots are stuffed (see `dot_stuff`). Fails when the sender or every recipient is refused.
    pub async fn send(
        &mut self,
        from: &str,
        recipients: &[String],
        message: &[u8],
    ) -> Result<SendReport, ProtoError> {
        self.refuse_unsafe_addresses(from, recipients.iter().map(String::as_str))?;
        let reply = self
            .command(&format!("MAIL FROM:<{from}>"), "send MAIL FROM")
            .await?;
        if reply.code != 250 {
            return Err(self.conn.error("send MAIL FROM", reply.kind()));
        }
        let mut results = Vec::new();
        for address in recipients {
            let reply = self
                .command(&format!("RCPT TO:<{address}>"), "send RCPT TO")
                .await?;
            results.push(RecipientResult {
                address: address.clone(),
                accepted: reply.code == 250 || reply.code == 251,
                transient: (400..500).contains(&reply.code),
                reply: reply.words(),
            });
        }
        if !results.iter().any(|r| r.accepted) {
            self.command("RSET", "reset after refused recipients")
                .await?;
            let transient = results.iter().all(|r| r.transient);
            let words = results
                .iter()
                .map(|r| format!("{}: {}", r.address, r.reply))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(self
                .conn
                .error("send RCPT TO", ErrorKind::Rejected { words, transient }));
        }
        let reply = self.command("DATA", "send DATA").await?;
        if reply.code != 354 {
            return Err(self.conn.error("send DATA", reply.kind()));
        }
        self.conn
            .write_raw("send the message", &dot_stuff(message))
            .await?;
        // RFC 5321 §4.1.1.4: the server takes responsibility with its reply to the final
        // dot. Lost before it arrives, the outcome is unknown: never for a blind retry.
        let reply = self
            .reply("send the message")
            .await
            .map_err(|e| match e.kind {
                ErrorKind::Io(why) => ProtoError {
                    kind: ErrorKind::Unconfirmed(why),
                    ..e
                },
                ErrorKind::Timeout(after) => ProtoError {
                    kind: ErrorKind::Unconfirmed(format!("no answer within {} s", after.as_secs())),
                    ..e
                },
                _ => e,
            })?;
        if reply.code != 250 {
            return Err(self.conn.error("send the message", reply.kind()));
        }
        Ok(SendReport {
            recipients: results,
            reply: reply.words(),
        })
    }

    /// Whether the server would take mail from `from` to `to`, without sending any: MAIL FROM
    /// and RCPT TO, then RSET (RFC 5321 §4.1.1.5) ends the transaction. How Test & Enable
    /// checks a relay that needs no login.
    pub async fn check_relay(&mut self, from: &str, to: &str) -> Result<(), ProtoError> {
        self.refuse_unsafe_addresses(from, [to])?;
        self.expect(&format!("MAIL FROM:<{from}>"), "send MAIL FROM", 250)
            .await?;
        let rcpt = self
            .command(&format!("RCPT TO:<{to}>"), "send RCPT TO")
            .await?;
        // Whatever the answer, no transaction is left open.
        self.expect("RSET", "reset (RSET)", 250).await?;
        if rcpt.code != 250 && rcpt.code != 251 {
            return Err(self.conn.error("send RCPT TO", rcpt.kind()));
        }
        Ok(())
    }

    /// Every address is checked before the first is sent: a transaction is never begun for
    /// a message that cannot be sent as asked.
    fn refuse_unsafe_addresses<'a>(
        &self,
        from: &str,
        recipients: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ProtoError> {
        refuse_line_breaks(
            &self.conn.endpoint,
            "send MAIL FROM",
            "the sender address",
            from,
        )?;
        for address in recipients {
            refuse_line_breaks(
                &self.conn.endpoint,
                "send RCPT TO",
                "a recipient address",
                address,
            )?;
        }
        Ok(())
    }

    pub async fn quit(mut self) -> Result<(), ProtoError> {
        self.command("QUIT", "end the session (QUIT)")
            .await
            .map(drop)
    }

    async fn expect(&mut self, command: &str, step: &str, code: u16) -> Result<Reply, ProtoError> {
        let reply = self.command(command, step).await?;
        if reply.code != code {
            return Err(self.conn.error(step, reply.kind()));
        }
        Ok(reply)
    }

    async fn command(&mut self, line: &str, step: &str) -> Result<Reply, ProtoError> {
        self.conn.write_line(step, line).await?;
        self.reply(step).await
    }

    /// A (multi-line) reply: `250-first`, `250-…`, `250 last` (RFC 5321 §4.2).
    async fn reply(&mut self, step: &str) -> Result<Reply, ProtoError> {
        let mut budget = LineBudget::new("the reply", MAX_REPLY_LINES, MAX_REPLY_BYTES);
        let mut lines = Vec::new();
        loop {
            let line = self.conn.read_line(step).await?;
            budget
                .take(&line)
                .map_err(|kind| self.conn.error(step, kind))?;
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else {
                return Err(self.conn.error(step, ErrorKind::Protocol(line)));
            };
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or_default().to_owned());
            if !more {
                return Ok(Reply { code, lines });
            }
        }
    }
}

/// The DATA stream (RFC 5321 §4.5.2): every line ending — CRLF, bare LF, bare CR — made
/// CRLF, a leading '.' doubled, and the final `.` line. Servers disagree on what a bare LF
/// or CR ends, so passing one through lets `\n.\n` or `\r.\r` inside a body end the
/// message early on one server and not on the next, and whatever follows is taken as
/// commands: SMTP smuggling (SEC Consult, 2023; RFC 5321 §2.3.8 forbids bare CR and LF).
/// Normalised, the only `<CRLF>.<CRLF>` in the stream is the last one.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 5);
    let mut line_start = true;
    let mut bytes = message.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\r' => {
                bytes.next_if_eq(&b'\n');
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            _ => {
                if line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                line_start = false;
            }
        }
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_crlf() {
        assert_eq!(dot_stuff(b"a\n.b\r\n..c"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(dot_stuff(b"\r\n\r\n"), b"\r\n\r\n.\r\n");
    }

    /// What a server reads back out of the DATA stream: up to the first `<CRLF>.<CRLF>`
    /// (or a leading `.<CRLF>`), dots unstuffed. `None` if the stream has no end.
    fn server_reads(stream: &[u8]) -> Option<(Vec<u8>, &[u8])> {
        let mut message = Vec::new();
        let mut rest = stream;
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n")?;
            let (line, after) = (&rest[..end], &rest[end + 2..]);
            if line == b"." {
                return Some((message, after));
            }
            message.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            message.extend_from_slice(b"\r\n");
            rest = after;
        }
    }

    #[test]
    fn smuggling_patterns_cannot_end_the_message_early() {
        // The end-of-data sequences of the SMTP smuggling research (SEC Consult, 2023), each
        // followed by a smuggled transaction.
        let smuggled = b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n";
        for end in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r",
            b"\r\n.\r",
            b"\r.\r\n",
            b"\r\n.\n",
            b"\n.\r",
        ] {
            let mut message = b"Subject: hi\r\n\r\nbody".to_vec();
            message.extend_from_slice(end);
            message.extend_from_slice(smuggled);
            let stream = dot_stuff(&message);
            // One end of data, at the very end; no bare CR or LF anywhere.
            assert!(
                stream.ends_with(b"\r\n.\r\n"),
                "{:?}",
                String::from_utf8_lossy(&stream)
            );
            let (_, rest) = server_reads(&stream).unwrap();
            assert!(
                rest.is_empty(),
                "{end:?} ends the message early; then come {:?}",
                String::from_utf8_lossy(rest)
            );
            for (i, b) in stream.iter().enumerate() {
                match b {
                    b'\r' => assert_eq!(stream.get(i + 1), Some(&b'\n'), "bare CR for {end:?}"),
                    b'\n' => assert_eq!(stream[i - 1], b'\r', "bare LF for {end:?}"),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn message_bytes_other_than_line_endings_are_kept() {
        // Every byte value but CR and LF, lines starting with dots, an unfinished last line.
        let mut message: Vec<u8> = (0..=255u8).filter(|b| *b != b'\r' && *b != b'\n').collect();
        message.extend_from_slice(b"\r\n.\r\n..\r\n.x\r\nh\xc3\xa9\r\n\r\nend.");
        let stream = dot_stuff(&message);
        let (read, rest) = server_reads(&stream).unwrap();
        assert!(rest.is_empty());
        let mut expected = message.clone();
        expected.extend_from_slice(b"\r\n");
        assert_eq!(read, expected);
        // Bare endings become CRLF and nothing else changes.
        let stream = dot_stuff(b"a\rb\nc\r\n\r\rd");
        let (read, _) = server_reads(&stream).unwrap();
        assert_eq!(read, b"a\r\nb\r\nc\r\n\r\n\r\nd\r\n");
    }
}
