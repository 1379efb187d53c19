//! A message as it arrives from a mail server, parsed into the fields of a record
//! (`mailbridge_core::parse::parse`, mail-parser underneath). Never panics; a message read
//! with no From, Message-ID or Subject is flagged with `parse_error` (stored raw, never
//! dropped), and so is one mail-parser panics on; no text field holds a NUL, which
//! PostgreSQL's text refuses; and each attachment the record lists is the one a download
//! reads again from the raw bytes, with the size the record says.
#![no_main]

use mailbridge_core::parse::{Party, attachment, bodies, parse};

fn no_nul(what: &str, text: &str) {
    assert!(!text.contains('\0'), "NUL in {what}: {text:?}");
}

fn parties(what: &str, parties: &[Party]) {
    for p in parties {
        no_nul(what, &p.address);
        if let Some(name) = &p.name {
            no_nul(what, name);
        }
    }
}

/// After libFuzzer's hook (which aborts on every panic): a panic inside mail-parser is let
/// through, because `parse` catches it and flags the message; anything that reaches
/// libfuzzer-sys uncaught still aborts, and so does any other panic here.
fn let_mail_parser_panics_through() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.location().is_some_and(|l| l.file().contains("/mail-parser-")) {
            abort(info);
        }
    }));
}

libfuzzer_sys::fuzz_target!(init: let_mail_parser_panics_through(), |data: &[u8]| {
    let p = parse(data);
    if p.parse_error.is_none() {
        assert!(
            p.from.is_some() || p.message_id.is_some() || p.subject.is_some(),
            "read as a message without any of From, Message-ID and Subject"
        );
    }
    let (text_body, html_body) = bodies(data);
    for (what, text) in [
        ("message_id", &p.message_id),
        ("subject", &p.subject),
        ("text_body", &text_body),
        ("html_body", &html_body),
    ] {
        if let Some(text) = text {
            no_nul(what, text);
        }
    }
    for id in p.in_reply_to.iter().chain(&p.references) {
        no_nul("in_reply_to/references", id);
    }
    parties("from", p.from.as_slice());
    parties("to", &p.to);
    parties("cc", &p.cc);
    for (n, a) in p.attachments.iter().enumerate() {
        // A download reads the part again from the raw bytes: the one the record lists.
        let (again, content) =
            attachment(data, n).unwrap_or_else(|| panic!("listed attachment {n} not found again"));
        assert_eq!(&again, a, "attachment {n} read again");
        assert_eq!(content.len(), a.size, "attachment {n}'s contents");
        no_nul("attachment content_type", &a.content_type);
        if let Some(name) = &a.filename {
            no_nul("attachment filename", name);
        }
    }
});
