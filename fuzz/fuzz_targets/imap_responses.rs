//! What an IMAP server sends, as the session consumes it after login: responses decoded one
//! after another (whole, and again arriving in pieces), each FETCH made a message; plus the
//! greeting's capabilities and the words of a NO. See `mailbridge_proto::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailbridge_proto::fuzzing::imap_responses(data));
