//! What an IMAP server sends, as the session consumes it after login: responses decoded one
//! after another (whole, and again arriving in pieces), each FETCH made a message; plus the
//! greeting's capabilities and the words of a NO. See `mailbridge_proto::fuzzing`.
#![no_main]

use mailbridge_proto::fuzzing;

libfuzzer_sys::fuzz_target!(
    init: fuzzing::let_imap_library_panics_through(),
    |data: &[u8]| fuzzing::imap_responses(data)
);
