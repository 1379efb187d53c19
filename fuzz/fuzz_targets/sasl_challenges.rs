//! A SASL error challenge (base64 JSON from Gmail, Dovecot, Microsoft) turned into words for
//! the login error, as POP3/SMTP (base64 text) and IMAP (decoded bytes) hand it over.
#![no_main]

use mailbridge_proto::sasl::{describe_challenge, describe_challenge_bytes};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Any non-empty challenge is worth showing the user, JSON or not.
    assert_eq!(describe_challenge_bytes(data).is_some(), !data.is_empty());
    let _ = describe_challenge(&String::from_utf8_lossy(data));
});
