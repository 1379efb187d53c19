//! `POST /api/v1/emails`: any JSON body read as an `OutgoingDraft` and resolved. Never panics;
//! what it accepts carries no line break or control character into a header.
#![no_main]

use mailbridge_core::OutgoingDraft;

fn one_line(what: &str, text: &str) {
    assert!(!text.chars().any(char::is_control), "control character in {what}: {text:?}");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(draft) = serde_json::from_slice::<OutgoingDraft>(data) else {
        return;
    };
    let Ok((_, message)) = draft.resolve() else {
        return;
    };
    one_line("subject", &message.subject);
    for p in message.to.iter().chain(&message.cc).chain(&message.bcc).chain(&message.reply_to) {
        one_line("address", &p.address);
        if let Some(name) = &p.name {
            one_line("name", name);
        }
    }
    if let Some(id) = &message.in_reply_to {
        one_line("in_reply_to", id.as_str());
        assert!(!id.as_str().contains([' ', '<', '>']), "{id:?}");
    }
    for (name, value) in &message.headers {
        one_line("header name", name);
        one_line("header value", value);
    }
    for a in &message.attachments {
        one_line("filename", &a.filename);
        one_line("content_type", &a.content_type);
    }
    assert!(!message.envelope().is_empty());
    let _ = message.fingerprint();
});
