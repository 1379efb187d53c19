//! The real IMAP session (pre-login lines, async-imap after) against a scripted server:
//! log in, EXAMINE, UID SEARCH, UID FETCH, IDLE, LOGOUT. Input: an options byte, then the
//! server's turns separated by 0x1e (see `mailbridge_proto::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mailbridge_proto::fuzzing::imap_session(data);
});
