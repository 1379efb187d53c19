//! The real POP3 session against a scripted server: greeting, CAPA, STLS, AUTH with its error
//! exchange or USER/PASS, STAT, UIDL, TOP, RETR (dot-unstuffing, the size limit), QUIT.
//! Input: an options byte, then the server's turns separated by 0x1e.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mailbridge_proto::fuzzing::pop3_session(data);
});
