//! [`ParsedEmail`]: what an email record keeps of a message besides its raw bytes.

use chrono::{DateTime, Utc};

/// A party as written in a header: the address and the display name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Party {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ParsedAttachment {
    pub filename: Option<String>,
    pub content_type: String,
    pub content: Vec<u8>,
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
    /// The plain-text body; for mail that has only HTML, a text rendering of it.
    pub text_body: Option<String>,
    /// The HTML body as sent; `None` for plain-text mail.
    pub html_body: Option<String>,
    pub attachments: Vec<ParsedAttachment>,
    /// Why the message could not be parsed; it is stored raw and flagged.
    pub parse_error: Option<String>,
}
