//! The IMAP client against Gmail's behaviours that Dovecot lacks, from a scripted server:
//! Gmail's capabilities (X-GM-EXT-1, LITERAL-), its XOAUTH2 error challenge, its refusal
//! when IMAP is off, its request for `ID`, and its NO to a FETCH of a message it cannot read.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use std::sync::atomic::Ordering;

use mailbridge_proto::ErrorKind;
use mailbridge_testkit::{GMAIL_INBOX, ScriptedGmail};

#[tokio::test]
async fn gmail_logs_in_sends_id_and_shows_its_extensions() {
    let gmail = ScriptedGmail::start("ann@gmail.com", "ya29.good", true)
        .await
        .unwrap();
    let mut s = gmail.login("ya29.good").await.unwrap();
    assert!(
        gmail.id_received.load(Ordering::SeqCst),
        "Gmail asks clients to send ID"
    );
    assert!(
        s.has("X-GM-EXT-1") && s.has("LITERAL-") && !s.has("LITERAL+"),
        "{:?}",
        s.capabilities()
    );
    let inbox = s.examine("INBOX").await.unwrap();
    assert_eq!(
        (
            inbox.exists,
            inbox.uid_validity,
            inbox.uid_next,
            inbox.highest_modseq
        ),
        (2, Some(3), Some(7), Some(4242))
    );
    s.logout().await;
}

#[tokio::test]
async fn gmails_message_and_thread_ids_and_labels_are_fetched_with_the_bytes() {
    let gmail = ScriptedGmail::start("ann@gmail.com", "ya29.good", true)
        .await
        .unwrap();
    let mut s = gmail.login("ya29.good").await.unwrap();
    s.examine("INBOX").await.unwrap();
    let uids = s.uids_from(1, None).await.unwrap();
    assert_eq!(uids, [5, 6]);
    let fetched = s.uid_fetch(&uids).await.unwrap();
    assert_eq!(fetched.len(), 2);
    for (m, want) in fetched.iter().zip(&GMAIL_INBOX) {
        assert_eq!(m.uid, want.uid);
        assert_eq!(m.raw, want.raw.as_bytes());
        assert_eq!(m.gmail_msg_id, Some(want.msg_id));
        assert_eq!(m.gmail_thread_id, Some(want.thread_id));
    }
    assert_eq!(fetched[0].gmail_labels, ["\\Inbox", "\\Important"]);
    assert_eq!(fetched[1].gmail_labels, ["\\Inbox", "Work/Lunch"]);
    // Only the UIDs asked for.
    assert_eq!(s.uid_fetch(&[6]).await.unwrap().len(), 1);
    s.logout().await;
}

#[tokio::test]
async fn gmails_error_challenge_is_answered_and_decoded() {
    let gmail = ScriptedGmail::start("ann@gmail.com", "ya29.good", true)
        .await
        .unwrap();
    let e = gmail.login("ya29.expired").await.unwrap_err();
    match &e.kind {
        ErrorKind::AuthRefused { words, detail } => {
            assert!(words.contains("Invalid credentials"), "{e}");
            assert_eq!(
                detail.as_deref(),
                Some("status 400, schemes Bearer, scope https://mail.google.com/")
            );
        }
        other => panic!("expected a refused login, got {other:?}"),
    }
}

#[tokio::test]
async fn imap_turned_off_in_gmail_is_reported_in_gmails_words() {
    let gmail = ScriptedGmail::start("ann@gmail.com", "ya29.good", false)
        .await
        .unwrap();
    let e = gmail.login("ya29.good").await.unwrap_err();
    assert!(e.is_auth_refused(), "{e}");
    assert!(
        e.to_string()
            .contains("Your account is not enabled for IMAP use"),
        "{e}"
    );
}

#[tokio::test]
async fn a_refused_fetch_keeps_what_arrived_before_the_no() {
    let gmail = ScriptedGmail::start("ann@gmail.com", "ya29.good", true)
        .await
        .unwrap();
    gmail.make_unreadable(Some(GMAIL_INBOX[0].uid));
    let mut s = gmail.login("ya29.good").await.unwrap();
    s.examine("INBOX").await.unwrap();
    let uids = [GMAIL_INBOX[0].uid, GMAIL_INBOX[1].uid];
    let (fetched, refusal) = s.uid_fetch_some(&uids).await.unwrap();
    assert_eq!(
        fetched.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [GMAIL_INBOX[1].uid]
    );
    let refusal = refusal.expect("Gmail said NO");
    assert!(refusal.is_transient() && refusal.is_rejected(), "{refusal}");
    assert!(
        refusal.to_string().contains("could not be FETCHed"),
        "{refusal}"
    );
    // The all-or-nothing call reports the refusal as an error.
    assert!(s.uid_fetch(&uids).await.is_err());
    s.logout().await;
}
