//! Logs at their most detailed hold no OAuth token and no mail: a Gmail-like mailbox signs in,
//! passes Test & Enable (an IMAP login and a submission with XOAUTH2) and syncs a message while
//! every log record, `log` crate records included (async-imap's), is written at trace level.
//! Its own test binary: the log is the process's, set up once.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use mailbridge_testkit::{AppOptions, MailWorld};
use secrecy::ExposeSecret;
use serde_json::json;

/// Everything logged, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `text` holds `secret` as it is, or inside a base64 word (how SASL carries it).
fn holds(text: &str, secret: &str) -> bool {
    text.contains(secret)
        || text
            .split(|c: char| !(c.is_ascii_alphanumeric() || "+/=".contains(c)))
            .filter(|word| word.len() >= 16)
            .filter_map(|word| base64::engine::general_purpose::STANDARD.decode(word).ok())
            .any(|decoded| String::from_utf8_lossy(&decoded).contains(secret))
}

#[tokio::test]
async fn at_trace_level_no_token_and_no_mail_reach_the_log() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .unwrap();
    let w = MailWorld::start(AppOptions {
        engine: Some(MailWorld::fast_engine()),
        ..AppOptions::default()
    })
    .await;
    w.dovecot
        .deliver(
            "ann@example.com",
            b"From: bob@example.com\r\nTo: ann@example.com\r\nSubject: Salary review for Ann\r\n\r\nConfidential figures\r\n",
        )
        .unwrap();
    let (_, mailbox) = w.ann_enabled(json!({})).await;
    w.poll(
        &format!("/api/v1/emails?mailbox_id={mailbox}"),
        &w.ann,
        15,
        "the message synced",
        |answer| answer["emails"].as_array().is_some_and(|d| d.len() == 1),
    )
    .await;
    let tokens = w.stored_tokens(&mailbox).await;
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("async_imap"),
        "async-imap's records are not in the log: the test sees nothing"
    );
    // The search finds a token inside a SASL response, as the log of a command had it.
    let sasl = base64::engine::general_purpose::STANDARD
        .encode("user=ann@example.com\x01auth=Bearer ya29.secret\x01\x01");
    assert!(holds(
        &format!("encode: Ok(\"AUTHENTICATE XOAUTH2 {sasl}\")"),
        "ya29.secret"
    ));
    for secret in [&tokens.access_token, &tokens.refresh_token] {
        assert!(
            !holds(&text, secret.expose_secret()),
            "an OAuth token reached the log"
        );
    }
    assert!(!text.contains("Salary review"), "mail reached the log");
    assert!(
        !text.contains("Confidential figures"),
        "mail reached the log"
    );
}
