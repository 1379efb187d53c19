//! [`LineConn`]: CRLF lines over a [`MailStream`] with the endpoint's timeout on every read,
//! for the line-based parts of POP3, SMTP and IMAP's pre-login.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::error::{ErrorKind, ProtoError};
use crate::net::{Endpoint, MailStream, TlsSettings};
use crate::sasl::Credentials;

/// Longest line accepted from a server (RFC 5321 allows 512 for replies; POP3 and IMAP
/// greetings are shorter). A longer one means something is wrong.
const MAX_LINE: usize = 64 * 1024;

/// Refuses a value that would break out of the command line it is written into: a command
/// ends at CRLF (RFC 1939 §3, RFC 5321 §2.3.8, RFC 3501 §2.2), so a password
/// `x\r\nDELE 1` would be sent as two commands; NUL separates the fields of SASL PLAIN
/// (RFC 4616 §2). `what` names the value ("the password"); the value itself is never shown.
pub(crate) fn refuse_line_breaks(
    endpoint: &Endpoint,
    step: &str,
    what: &str,
    value: &str,
) -> Result<(), ProtoError> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(endpoint.error(
            step,
            ErrorKind::UnsafeValue(format!(
                "{what} contains a line break or NUL character, which would end the command early; correct it and try again"
            )),
        ));
    }
    Ok(())
}

/// [`refuse_line_breaks`] for each part of a login, before connecting.
pub(crate) fn refuse_unsafe_credentials(
    endpoint: &Endpoint,
    credentials: &Credentials,
) -> Result<(), ProtoError> {
    use secrecy::ExposeSecret;
    let step = "log in";
    match credentials {
        Credentials::Password { user, password } => {
            refuse_line_breaks(endpoint, step, "the user name", user)?;
            refuse_line_breaks(endpoint, step, "the password", password.expose_secret())
        }
        Credentials::OAuth { user, token } => {
            refuse_line_breaks(endpoint, step, "the user name", user)?;
            refuse_line_breaks(endpoint, step, "the access token", token.expose_secret())
        }
    }
}

/// Bounds on a response of many lines (an SMTP multi-line reply, IMAP's untagged lines
/// before the tagged one, POP3's CAPA and UIDL lists): each line is already at most
/// [`MAX_LINE`], but a server that never ends the response would otherwise fill memory.
#[derive(Debug)]
pub(crate) struct LineBudget {
    /// What the lines are, for the error: "the server's reply".
    what: &'static str,
    lines_left: usize,
    bytes_left: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl LineBudget {
    pub(crate) const fn new(what: &'static str, max_lines: usize, max_bytes: usize) -> Self {
        Self {
            what,
            lines_left: max_lines,
            bytes_left: max_bytes,
            max_lines,
            max_bytes,
        }
    }

    /// Counts one more line; [`ErrorKind::TooLarge`] once a bound is passed.
    pub(crate) fn take(&mut self, line: &str) -> Result<(), ErrorKind> {
        let Some(lines) = self.lines_left.checked_sub(1) else {
            return Err(ErrorKind::TooLarge(format!(
                "{} is longer than {} lines",
                self.what, self.max_lines
            )));
        };
        let Some(bytes) = self.bytes_left.checked_sub(line.len()) else {
            return Err(ErrorKind::TooLarge(format!(
                "{} is larger than {}",
                self.what,
                crate::error::size(self.max_bytes)
            )));
        };
        (self.lines_left, self.bytes_left) = (lines, bytes);
        Ok(())
    }
}

pub(crate) struct LineConn {
    pub(crate) endpoint: Endpoint,
    reader: BufReader<MailStream>,
}

impl LineConn {
    pub(crate) fn new(endpoint: Endpoint, stream: MailStream) -> Self {
        Self {
            endpoint,
            reader: BufReader::new(stream),
        }
    }

    pub(crate) fn error(&self, step: &str, kind: ErrorKind) -> ProtoError {
        self.endpoint.error(step, kind)
    }

    /// One line without its CRLF. `step` names what we were doing, for errors.
    pub(crate) async fn read_line(&mut self, step: &str) -> Result<String, ProtoError> {
        let mut buf = Vec::new();
        let endpoint = self.endpoint.clone();
        let reader = &mut self.reader;
        endpoint
            .timed(step, async {
                let n = (&mut *reader)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut buf)
                    .await
                    .map_err(|e| endpoint.error(step, ErrorKind::Io(e.to_string())))?;
                if n == 0 {
                    return Err(endpoint.error(
                        step,
                        ErrorKind::Io("the server closed the connection".into()),
                    ));
                }
                if !buf.ends_with(b"\n") {
                    return Err(endpoint.error(
                        step,
                        ErrorKind::Protocol("a line longer than 64 KiB".into()),
                    ));
                }
                Ok(())
            })
            .await?;
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The raw bytes of one line including its line ending (for message data), at most `max`
    /// of them: `false` when the line was cut there, its end not yet read. Message lines are
    /// bounded by what is left of the message's limit rather than by [`MAX_LINE`]: real mail
    /// has long lines (HTML without breaks, unwrapped base64), and the message's limit is
    /// what keeps memory bounded.
    pub(crate) async fn read_raw_line(
        &mut self,
        step: &str,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> Result<bool, ProtoError> {
        buf.clear();
        let endpoint = self.endpoint.clone();
        let reader = &mut self.reader;
        endpoint
            .timed(step, async {
                let n = (&mut *reader)
                    .take(max as u64)
                    .read_until(b'\n', buf)
                    .await
                    .map_err(|e| endpoint.error(step, ErrorKind::Io(e.to_string())))?;
                if buf.ends_with(b"\n") {
                    return Ok(true);
                }
                if n < max {
                    // The end of the stream came before the end of the line.
                    return Err(endpoint.error(
                        step,
                        ErrorKind::Io("the server closed the connection".into()),
                    ));
                }
                Ok(false)
            })
            .await
    }

    pub(crate) async fn write_line(&mut self, step: &str, line: &str) -> Result<(), ProtoError> {
        self.write_raw(step, format!("{line}\r\n").as_bytes()).await
    }

    pub(crate) async fn write_raw(&mut self, step: &str, bytes: &[u8]) -> Result<(), ProtoError> {
        let endpoint = self.endpoint.clone();
        let stream = self.reader.get_mut();
        let io = |e: std::io::Error| endpoint.error(step, ErrorKind::Io(e.to_string()));
        endpoint
            .timed(step, async {
                stream.write_all(bytes).await.map_err(io)?;
                stream.flush().await.map_err(io)
            })
            .await
    }

    /// Switches to TLS after the server agreed to STARTTLS/STLS. Anything the server sent
    /// before the handshake would be plaintext injected into the secure session
    /// (CVE-2011-0411), so leftover buffered bytes are an error.
    pub(crate) async fn start_tls(self, tls: &TlsSettings) -> Result<Self, ProtoError> {
        if !self.reader.buffer().is_empty() {
            return Err(self.error(
                "start TLS",
                ErrorKind::Protocol("the server sent data before the TLS handshake".into()),
            ));
        }
        let endpoint = self.endpoint;
        let stream = self.reader.into_inner().upgrade(&endpoint, tls).await?;
        Ok(Self::new(endpoint, stream))
    }

    /// The stream, for a protocol library to take over. Same buffered-data rule as TLS.
    pub(crate) fn into_stream(self, step: &str) -> Result<(Endpoint, MailStream), ProtoError> {
        if !self.reader.buffer().is_empty() {
            return Err(self.error(
                step,
                ErrorKind::Protocol("unexpected data from the server".into()),
            ));
        }
        Ok((self.endpoint, self.reader.into_inner()))
    }
}
