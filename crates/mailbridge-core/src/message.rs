//! [`ParsedEmail`]: what an email record keeps of a message besides its raw bytes.

use chrono::{DateTime, Utc};

/// A party as written in a header: the address and the display name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Party {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
}

/// An attachment as its message lists it: what the record says of it. Its contents stay in
/// the raw message ([`crate::parse::attachment`] reads them from there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAttachment {
    pub filename: Option<String>,
    pub content_type: String,
    /// The decoded contents' length in bytes.
    pub size: usize,
}

/// What an email record keeps of a message besides its raw bytes.
#[derive(Debug, Clone, Default)]
pub struct ParsedEmail {
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub subject: Option<String>,
    pub from: Option<Party>,
    pub to: Vec<Party>,
    pub cc: Vec<Party>,
    pub date: Option<DateTime<Utc>>,
    pub attachments: Vec<ParsedAttachment>,
    /// Why the message could not be parsed; it is stored raw and flagged.
    pub parse_error: Option<String>,
}

/// The system flags of RFC 3501 §2.3.2 a record follows from its server.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct MessageFlags {
    /// `\Seen`: read.
    pub seen: bool,
    /// `\Flagged`: starred (Gmail), flagged (Outlook, Apple Mail).
    pub flagged: bool,
    /// `\Answered`: replied to.
    pub answered: bool,
    /// `\Draft`.
    pub draft: bool,
}

impl MessageFlags {
    /// From IMAP flags (case does not matter; keywords and other flags are not followed).
    pub fn from_imap<S: AsRef<str>>(flags: &[S]) -> Self {
        let has = |name: &str| flags.iter().any(|f| f.as_ref().eq_ignore_ascii_case(name));
        Self {
            seen: has("\\Seen"),
            flagged: has("\\Flagged"),
            answered: has("\\Answered"),
            draft: has("\\Draft"),
        }
    }

    /// As stored and as IMAP writes them: the flags set, space-separated (`\Seen \Flagged`).
    pub fn to_imap(self) -> String {
        [
            (self.seen, "\\Seen"),
            (self.flagged, "\\Flagged"),
            (self.answered, "\\Answered"),
            (self.draft, "\\Draft"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// From the stored form ([`MessageFlags::to_imap`]).
    pub fn from_stored(stored: &str) -> Self {
        Self::from_imap(&stored.split_whitespace().collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::MessageFlags;

    #[test]
    fn flags_survive_being_stored_and_ignore_keywords_and_case() {
        let f = MessageFlags::from_imap(&["\\SEEN", "$Forwarded", "\\Flagged", "\\Recent"]);
        assert_eq!(
            f,
            MessageFlags {
                seen: true,
                flagged: true,
                answered: false,
                draft: false
            }
        );
        assert_eq!(f.to_imap(), "\\Seen \\Flagged");
        assert_eq!(MessageFlags::from_stored(&f.to_imap()), f);
        assert_eq!(MessageFlags::default().to_imap(), "");
    }
}
