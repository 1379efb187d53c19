//! The `[MB-XXXXXXXX]` token in a subject. Input: 5 bytes for a token, then a subject.
//! Properties: a token found is 8 characters of the alphabet; a subject without a token of its
//! own, once given one with `with_token`, gives exactly that token back.
#![no_main]

use mailbridge_core::tracking::{find_token, new_token, with_token};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((random, subject)) = data.split_first_chunk::<5>() else {
        return;
    };
    let subject = String::from_utf8_lossy(subject);
    let found = find_token(&subject);
    if let Some(token) = &found {
        assert_eq!(token.len(), 8, "{subject:?}");
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() && !b"ILOU".contains(&b)));
    }
    let token = new_token(*random);
    assert_eq!(find_token(&token), None, "a bare token is not a tagged subject");
    if found.is_none() {
        let tagged = with_token(&subject, &token);
        assert_eq!(find_token(&tagged), Some(token), "{tagged:?}");
    }
});
