//! [`parse`]: raw RFC 5322 bytes into the fields of an email record, with mail-parser 0.11.
//! A message that cannot be read is still kept: the caller stores it raw with the reason.
//! [`bodies`] and [`attachment`] read a stored message's contents again from its bytes.

pub use crate::message::{ParsedAttachment, ParsedEmail, Party};
use chrono::{TimeZone, Utc};
use mail_parser::{
    Address, GetHeader, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders,
    PartType,
};
use std::sync::LazyLock;

/// mail-parser set to read only the headers a record keeps (and the MIME headers that find the
/// parts); every other header is skipped, not parsed. Its default parses them all — a
/// `Received:` header takes a tokenizer of its own, and a message has several — which cost a
/// first sync about a third of its parse time for fields nothing reads. The same parser reads
/// a stored message's bodies and attachments, so it finds the parts the record lists.
static PARSER: LazyLock<MessageParser> = LazyLock::new(|| {
    MessageParser::new()
        .with_mime_headers()
        .header_id(HeaderName::MessageId)
        .header_id(HeaderName::InReplyTo)
        .header_id(HeaderName::References)
        .header_text(HeaderName::Subject)
        .header_date(HeaderName::Date)
        .header_address(HeaderName::From)
        .header_address(HeaderName::To)
        .header_address(HeaderName::Cc)
        .default_header_ignore()
});

/// Parses a message's header alone (a message too large to take whole): its fields, and no
/// attachment — the header announces parts that are not there.
pub fn parse_header(header: &[u8]) -> ParsedEmail {
    ParsedEmail {
        attachments: Vec::new(),
        ..parse(header)
    }
}

/// Parses a message into the fields of its record. Never fails: an unreadable one comes back
/// with `parse_error` set. Bodies are not read here: the record keeps the raw message, and
/// [`bodies`] reads them from it when they are asked for.
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
/// bytes written by a first sync and kept on disk). The text body of mail that has only HTML
/// is a rendering of it; the HTML body of plain-text mail is none. None for a message
/// mail-parser cannot read.
pub fn bodies(raw: &[u8]) -> (Option<String>, Option<String>) {
    std::panic::catch_unwind(|| {
        PARSER
            .parse(raw)
            .map(|message| (text_body(&message), html_body(&message)))
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// A stored message's `n`-th attachment (in the order [`parse`] lists them) and its decoded
/// contents, read from its bytes without decoding the others; none when there is no such
/// attachment or mail-parser cannot read the message.
pub fn attachment(raw: &[u8], n: usize) -> Option<(ParsedAttachment, Vec<u8>)> {
    let n = u32::try_from(n).ok()?;
    std::panic::catch_unwind(|| {
        PARSER
            .parse(raw)?
            .attachment(n)
            .map(|part| (attachment_of(part), part.contents().to_vec()))
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
        size: part.contents().len(),
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
    // Most mail is one text part (three quarters of the corpus): its header alone says there
    // is no attachment, and the full parse would only decode a body the record does not keep
    // (charset and transfer decoding were about a tenth of a first sync's CPU).
    let message = match PARSER.parse_headers(raw) {
        Some(header) if lists_no_attachment(&header) => Some(header),
        _ => PARSER.parse(raw),
    };
    let Some(message) = message else {
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
        attachments: message.attachments().map(attachment_of).collect(),
        parse_error: None,
    };
    if parsed.from.is_none() && parsed.message_id.is_none() && parsed.subject.is_none() {
        parsed.parse_error =
            Some("the message has no From, Message-ID or Subject header".to_owned());
    }
    parsed
}

/// Whether mail-parser's full parse would list no attachment, read from the top header: a
/// single `text/plain` part (or one without a Content-Type), or a `text/html` part sent as is,
/// and not marked as an attachment. These are mail-parser's own rules (its `parse_`, 0.11) and
/// its own comparisons: a plain-text part stays the body even if its encoding is broken, an
/// HTML part whose base64 or quoted-printable cannot be decoded becomes an attachment — so
/// those take the full parse, as does anything else.
fn lists_no_attachment(header: &Message<'_>) -> bool {
    if header
        .content_disposition()
        .is_some_and(|d| d.is_attachment())
    {
        return false;
    }
    let Some(content_type) = header.content_type() else {
        return true;
    };
    match (content_type.ctype(), content_type.subtype()) {
        ("text", Some("plain")) => true,
        ("text", Some("html")) => !matches!(
            header.root_part().headers.header_value(&HeaderName::ContentTransferEncoding),
            Some(HeaderValue::Text(encoding))
                if encoding.eq_ignore_ascii_case("base64")
                    || encoding.eq_ignore_ascii_case("quoted-printable")
        ),
        _ => false,
    }
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
        assert_eq!(
            p.attachments,
            [ParsedAttachment {
                filename: Some("quote.pdf".into()),
                content_type: "application/pdf".into(),
                size: 5,
            }]
        );
        // Bodies and contents are read from the raw bytes, the same parts the record lists.
        let (text, html) = bodies(raw);
        assert_eq!(text.as_deref().map(str::trim), Some("Thanks!"));
        assert_eq!(html, None, "plain-text mail has no HTML body");
        assert_eq!(
            attachment(raw, 0),
            Some((p.attachments[0].clone(), b"%PDF-".to_vec()))
        );
        assert_eq!(attachment(raw, 1), None);
    }

    #[test]
    fn the_fields_are_read_among_headers_it_skips() {
        // Headers a record does not keep are skipped unparsed, whatever they hold; a nested
        // message's attachment is listed with the size a download reads.
        let raw = b"Received: from mx.example.net (mx [192.0.2.1]) by mail.example.com\r\n\
\twith ESMTPS id 1; Tue, 24 Nov 2026 10:00:01 +0000\r\nReceived: garbage ( ; [ \r\n\
X-Spam-Status: No, score=-2.6\r\nReply-To: other@example.com\r\nList-Id: <l.example.com>\r\n\
From: =?utf-8?q?J=C3=BCrgen?= <j@example.com>\r\nSubject: =?utf-8?b?R3LDvMOfZQ==?=\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: message/rfc822\r\n\
Content-Disposition: attachment; filename=fwd.eml\r\n\r\nFrom: a@example.com\r\nSubject: inner\r\n\r\n\
inner body\r\n--b--\r\n";
        let p = parse(raw);
        assert_eq!(p.parse_error, None);
        assert_eq!(p.subject.as_deref(), Some("Grüße"));
        assert_eq!(
            p.from.as_ref().and_then(|f| f.name.as_deref()),
            Some("Jürgen")
        );
        assert_eq!(p.message_id.as_deref(), Some("m1@example.com"));
        assert_eq!(
            p.date.map(|d| d.to_rfc3339()),
            Some("2026-11-24T10:00:00+00:00".into())
        );
        assert_eq!(p.attachments.len(), 1, "{:?}", p.attachments);
        assert_eq!(p.attachments[0].filename.as_deref(), Some("fwd.eml"));
        let (listed, content) = attachment(raw, 0).unwrap();
        assert_eq!(listed, p.attachments[0]);
        assert_eq!(content.len(), p.attachments[0].size);
        assert!(content.starts_with(b"From: a@example.com"), "{content:?}");
    }

    #[test]
    fn html_only_mail_keeps_its_html_and_gets_a_text_rendering() {
        let raw = b"From: ann@example.com\r\nSubject: offer\r\nMessage-ID: <h1@example.com>\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n<p>Hello <b>Bob</b></p>\r\n";
        let (text, html) = bodies(raw);
        assert_eq!(
            html.as_deref().map(str::trim),
            Some("<p>Hello <b>Bob</b></p>")
        );
        assert_eq!(text.as_deref().map(str::trim), Some("Hello Bob"));
    }

    #[test]
    fn the_html_of_a_mixed_message_is_found_after_its_plain_text() {
        let raw = b"From: ann@example.com\r\nSubject: both\r\nMessage-ID: <x1@example.com>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain\r\n\r\nplain first\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>then html</p>\r\n--b--\r\n";
        let (text, html) = bodies(raw);
        assert_eq!(text.as_deref().map(str::trim), Some("plain first"));
        assert_eq!(html.as_deref().map(str::trim), Some("<p>then html</p>"));
    }

    #[test]
    fn nul_characters_never_reach_the_text_fields() {
        let raw = b"From: =?utf-8?q?Ann=00Lee?= <ann@example.com>\r\nSubject: =?utf-8?q?a=00b?=\r\n\
Message-ID: <n1@example.com>\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
one=00two\r\n";
        let p = parse(raw);
        assert_eq!(p.subject.as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(
            bodies(raw).0.as_deref().map(str::trim),
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
    fn a_single_part_message_lists_the_attachments_mail_parsers_full_parse_finds() {
        // The header-only shortcut against mail-parser's full parse, on the single-part cases
        // its rules tell apart: a plain part stays the body even when marked or broken, an
        // HTML part whose encoding fails, a part named as an attachment, a typeless part.
        let head = "From: ann@example.com\r\nSubject: s\r\nMessage-ID: <s1@example.com>\r\n";
        let cases = [
            "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n",
            "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!not base64!!\r\n",
            "Content-Type: text/plain\r\nContent-Disposition: attachment; filename=notes.txt\r\n\r\nnotes\r\n",
            "Content-Type: text/plain\r\nContent-Disposition: attachment; filename=n.txt\r\nContent-Transfer-Encoding: base64\r\n\r\n!!\r\n",
            "Content-Type: text/html\r\n\r\n<p>hi</p>\r\n",
            "Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPHA+aGk8L3A+\r\n",
            "Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n!!not base64!!\r\n",
            "Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>=3D</p>\r\n",
            "Content-Type: text/html\r\nContent-Disposition: attachment\r\n\r\n<p>hi</p>\r\n",
            "Content-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\n",
            "Content-Type: TEXT/PLAIN\r\n\r\nshouting\r\n",
            "Content-Type: application/pdf; name=q.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n",
            "Content-Type: multipart/mixed\r\n\r\nno boundary\r\n",
            "Content-Type: ;;;\r\n\r\nunreadable type\r\n",
            "\r\nno type at all\r\n",
        ];
        let mut listed = 0;
        for case in cases {
            let raw = format!("{head}{case}");
            let expected: Vec<usize> = MessageParser::default()
                .parse(raw.as_bytes())
                .unwrap()
                .attachments()
                .map(|a| a.contents().len())
                .collect();
            let ours: Vec<usize> = parse(raw.as_bytes())
                .attachments
                .iter()
                .map(|a| a.size)
                .collect();
            assert_eq!(ours, expected, "{case}");
            listed += ours.len();
        }
        assert!(listed >= 3, "some cases are attachments: {listed}");
    }

    #[test]
    fn garbage_is_flagged_not_dropped() {
        assert!(parse(b"").parse_error.is_some());
        assert!(parse(b"\x00\x01\x02 not a message").parse_error.is_some());
    }
}
