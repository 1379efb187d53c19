//! [`ProtoError`]: what failed (server, step), in the server's words, and whether retrying
//! later may help ([`ProtoError::is_transient`]).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("{server}: cannot {step}: {kind}")]
pub struct ProtoError {
    /// `host:port`.
    pub server: String,
    /// What we were doing, e.g. "log in with XOAUTH2", "open INBOX".
    pub step: String,
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("connection failed ({0})")]
    Connect(String),
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("TLS failed ({0})")]
    Tls(String),
    /// The server refused the credentials. `detail` is the decoded SASL error challenge
    /// (e.g. `status 401, schemes bearer, scope https://mail.google.com/`).
    #[error("the server refused the login: {words}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    AuthRefused {
        words: String,
        detail: Option<String>,
    },
    /// The server lacks something we need (a mechanism, STARTTLS).
    #[error("{0}")]
    Unsupported(String),
    /// The server refused a command. SMTP 4xx and POP3 `[IN-USE]`/`[SYS/TEMP]` are transient.
    #[error("the server answered: {words}")]
    Rejected { words: String, transient: bool },
    #[error("connection lost ({0})")]
    Io(String),
    #[error("unexpected answer ({0})")]
    Protocol(String),
    /// The server sent more than we hold in memory: a line, a reply or a list longer than its
    /// bound, or a message above [`Endpoint::max_message_bytes`](crate::Endpoint). Not
    /// transient: the same server sends the same thing again.
    #[error("{0}")]
    TooLarge(String),
    /// A value to be sent (a user name, password, token, address, EHLO name) holds a CR, LF
    /// or NUL, which would end the command early and let the rest run as a command of its
    /// own. Refused before anything is sent; not transient: the value has to be corrected.
    #[error("{0}")]
    UnsafeValue(String),
    /// The whole message went out, final `.` included, and then the connection was lost
    /// before the server's answer: it may or may not have taken the message. Not transient:
    /// sending it again could deliver it twice.
    #[error(
        "the connection was lost after the message was sent, before the server confirmed it ({0}); it may have been delivered"
    )]
    Unconfirmed(String),
}

impl ProtoError {
    pub fn new(server: &str, step: impl Into<String>, kind: ErrorKind) -> Self {
        Self {
            server: server.to_owned(),
            step: step.into(),
            kind,
        }
    }

    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            ErrorKind::Connect(_) | ErrorKind::Timeout(_) | ErrorKind::Io(_) => true,
            ErrorKind::Rejected { transient, .. } => *transient,
            ErrorKind::Tls(_)
            | ErrorKind::AuthRefused { .. }
            | ErrorKind::Unsupported(_)
            | ErrorKind::Protocol(_)
            | ErrorKind::TooLarge(_)
            | ErrorKind::UnsafeValue(_)
            | ErrorKind::Unconfirmed(_) => false,
        }
    }

    /// Whether the server answered and refused the command (IMAP NO, SMTP 4xx/5xx, POP3 -ERR).
    pub fn is_rejected(&self) -> bool {
        matches!(self.kind, ErrorKind::Rejected { .. })
    }

    /// Whether the server answered and refused the step: IMAP NO, or BAD — which arrives as a
    /// protocol error, as do responses that break the protocol. A caller that goes on after
    /// one (a refused NOTIFY, STATUS or LIST) relies on the server having answered in step;
    /// one that did not fails the next command.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Rejected { .. } | ErrorKind::Protocol(_)
        )
    }

    /// Whether the server refused the credentials (a new sign-in or password may help).
    pub fn is_auth_refused(&self) -> bool {
        matches!(self.kind, ErrorKind::AuthRefused { .. })
    }
}

/// A size for people: `64 MiB`, `512 KiB`, `100 bytes`.
pub(crate) fn size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    match bytes {
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(64 * 1024 * 1024), "64 MiB");
        assert_eq!(size(64 * 1024), "64 KiB");
        assert_eq!(size(1500), "1500 bytes");
    }
}
