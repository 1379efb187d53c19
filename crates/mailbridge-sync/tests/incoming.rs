//! Incoming passes against a real Dovecot, without the engine: a UIDVALIDITY change is
//! read again without duplicates, a pass repeated after a crash stores nothing twice, a
//! connection cut in the middle of a FETCH loses nothing; and against a scripted Gmail, its
//! message and conversation ids, a message it cannot read ("Some messages could not be
//! FETCHed") holding back only itself, and a refused LIST holding back only the Sent folder.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use mailbridge_proto::imap::ImapSession;
use mailbridge_store::{EmailFilter, FolderPosition, MailboxRecord, SyncBatch};
use mailbridge_sync::incoming::SyncReport;
use mailbridge_sync::incoming::imap::{Folder, folders, sync_inbox};
use mailbridge_testkit::{AppOptions, CountingProxy, GMAIL_INBOX, MailWorld, ScriptedGmail};
use serde_json::json;

fn message(i: u32) -> Vec<u8> {
    format!(
        "From: x@example.com\r\nSubject: m{i}\r\nMessage-ID: <m{i}@example.com>\r\n\r\nbody {i}\r\n"
    )
    .into_bytes()
}

/// Ann's mailbox on a Gmail-like profile of the test Dovecot, signed in or not.
async fn ann_on_gmail_like(signed_in: bool) -> (MailWorld, String, MailboxRecord) {
    let w = MailWorld::start(AppOptions::default()).await;
    let profile = w
        .gmail_like("G", w.imaps(), w.submissions(), json!({}))
        .await;
    let id = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    if signed_in {
        w.sign_in(&id, &w.ann).await;
    }
    let mailbox = w.app.store.get_mailbox(id.parse().unwrap()).await.unwrap();
    (w, id, mailbox)
}

/// One pass over INBOX that must succeed.
async fn pass(w: &MailWorld, s: &mut ImapSession, mailbox: &MailboxRecord) -> SyncReport {
    sync_inbox(&w.app.store, s, mailbox, None, None)
        .await
        .unwrap()
}

/// The stored INBOX position.
async fn position(w: &MailWorld, mailbox: &MailboxRecord) -> Option<FolderPosition> {
    w.app
        .store
        .folder_position(mailbox.id, "INBOX")
        .await
        .unwrap()
}

/// Sets the stored INBOX position, as a crash or a server renumbering would leave it.
async fn put_position(w: &MailWorld, mailbox: &MailboxRecord, position: FolderPosition) {
    let batch = SyncBatch {
        position: Some(position),
        ..SyncBatch::default()
    };
    w.app
        .store
        .save_sync_batch(mailbox.id, batch)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_uidvalidity_change_is_read_again_without_duplicates() {
    let (w, id, mailbox) = ann_on_gmail_like(true).await;
    for i in 0..3 {
        w.dovecot.deliver("ann@example.com", &message(i)).unwrap();
    }
    let mut s = w.imap_session(&id).await;
    let report = pass(&w, &mut s, &mailbox).await;
    assert_eq!((report.fetched, report.stored), (3, 3));
    let before = position(&w, &mailbox).await.unwrap();
    assert_eq!(before.last_uid, 3);
    // A second pass finds nothing new.
    assert_eq!(pass(&w, &mut s, &mailbox).await.fetched, 0);
    s.logout().await;

    // Dovecot loses its UID list and indexes (as after a restore): it renumbers INBOX.
    let maildir = w.dovecot.maildir("ann@example.com");
    for entry in std::fs::read_dir(&maildir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("dovecot") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new UIDVALIDITY is a timestamp
    w.dovecot.deliver("ann@example.com", &message(3)).unwrap();
    let mut s = w.imap_session(&id).await;
    let report = pass(&w, &mut s, &mailbox).await;
    let after = position(&w, &mailbox).await.unwrap();
    assert_ne!(
        after.uid_validity, before.uid_validity,
        "the test must really change UIDVALIDITY"
    );
    assert_eq!(
        (report.fetched, report.stored),
        (4, 1),
        "all read again, only the new one stored"
    );
    assert_eq!(w.app.store.count_emails(mailbox.id).await.unwrap(), 4);
    s.logout().await;
}

#[tokio::test]
async fn a_pass_repeated_after_a_crash_stores_nothing_twice() {
    let (w, id, mailbox) = ann_on_gmail_like(true).await;
    for i in 0..5 {
        w.dovecot.deliver("ann@example.com", &message(i)).unwrap();
    }
    let mut s = w.imap_session(&id).await;
    pass(&w, &mut s, &mailbox).await;
    // As if the process died after storing the emails but before the position moved on:
    // put the position back and run the pass again.
    let mut position = position(&w, &mailbox).await.unwrap();
    position.last_uid = 1;
    put_position(&w, &mailbox, position).await;
    let report = pass(&w, &mut s, &mailbox).await;
    assert_eq!((report.fetched, report.stored), (4, 0));
    assert_eq!(w.app.store.count_emails(mailbox.id).await.unwrap(), 5);
    s.logout().await;
}

#[tokio::test]
async fn a_connection_cut_in_the_middle_of_a_fetch_loses_nothing_and_duplicates_nothing() {
    let (w, id, mailbox) = ann_on_gmail_like(true).await;
    // 300 messages of about 4 KB: batches of 64 and 128 (the first batch, then twice it), then
    // the 108 left.
    let body = "All work and no play makes a dull inbox.\r\n".repeat(95);
    for i in 0..300 {
        let mut raw = message(i);
        raw.extend_from_slice(body.as_bytes());
        w.dovecot.deliver("ann@example.com", &raw).unwrap();
    }
    // The server's bytes for the second batch end near 0.81 MB, the third's near 1.26 MB:
    // cut the connection in the middle of the third FETCH.
    let proxy = CountingProxy::cutting_after(w.dovecot.ports.imaps, 1_150_000)
        .await
        .unwrap();
    let mut cut = w.imap_session_via(&id, proxy.port).await;
    let err = sync_inbox(&w.app.store, &mut cut, &mailbox, None, None)
        .await
        .expect_err("the pass must notice the cut");
    assert!(err.is_transient(), "a cut connection is retried: {err}");
    // The first two batches are stored whole, and the position says so: nothing half-done.
    assert_eq!(w.app.store.count_emails(mailbox.id).await.unwrap(), 192);
    let position = position(&w, &mailbox).await.unwrap();
    assert_eq!(position.last_uid, 192);

    // The next pass, on a sound connection, reads the rest and nothing twice.
    let mut s = w.imap_session(&id).await;
    let report = pass(&w, &mut s, &mailbox).await;
    assert_eq!((report.fetched, report.stored), (108, 108));
    let page = w
        .app
        .store
        .list_emails(
            &EmailFilter {
                mailbox: Some(mailbox.id),
                ..EmailFilter::default()
            },
            None,
            1000,
        )
        .await
        .unwrap();
    let ids: std::collections::HashSet<_> =
        page.iter().filter_map(|e| e.message_id.clone()).collect();
    assert_eq!((page.len(), ids.len()), (300, 300));
    s.logout().await;
}

#[tokio::test]
async fn a_message_gmail_cannot_read_holds_back_only_itself() {
    let (w, _, mailbox) = ann_on_gmail_like(false).await;
    let gmail = ScriptedGmail::start("ann@gmail.com", "ya29.good", true)
        .await
        .unwrap();
    let (stuck, other) = (GMAIL_INBOX[0].uid, GMAIL_INBOX[1].uid);
    gmail.make_unreadable(Some(stuck));
    let mut s = gmail.login("ya29.good").await.unwrap();
    for _ in 0..2 {
        let err = sync_inbox(&w.app.store, &mut s, &mailbox, None, None)
            .await
            .expect_err("Gmail refused a message");
        assert!(
            err.is_transient(),
            "a NO to FETCH is retried, not a reason to stop the mailbox: {err}"
        );
        assert!(err.to_string().contains("could not be FETCHed"), "{err}");
        // The other message is stored (once, however often this runs); the position stops
        // just before the one Gmail would not give.
        assert_eq!(w.app.store.count_emails(mailbox.id).await.unwrap(), 1);
        assert_eq!(position(&w, &mailbox).await.unwrap().last_uid, stuck - 1);
    }
    // Gmail can read it again: the next pass stores it, and nothing twice.
    gmail.make_unreadable(None);
    let report = pass(&w, &mut s, &mailbox).await;
    assert_eq!((report.fetched, report.stored), (2, 1));
    assert_eq!(w.app.store.count_emails(mailbox.id).await.unwrap(), 2);
    assert_eq!(position(&w, &mailbox).await.unwrap().last_uid, other);
    s.logout().await;
}

#[tokio::test]
async fn a_refused_list_leaves_inbox_and_the_named_folders_to_read_and_sent_to_the_next_pass() {
    let gmail = ScriptedGmail::start("ann@gmail.com", "ya29.good", true)
        .await
        .unwrap();
    let mut s = gmail.login("ya29.good").await.unwrap();
    let named = ["Work".to_owned()];
    let folder = |name: &str, sent: bool| Folder {
        name: name.to_owned(),
        sent,
    };
    gmail.refuse_list(true);
    assert_eq!(
        folders(&mut s, &named).await.unwrap(),
        [folder("Work", false), Folder::inbox()],
        "a refused LIST is no reason to leave INBOX unread"
    );
    // The same session, LIST answered again: Sent is back.
    gmail.refuse_list(false);
    assert_eq!(
        folders(&mut s, &named).await.unwrap(),
        [
            folder("[Gmail]/Sent Mail", true),
            folder("Work", false),
            Folder::inbox()
        ]
    );
    s.logout().await;
}

#[tokio::test]
async fn gmail_mail_is_keyed_by_its_message_id_and_threaded_by_gmails_conversation() {
    let (w, _, mailbox) = ann_on_gmail_like(false).await;
    let gmail = ScriptedGmail::start("ann@gmail.com", "ya29.good", true)
        .await
        .unwrap();
    let mut s = gmail.login("ya29.good").await.unwrap();
    let report = pass(&w, &mut s, &mailbox).await;
    assert_eq!((report.fetched, report.stored), (2, 2));
    let filter = EmailFilter {
        mailbox: Some(mailbox.id),
        ..EmailFilter::default()
    };
    let emails = w.app.store.list_emails(&filter, None, 10).await.unwrap();
    assert_eq!(emails.len(), 2);
    let thread = GMAIL_INBOX[0].thread_id.to_string();
    for e in &emails {
        assert_eq!(e.gmail_thread_id.as_deref(), Some(thread.as_str()));
    }
    assert_eq!(
        emails[0].conversation_id, emails[1].conversation_id,
        "no reply header ties them; Gmail's conversation does"
    );
    assert_eq!(emails[1].gmail_labels, ["\\Inbox", "Work/Lunch"]);
    // Gmail renumbers (a new UIDVALIDITY) but X-GM-MSGID is the identity: nothing twice.
    put_position(
        &w,
        &mailbox,
        FolderPosition {
            folder: "INBOX".into(),
            uid_validity: 1,
            last_uid: 0,
            highest_modseq: None,
            messages: None,
        },
    )
    .await;
    let report = pass(&w, &mut s, &mailbox).await;
    assert_eq!((report.fetched, report.stored), (2, 0));
    s.logout().await;
}
