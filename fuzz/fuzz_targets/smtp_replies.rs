//! The real SMTP submission session against a scripted server: multi-line replies, EHLO
//! extensions, STARTTLS, AUTH with its error challenge, MAIL/RCPT/DATA, QUIT.
//! Input: an options byte, then the server's turns separated by 0x1e.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mailbridge_proto::fuzzing::smtp_session(data);
});
