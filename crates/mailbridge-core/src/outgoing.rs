//! [`OutgoingMessage`]: an email the application asks Mailbridge to send, every value checked
//! where it enters ([`OutgoingDraft::resolve`]). Nothing reaches a header of the message
//! unless it is what that header holds: addresses are addresses, a Message-ID is a
//! Message-ID, and no text carries a control character (a CR or LF in a header value would
//! start a header of the caller's choosing — a Bcc, a second body — RFC 5322 §2.2).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::Digest;

use crate::message::Party;
use crate::{EmailAddress, MailboxId, ValidationError};

/// Decoded attachment bytes one email may carry. Gmail accepts messages up to 25 MB as sent,
/// and base64 makes attachments a third larger on the wire.
pub const MAX_ATTACHMENT_BYTES: usize = 18 * 1024 * 1024;
/// Attachments per email.
pub const MAX_ATTACHMENTS: usize = 100;
/// Recipients (to, cc and bcc together) per email; Gmail's own limit per message.
pub const MAX_RECIPIENTS: usize = 500;
/// Extra headers per email.
pub const MAX_EXTRA_HEADERS: usize = 20;
/// RFC 5322 §2.1.1: a line is at most 998 characters; a header value must fit one.
const MAX_HEADER_TEXT: usize = 998;

/// Headers the application may add besides `X-…` ones: list and auto-reply conventions that
/// carry no routing (RFC 2369, RFC 8058, RFC 2919, RFC 3834).
const ALLOWED_HEADERS: &[&str] = &[
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "List-Help",
    "Auto-Submitted",
    "Precedence",
    "Importance",
    "Keywords",
];

/// Headers Mailbridge writes itself or that route or authenticate mail: never from the
/// application, `X-` prefix or not.
const RESERVED_HEADERS: &[&str] = &[
    "X-Mailer",
    "X-Original-To",
    "X-Forwarded-To",
    "X-Forwarded-For",
    "X-Envelope-From",
    "X-Envelope-To",
];

/// A party as the API takes it.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartyDraft {
    #[schema(example = "bob@example.com")]
    pub address: String,
    #[schema(example = "Bob Lee")]
    pub name: Option<String>,
}

/// A file to attach, its bytes in base64.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentDraft {
    /// The file name the recipient sees, e.g. `quote.pdf`.
    pub filename: Option<String>,
    /// e.g. `application/pdf`; default `application/octet-stream`.
    pub content_type: Option<String>,
    /// The file's bytes, base64 (RFC 4648, with or without line breaks).
    pub content_base64: Option<String>,
}

/// `POST /api/v1/emails`: what to send, and from which mailbox.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutgoingDraft {
    /// The mailbox to send from (its owner or an admin).
    #[schema(value_type = String, format = Uuid, required = true)]
    pub mailbox_id: Option<MailboxId>,
    pub to: Option<Vec<PartyDraft>>,
    #[serde(default)]
    pub cc: Vec<PartyDraft>,
    /// Blind copies: sent to, never written into the message.
    #[serde(default)]
    pub bcc: Vec<PartyDraft>,
    /// Where replies should go (the `Reply-To` header), when not to the mailbox itself.
    #[serde(default)]
    pub reply_to: Vec<PartyDraft>,
    pub subject: Option<String>,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    /// The Message-ID of the email this answers (with or without `<>`), so the reply threads.
    pub in_reply_to: Option<String>,
    /// Extra headers by name: `X-…` names, or one of `List-Unsubscribe`,
    /// `List-Unsubscribe-Post`, `List-Id`, `List-Help`, `Auto-Submitted`, `Precedence`,
    /// `Importance`, `Keywords`; at most 20, each value one line.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Files to attach (at most 100, 18 MiB in all once decoded).
    #[serde(default)]
    pub attachments: Vec<AttachmentDraft>,
    /// Put a tracking token (`[MB-7K3QZ9PA]`) at the end of the subject, so replies from
    /// clients that drop the reply headers still join the conversation. Default true.
    pub tracking_token: Option<bool>,
}

/// An RFC 5322 msg-id (`left@right`, kept without its angle brackets, as stored records
/// keep them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId(String);

impl MessageId {
    pub fn parse(raw: &str, field: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        let inner = trimmed
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(trimmed);
        let invalid = || {
            ValidationError::new(
                field,
                "must be a Message-ID such as <CAF3xY7@mail.example.com>: one '@', no spaces, no control characters",
            )
        };
        // RFC 5322 §3.6.4: id-left "@" id-right, each dot-atom-text (or a domain literal on
        // the right); visible ASCII without the specials that would end or nest the id.
        let allowed = |c: char| c.is_ascii_graphic() && !"<>()\\\",;:@ ".contains(c);
        let (left, right) = inner.split_once('@').ok_or_else(invalid)?;
        if inner.len() > MAX_HEADER_TEXT - 2
            || left.is_empty()
            || right.is_empty()
            || !left.chars().all(allowed)
            || !right.chars().all(|c| allowed(c) || c == '[' || c == ']')
        {
            return Err(invalid());
        }
        Ok(Self(inner.to_owned()))
    }

    /// Without angle brackets.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An attachment, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingAttachment {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

/// A complete, checked email to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub to: Vec<Party>,
    pub cc: Vec<Party>,
    pub bcc: Vec<Party>,
    pub reply_to: Vec<Party>,
    pub subject: String,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub in_reply_to: Option<MessageId>,
    /// (name, value), in name order.
    pub headers: Vec<(String, String)>,
    pub attachments: Vec<OutgoingAttachment>,
    /// Whether to append a tracking token to the subject.
    pub tracking_token: bool,
}

impl OutgoingDraft {
    /// The checked message and the mailbox to send it from. Every error names its field
    /// (`to[2].address`, `headers.X-Campaign`, `attachments[0].content_base64`).
    pub fn resolve(self) -> Result<(MailboxId, OutgoingMessage), ValidationError> {
        let mailbox = self.mailbox_id.ok_or_else(|| {
            ValidationError::new(
                "mailbox_id",
                "mailbox_id is required: the mailbox to send from",
            )
        })?;
        let to = parties(self.to.unwrap_or_default(), "to")?;
        if to.is_empty() {
            return Err(ValidationError::new(
                "to",
                "to needs at least one recipient, e.g. [{\"address\": \"bob@example.com\"}]",
            ));
        }
        let cc = parties(self.cc, "cc")?;
        let bcc = parties(self.bcc, "bcc")?;
        let reply_to = parties(self.reply_to, "reply_to")?;
        if to.len() + cc.len() + bcc.len() > MAX_RECIPIENTS {
            return Err(ValidationError::new(
                "to",
                format!(
                    "an email may have at most {MAX_RECIPIENTS} recipients (to, cc and bcc together); split it"
                ),
            ));
        }
        let subject = header_text(self.subject.as_deref().unwrap_or_default(), "subject")?;
        if self.text_body.is_none() && self.html_body.is_none() {
            return Err(ValidationError::new(
                "text_body",
                "give text_body, html_body, or both",
            ));
        }
        let in_reply_to = self
            .in_reply_to
            .filter(|s| !s.trim().is_empty())
            .map(|s| MessageId::parse(&s, "in_reply_to"))
            .transpose()?;
        if self.headers.len() > MAX_EXTRA_HEADERS {
            return Err(ValidationError::new(
                "headers",
                format!("at most {MAX_EXTRA_HEADERS} extra headers"),
            ));
        }
        let headers = self
            .headers
            .into_iter()
            .map(|(name, value)| {
                let field = format!("headers.{name}");
                check_header_name(&name, &field)?;
                Ok((name, header_text(&value, &field)?))
            })
            .collect::<Result<Vec<_>, ValidationError>>()?;
        let attachments = attachments(self.attachments)?;
        Ok((
            mailbox,
            OutgoingMessage {
                to,
                cc,
                bcc,
                reply_to,
                subject,
                text_body: self.text_body,
                html_body: self.html_body,
                in_reply_to,
                headers,
                attachments,
                tracking_token: self.tracking_token.unwrap_or(true),
            },
        ))
    }
}

impl OutgoingMessage {
    /// Every address the message goes to (the SMTP envelope): to, cc and bcc.
    pub fn envelope(&self) -> Vec<String> {
        self.to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(|p| p.address.clone())
            .collect()
    }

    /// SHA-256 (hex) over everything the message says, so a retried request can be told
    /// from a different one under the same `Idempotency-Key`.
    pub fn fingerprint(&self) -> String {
        let mut h = sha2::Sha256::new();
        let mut field = |tag: &str, value: &[u8]| {
            h.update(tag.as_bytes());
            h.update((value.len() as u64).to_be_bytes());
            h.update(value);
        };
        for (tag, list) in [
            ("to", &self.to),
            ("cc", &self.cc),
            ("bcc", &self.bcc),
            ("reply_to", &self.reply_to),
        ] {
            for p in list {
                field(tag, p.address.as_bytes());
                field("name", p.name.as_deref().unwrap_or_default().as_bytes());
            }
        }
        field("subject", self.subject.as_bytes());
        for (tag, body) in [("text", &self.text_body), ("html", &self.html_body)] {
            if let Some(b) = body {
                field(tag, b.as_bytes());
            }
        }
        if let Some(id) = &self.in_reply_to {
            field("in_reply_to", id.as_str().as_bytes());
        }
        for (name, value) in &self.headers {
            field("header", name.to_ascii_lowercase().as_bytes());
            field("value", value.as_bytes());
        }
        for a in &self.attachments {
            field("filename", a.filename.as_bytes());
            field("content_type", a.content_type.as_bytes());
            field("content", &a.content);
        }
        field("tracking_token", &[u8::from(self.tracking_token)]);
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Text for a header: at most one line of 998 characters, no control characters.
pub fn header_text(raw: &str, field: &str) -> Result<String, ValidationError> {
    if raw.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            format!("{field} must be one line without control characters (no CR, LF or tab)"),
        ));
    }
    if raw.chars().count() > MAX_HEADER_TEXT {
        return Err(ValidationError::new(
            field,
            format!("{field} must be at most {MAX_HEADER_TEXT} characters"),
        ));
    }
    Ok(raw.to_owned())
}

fn parties(input: Vec<PartyDraft>, field: &str) -> Result<Vec<Party>, ValidationError> {
    input
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let at = format!("{field}[{i}]");
            let address = EmailAddress::parse(&p.address, &format!("{at}.address"))?;
            let name = p
                .name
                .map(|n| header_text(n.trim(), &format!("{at}.name")))
                .transpose()?
                .filter(|n| !n.is_empty());
            Ok(Party {
                address: address.to_string(),
                name,
            })
        })
        .collect()
}

/// An extra header's name: an RFC 5322 field name, `X-…` or one of [`ALLOWED_HEADERS`].
fn check_header_name(name: &str, field: &str) -> Result<(), ValidationError> {
    let well_formed = !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !well_formed {
        return Err(ValidationError::new(
            field,
            format!(
                "'{}' is not a header name; use letters, digits and '-', e.g. X-Campaign",
                name.escape_debug()
            ),
        ));
    }
    let is = |n: &&str| n.eq_ignore_ascii_case(name);
    let custom = name.len() > 2 && name[..2].eq_ignore_ascii_case("X-");
    if RESERVED_HEADERS.iter().any(is) || !(custom || ALLOWED_HEADERS.iter().any(is)) {
        return Err(ValidationError::new(
            field,
            format!(
                "the {name} header cannot be set here; use an X- header or one of {} (recipients, subject and reply headers have their own fields)",
                ALLOWED_HEADERS.join(", ")
            ),
        ));
    }
    Ok(())
}

fn attachments(input: Vec<AttachmentDraft>) -> Result<Vec<OutgoingAttachment>, ValidationError> {
    if input.len() > MAX_ATTACHMENTS {
        return Err(ValidationError::new(
            "attachments",
            format!("at most {MAX_ATTACHMENTS} attachments per email"),
        ));
    }
    let mut total = 0usize;
    input
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let at = format!("attachments[{i}]");
            let filename = match a.filename.as_deref().map(str::trim) {
                Some(n) if !n.is_empty() && n.chars().count() <= 255 => {
                    header_text(n, &format!("{at}.filename"))?
                }
                _ => {
                    return Err(ValidationError::new(
                        format!("{at}.filename"),
                        "filename is required: 1 to 255 characters, e.g. quote.pdf",
                    ));
                }
            };
            let content_type = match a.content_type.as_deref().map(str::trim) {
                None | Some("") => "application/octet-stream".to_owned(),
                Some(t) if is_media_type(t) => t.to_ascii_lowercase(),
                Some(t) => {
                    return Err(ValidationError::new(
                        format!("{at}.content_type"),
                        format!(
                            "'{}' is not a media type; write type/subtype, e.g. application/pdf",
                            t.escape_debug()
                        ),
                    ));
                }
            };
            let encoded: String = a
                .content_base64
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            let content = B64.decode(encoded.as_bytes()).map_err(|e| {
                ValidationError::new(
                    format!("{at}.content_base64"),
                    format!("content_base64 is not base64 ({e}); encode the file's bytes with standard base64"),
                )
            })?;
            total += content.len();
            if total > MAX_ATTACHMENT_BYTES {
                return Err(ValidationError::new(
                    "attachments",
                    format!(
                        "attachments may hold at most {} MiB in all (decoded); send large files as links",
                        MAX_ATTACHMENT_BYTES / (1024 * 1024)
                    ),
                ));
            }
            Ok(OutgoingAttachment {
                filename,
                content_type,
                content,
            })
        })
        .collect()
}

/// `type/subtype` of RFC 2045 tokens, without parameters.
fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 127
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    s.split_once('/')
        .is_some_and(|(t, sub)| token(t) && token(sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(json: serde_json::Value) -> OutgoingDraft {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "mailbox_id": MailboxId::new(),
            "to": [{"address": "bob@example.com", "name": "Bob"}],
            "subject": "Hello", "text_body": "Hi",
        })
    }

    fn with(field: &str, value: serde_json::Value) -> Result<OutgoingMessage, ValidationError> {
        let mut v = base();
        v[field] = value;
        draft(v).resolve().map(|(_, m)| m)
    }

    #[test]
    fn no_value_with_a_line_break_reaches_a_header() {
        let cases = [
            (
                "in_reply_to",
                serde_json::json!("<a@b>\r\nBcc: eve@evil.example"),
                "in_reply_to",
            ),
            (
                "subject",
                serde_json::json!("Hi\r\nBcc: eve@evil.example"),
                "subject",
            ),
            ("subject", serde_json::json!("Hi\nX: y"), "subject"),
            ("subject", serde_json::json!("Hi\rX: y"), "subject"),
            (
                "to",
                serde_json::json!([{"address": "bob@example.com", "name": "Bob\r\nBcc: eve@evil.example"}]),
                "to[0].name",
            ),
            (
                "to",
                serde_json::json!([{"address": "bob@example.com\r\nBcc: eve@evil.example"}]),
                "to[0].address",
            ),
            (
                "cc",
                serde_json::json!([{"address": "c@example.com", "name": "C\u{0}"}]),
                "cc[0].name",
            ),
            (
                "reply_to",
                serde_json::json!([{"address": "r@example.com", "name": "R\nX-Y: z"}]),
                "reply_to[0].name",
            ),
            (
                "headers",
                serde_json::json!({"X-Campaign": "1\r\nBcc: eve@evil.example"}),
                "headers.X-Campaign",
            ),
            (
                "headers",
                serde_json::json!({"X-A\r\nBcc": "1"}),
                "headers.X-A\r\nBcc",
            ),
            (
                "attachments",
                serde_json::json!([{"filename": "a\r\n.pdf", "content_base64": ""}]),
                "attachments[0].filename",
            ),
            (
                "attachments",
                serde_json::json!([{"filename": "a.pdf", "content_type": "text/plain\r\nX: y", "content_base64": ""}]),
                "attachments[0].content_type",
            ),
        ];
        for (field, value, at) in cases {
            let e = with(field, value.clone()).unwrap_err();
            assert_eq!(e.field, at, "{field} = {value}: {e}");
        }
    }

    #[test]
    fn message_ids_are_checked_and_kept_without_brackets() {
        for ok in [
            "<CAF3xY7+a=b@mail.gmail.com>",
            "abc.123@example.com",
            "a@[127.0.0.1]",
        ] {
            let m = with("in_reply_to", serde_json::json!(ok)).unwrap();
            let id = m.in_reply_to.unwrap();
            assert!(!id.as_str().starts_with('<'), "{ok}");
        }
        for bad in [
            "no-at-sign",
            "<a@b> <c@d>",
            "a b@c",
            "@b",
            "a@",
            "<a@b>>",
            "a@b@c",
        ] {
            let e = with("in_reply_to", serde_json::json!(bad)).unwrap_err();
            assert_eq!(e.field, "in_reply_to", "{bad}");
        }
    }

    #[test]
    fn extra_headers_are_x_or_a_short_list_and_never_routing_ones() {
        let m = with(
            "headers",
            serde_json::json!({"X-Campaign": "spring", "List-Unsubscribe": "<mailto:u@example.com>"}),
        )
        .unwrap();
        assert_eq!(m.headers.len(), 2);
        for bad in [
            "Bcc",
            "To",
            "From",
            "Reply-To",
            "Content-Type",
            "X-Mailer",
            "Received",
            "X-",
        ] {
            let e = with("headers", serde_json::json!({ bad: "v" })).unwrap_err();
            assert_eq!(e.field, format!("headers.{bad}"), "{bad}");
        }
    }

    #[test]
    fn attachments_are_decoded_and_bounded() {
        let m = with(
            "attachments",
            serde_json::json!([{"filename": "q.pdf", "content_type": "Application/PDF", "content_base64": "JVBE\nRi0x"}]),
        )
        .unwrap();
        assert_eq!(m.attachments[0].content, b"%PDF-1");
        assert_eq!(m.attachments[0].content_type, "application/pdf");
        let e = with(
            "attachments",
            serde_json::json!([{"filename": "q.pdf", "content_base64": "not base64!"}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "attachments[0].content_base64");
        let big = B64.encode(vec![0u8; MAX_ATTACHMENT_BYTES / 2 + 1]);
        let e = with(
            "attachments",
            serde_json::json!([{"filename": "a", "content_base64": big}, {"filename": "b", "content_base64": big}]),
        )
        .unwrap_err();
        assert_eq!(e.field, "attachments");
        assert!(e.message.contains("18 MiB"), "{e}");
    }

    #[test]
    fn the_fingerprint_tells_different_emails_apart_and_only_them() {
        let a = with("subject", serde_json::json!("One")).unwrap();
        let same = with("subject", serde_json::json!("One")).unwrap();
        let other = with("subject", serde_json::json!("Two")).unwrap();
        assert_eq!(a.fingerprint(), same.fingerprint());
        assert_ne!(a.fingerprint(), other.fingerprint());
        let bcc = with("bcc", serde_json::json!([{"address": "x@example.com"}])).unwrap();
        assert_ne!(a.fingerprint(), bcc.fingerprint());
        assert_eq!(bcc.envelope(), ["bob@example.com", "x@example.com"]);
    }

    #[test]
    fn required_fields_are_named() {
        let e = draft(serde_json::json!({"to": [{"address": "b@example.com"}], "text_body": "x"}))
            .resolve()
            .unwrap_err();
        assert_eq!(e.field, "mailbox_id");
        let e = with("to", serde_json::json!([])).unwrap_err();
        assert_eq!(e.field, "to");
    }
}
