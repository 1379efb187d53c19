//! Where a mail server is: [`Host`], [`Port`], [`Security`], and the incoming [`IncomingProtocol`].

use std::fmt;
use std::net::IpAddr;

use crate::ValidationError;

crate::string_enum! {
    /// How the connection to a server is protected.
    Security {
        /// TLS from the first byte (IMAPS 993, POP3S 995, SMTPS 465).
        Tls => "tls",
        /// Plain connection upgraded with STARTTLS / STLS (IMAP 143, POP3 110, submission 587).
        Starttls => "starttls",
        /// No encryption; only for servers on a trusted network.
        None => "none",
    }
}

crate::string_enum! {
    /// The protocol for incoming mail.
    IncomingProtocol {
        Imap => "imap",
        Pop3 => "pop3",
    }
}

/// A TCP port, 1–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Port(u16);

impl Port {
    pub const fn new_const(port: u16) -> Self {
        Self(port)
    }

    /// Accepts any JSON integer so that an out-of-range value gets our message, not serde's.
    pub fn parse(raw: i64, field: &str) -> Result<Self, ValidationError> {
        match u16::try_from(raw) {
            Ok(p) if p != 0 => Ok(Self(p)),
            _ => Err(ValidationError::new(
                field,
                format!(
                    "port {raw} is out of range; use a port from 1 to 65535 (e.g. 993 for IMAP over TLS)"
                ),
            )),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// A server name or IP address, as a client would dial it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Host(String);

impl Host {
    pub fn parse(raw: &str, field: &str) -> Result<Self, ValidationError> {
        let s = raw.trim();
        if s.parse::<IpAddr>().is_ok() {
            return Ok(Self(s.to_owned()));
        }
        check_domain(s).map_err(|why| {
            ValidationError::new(
                field,
                format!("'{s}' is not a valid server name ({why}); write a name such as imap.example.com or an IP address"),
            )
        })?;
        Ok(Self(s.to_ascii_lowercase()))
    }

    /// A name this crate knows to be valid (a preset's servers).
    pub(crate) fn known(name: &str) -> Self {
        Self(name.to_owned())
    }

    /// Whether this is one of Gmail's servers (`imap.gmail.com`, `smtp.gmail.com`…).
    pub fn is_gmail(&self) -> bool {
        ["gmail.com", "googlemail.com"]
            .iter()
            .any(|d| self.0 == *d || self.0.ends_with(&format!(".{d}")))
    }

    /// Whether mail sent through this provider's SMTP server is filed in the sender's Sent
    /// folder by the provider itself (Gmail; Exchange Online since 2018), so that a copy
    /// appended by the client would be a second one.
    pub fn files_sent_mail_itself(&self) -> bool {
        self.is_gmail()
            || ["office365.com", "outlook.com"]
                .iter()
                .any(|d| self.0.ends_with(&format!(".{d}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// RFC 1123 host name syntax: dot-separated labels of letters, digits and inner hyphens.
pub(crate) fn check_domain(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("it is empty");
    }
    if s.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err("it has an empty label");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_outside_1_to_65535_are_refused_with_the_field() {
        for bad in [0, -1, 65536, i64::MAX] {
            let e = Port::parse(bad, "incoming.port").unwrap_err();
            assert_eq!(e.field, "incoming.port");
            assert!(e.message.contains("1 to 65535"));
        }
        assert_eq!(Port::parse(993, "p").unwrap().get(), 993);
        assert_eq!(Port::parse(65535, "p").unwrap().get(), 65535);
    }

    #[test]
    fn hosts_are_names_or_ip_literals() {
        assert_eq!(
            Host::parse("IMAP.Gmail.com", "h").unwrap().as_str(),
            "imap.gmail.com"
        );
        assert_eq!(Host::parse("127.0.0.1", "h").unwrap().as_str(), "127.0.0.1");
        assert_eq!(Host::parse("::1", "h").unwrap().as_str(), "::1");
        assert_eq!(Host::parse("localhost", "h").unwrap().as_str(), "localhost");
        for bad in [
            "",
            "imap gmail.com",
            "imap..gmail.com",
            "-imap.gmail.com",
            "imap.gmail.com:993",
            "https://imap.gmail.com",
        ] {
            let e = Host::parse(bad, "outgoing.host").unwrap_err();
            assert_eq!(e.field, "outgoing.host", "{bad}");
        }
    }
}
