//! [`parse`]: raw RFC 5322 bytes into the fields of an email record, with mail-parser 0.11.
//! A message that cannot be read is still kept: the caller stores it raw with the reason.
//! [`bodies`] and [`attachment`] read a stored message's contents again from its bytes.

pub use crate::message::{ParsedAttachment, ParsedEmail, Party};
use chrono::{TimeZone, Utc};
use mail_parser::{
    Address, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};

/// Parses a message's header alone (a message too large to take whole): its fields, and no
/// body or attachment — the header announces parts that are not there.
pub fn parse_header(header: &[u8]) -> ParsedEmail {
    ParsedEmail {
        text_body: None,
        html_body: None,
        attachments: Vec::new(),
        ..parse(header)
    }
}

/// Parses a message. Never fails: an unreadable one comes back with `parse_error` set.
pub fn parse(raw: &[u8]) -> ParsedEmail {
    // mail-parser reads whatever senders write, and a panic inside it would end the mailbox's
    // sync on this message, then again on every retry: one hostile email would stop the
    // mailbox for good. Caught, the message is kept raw and flagged like any other it cannot
    // read. (The ingest fuzz target found nested message/rfc822 parts that trip a debug
    // assertion in mail-parser 0.11.9.)
    std::panic::catch_unwind(|| read(raw)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no reason given");
        ParsedEmail {
            parse_error: Some(format!("mail-parser failed on this message: {why}")),
            ..ParsedEmail::default()
        }
    })
}

/// A stored message's text and HTML bodies, read from its bytes each time they are asked for:
/// the store keeps the raw message only, not the bodies beside it (they would double the
/// bytes written by a first sync and kept on disk). The same bodies [`parse`] gives; none
/// for a message mail-parser cannot read.
pub fn bodies(raw: &[u8]) -> (Option<String>, Option<String>) {
    std::panic::catch_unwind(|| {
        MessageParser::default()
            .parse(raw)
            .map(|message| (text_body(&message), html_body(&message)))
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// A stored message's `n`-th attachment (in the order [`parse`] lists them), decoded, read from
/// its bytes without decoding the others; none when there is no such attachment or mail-parser
/// cannot read the message.
pub fn attachment(raw: &[u8], n: usize) -> Option<ParsedAttachment> {
    let n = u32::try_from(n).ok()?;
    std::panic::catch_unwind(|| {
        MessageParser::default()
            .parse(raw)?
            .attachment(n)
            .map(attachment_of)
    })
    .ok()
    .flatten()
}

fn attachment_of(part: &MessagePart<'_>) -> ParsedAttachment {
    ParsedAttachment {
        filename: part.attachment_name().map(text),
        content_type: part.content_type().map_or_else(
            || "application/octet-stream".to_owned(),
            |ct| {
                text(match ct.subtype() {
                    Some(sub) => format!("{}/{sub}", ct.ctype()),
                    None => ct.ctype().to_owned(),
                })
            },
        ),
        content: part.contents().to_vec(),
    }
}

fn text_body(message: &Message<'_>) -> Option<String> {
    message.body_text(0).map(text)
}

/// The first HTML part among the body candidates (multipart/mixed can list an inline
/// text/plain before it). mail-parser's body_html would wrap a plain-text body in HTML
/// instead, which is not what the sender wrote.
fn html_body(message: &Message<'_>) -> Option<String> {
    message
        .html_body
        .iter()
        .filter_map(|&id| message.part(id))
        .find_map(|part| match &part.body {
            PartType::Html(html) => Some(text(html.as_ref())),
            _ => None,
        })
}

fn read(raw: &[u8]) -> ParsedEmail {
    let Some(message) = MessageParser::default().parse(raw) else {
        return ParsedEmail {
            parse_error: Some("no message headers could be read".to_owned()),
            ..ParsedEmail::default()
        };
    };
    let mut parsed = ParsedEmail {
        message_id: message.message_id().map(text),
        in_reply_to: ids(message.in_reply_to()),
        references: ids(message.references()),
        subject: message.subject().map(text),
        from: message.from().and_then(|a| parties(a).into_iter().next()),
        to: message.to().map(parties).unwrap_or_default(),
        cc: message.cc().map(parties).unwrap_or_default(),
        date: message
            .date()
            .and_then(|d| Utc.timestamp_opt(d.to_timestamp(), 0).single()),
        text_body: text_body(&message),
        html_body: html_body(&message),
        attachments: message.attachments().map(attachment_of).collect(),
        parse_error: None,
    };
    if parsed.from.is_none() && parsed.message_id.is_none() && parsed.subject.is_none() {
        parsed.parse_error =
            Some("the message has no From, Message-ID or Subject header".to_owned());
    }
    parsed
}

/// Decoded text as stored: a NUL (`=00` in quoted-printable, or in base64) becomes U+FFFD,
/// because PostgreSQL's text cannot hold it and a refused batch would stop the mailbox's sync.
/// The raw bytes keep the original.
fn text<'a>(s: impl Into<std::borrow::Cow<'a, str>>) -> String {
    let s = s.into();
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.into_owned()
    }
}

fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(t) => vec![text(t.as_ref())],
        HeaderValue::TextList(list) => list.iter().map(|t| text(t.as_ref())).collect(),
        _ => Vec::new(),
    }
}

fn parties(address: &Address<'_>) -> Vec<Party> {
    address
        .iter()
        .filter_map(|a| {
            Some(Party {
                address: text(a.address()?),
                name: a.name().map(text),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_with_an_attachment_is_read_field_by_field() {
        let raw = b"From: Ann Lee <ann@example.com>\r\nTo: bob@example.com, Carol <carol@example.com>\r\n\
Cc: dan@example.com\r\nSubject: Re: quote\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <r1@example.com>\r\nIn-Reply-To: <q1@example.com>\r\nReferences: <q0@example.com> <q1@example.com>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
Thanks!\r\n--b\r\nContent-Type: application/pdf; name=quote.pdf\r\nContent-Disposition: attachment; filename=quote.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n";
        let p = parse(raw);
        assert_eq!(p.parse_error, None);
        assert_eq!(p.message_id.as_deref(), Some("r1@example.com"));
        assert_eq!(p.in_reply_to, ["q1@example.com"]);
        assert_eq!(p.references, ["q0@example.com", "q1@example.com"]);
        assert_eq!(p.subject.as_deref(), Some("Re: quote"));
        assert_eq!(
            p.from,
            Some(Party {
                address: "ann@example.com".into(),
                name: Some("Ann Lee".into())
            })
        );
        assert_eq!(
            p.to.iter().map(|t| t.address.as_str()).collect::<Vec<_>>(),
            ["bob@example.com", "carol@example.com"]
        );
        assert_eq!(p.cc[0].address, "dan@example.com");
        assert_eq!(
            p.date.map(|d| d.to_rfc3339()),
            Some("2026-11-24T10:00:00+00:00".into())
        );
        assert_eq!(p.text_body.as_deref().map(str::trim), Some("Thanks!"));
        assert_eq!(p.html_body, None, "plain-text mail has no HTML body");
        assert_eq!(p.attachments.len(), 1);
        assert_eq!(p.attachments[0].filename.as_deref(), Some("quote.pdf"));
        assert_eq!(p.attachments[0].content_type, "application/pdf");
        assert_eq!(p.attachments[0].content, b"%PDF-");
    }

    #[test]
    fn html_only_mail_keeps_its_html_and_gets_a_text_rendering() {
        let raw = b"From: ann@example.com\r\nSubject: offer\r\nMessage-ID: <h1@example.com>\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n<p>Hello <b>Bob</b></p>\r\n";
        let p = parse(raw);
        assert_eq!(
            p.html_body.as_deref().map(str::trim),
            Some("<p>Hello <b>Bob</b></p>")
        );
        assert_eq!(p.text_body.as_deref().map(str::trim), Some("Hello Bob"));
    }

    #[test]
    fn the_html_of_a_mixed_message_is_found_after_its_plain_text() {
        let raw = b"From: ann@example.com\r\nSubject: both\r\nMessage-ID: <x1@example.com>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain\r\n\r\nplain first\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>then html</p>\r\n--b--\r\n";
        let p = parse(raw);
        assert_eq!(p.text_body.as_deref().map(str::trim), Some("plain first"));
        assert_eq!(
            p.html_body.as_deref().map(str::trim),
            Some("<p>then html</p>")
        );
    }

    #[test]
    fn nul_characters_never_reach_the_text_fields() {
        let raw = b"From: =?utf-8?q?Ann=00Lee?= <ann@example.com>\r\nSubject: =?utf-8?q?a=00b?=\r\n\
Message-ID: <n1@example.com>\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
one=00two\r\n";
        let p = parse(raw);
        assert_eq!(p.subject.as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(
            p.text_body.as_deref().map(str::trim),
            Some("one\u{FFFD}two")
        );
        assert_eq!(
            p.from.and_then(|f| f.name).as_deref(),
            Some("Ann\u{FFFD}Lee")
        );
    }

    #[test]
    fn a_message_that_makes_mail_parser_panic_is_flagged_not_dropped() {
        // Found by the ingest fuzz target (minimised): a message/rfc822 part inside another,
        // which fails mail-parser 0.11.9's debug assertion "Invalid part ID, could not find
        // multipart." Release builds skip that assertion and read what they can.
        let raw = b"Return-Pxe.de\n\
ROJorge\n\
Content-Type: multipart/mixed;\n\
\x20boundary=\"=_2d98f6c3ddf4b54299ae2604b2717254\"r Technologien - chtstde\n\
\n\
--=_2d98f6c3ddf4b54299ae2604b2717254\n\
Conteer-Encoding: 8bit\n\
Content-Type: message/rfc822;\n\
\x20name=ning-mail.txt;\n\
\x20size=2231\n\
\n\
Delivered-To: usever\x80\x00it\n\
Content-Type: message/rfc822;\n\
\x20name=shop-ontachme=shop-mail.txt;\n\
\x20size=2577\n\
\n\
Deliv@-S.00),\n\
M6 13:21:03 +0100 (CET)\n\
\n\
Tob 20Encoding: 8bit\n\
--=_2d98f6c3ddf4b54299ae2604b2717254--\n";
        let p = parse(raw);
        if cfg!(debug_assertions) {
            assert!(
                p.parse_error
                    .as_deref()
                    .is_some_and(|e| e.contains("mail-parser failed")),
                "{:?}",
                p.parse_error
            );
        }
    }

    #[test]
    fn garbage_is_flagged_not_dropped() {
        assert!(parse(b"").parse_error.is_some());
        assert!(parse(b"\x00\x01\x02 not a message").parse_error.is_some());
    }
}
