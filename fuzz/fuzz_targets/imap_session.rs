//! The real IMAP session (pre-login lines, async-imap after) against a scripted server:
//! log in, EXAMINE, UID SEARCH, UID FETCH, IDLE, LOGOUT. Input: an options byte, then the
//! server's turns separated by 0x1e (see `mailbridge_proto::fuzzing`).
#![no_main]

use mailbridge_proto::fuzzing;

libfuzzer_sys::fuzz_target!(
    init: fuzzing::let_imap_library_panics_through(),
    |data: &[u8]| {
        let _ = fuzzing::imap_session(data);
    }
);
