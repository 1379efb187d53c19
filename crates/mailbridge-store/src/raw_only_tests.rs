//! An email's bodies and attachments are read from its raw message (migration 0022), which is
//! stored compressed (0023): on both backends, for mail stored now and for mail a database made
//! before 0022 holds.
#![allow(clippy::unwrap_used)]

use mailbridge_core::{EmailAddress, MailboxDraft, ProfileDraft, Role};
use mailbridge_testdb::TestDatabase;

use crate::emails::SyncBatch;
use crate::tests::{before_migration, inbox_email, old_mailbox, unmigrated};
use crate::{Actor, MailboxRecord, Store};

/// A quoted-printable body and three base64 attachments, two of one type: what is decoded
/// (`café`, `first-attachment-bytes`…) is nowhere in the raw bytes.
const MESSAGE: &[u8] = b"From: Bob <bob@example.com>\r\nTo: ann@example.com\r\nSubject: three files\r\n\
Message-ID: <files-1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n\
--a\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
caf=C3=A9 body-in-plain-text\r\n\
--a\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
<p>caf=C3=A9 body-in-html</p>\r\n--a--\r\n\
--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=one.csv\r\n\
Content-Transfer-Encoding: base64\r\n\r\nZmlyc3QtYXR0YWNobWVudC1ieXRlcw==\r\n\
--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=two.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\r\nc2Vjb25kLWF0dGFjaG1lbnQ=\r\n\
--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=three.csv\r\n\
Content-Transfer-Encoding: base64\r\n\r\ndGhpcmQtYXR0YWNobWVudC1sb25nZXItYnl0ZXM=\r\n--b--\r\n";

const DECODED: [(&str, &str, &[u8]); 3] = [
    ("one.csv", "text/csv", b"first-attachment-bytes"),
    ("two.pdf", "application/pdf", b"second-attachment"),
    ("three.csv", "text/csv", b"third-attachment-longer-bytes"),
];

async fn mailbox(store: &Store) -> MailboxRecord {
    let cli = Actor::cli();
    let ann = EmailAddress::parse("ann@example.com", "email").unwrap();
    let (user, _) = store.create_user(&cli, &ann, Role::User).await.unwrap();
    let draft: ProfileDraft = serde_json::from_value(serde_json::json!({
        "name": "files", "auth": "password",
        "incoming": {"protocol": "imap", "host": "127.0.0.1", "port": 993, "security": "tls"},
        "outgoing": {"host": "127.0.0.1", "port": 465, "security": "tls"},
    }))
    .unwrap();
    let (spec, secret) = draft.resolve(None).unwrap();
    let profile = store.create_profile(&cli, &spec, secret).await.unwrap();
    let draft: MailboxDraft = serde_json::from_value(serde_json::json!({
        "email": "ann@example.com", "profile_id": profile.id, "password": "pw",
    }))
    .unwrap();
    let spec = draft.resolve(None, user.id).unwrap();
    store
        .create_mailbox(&cli, &spec, draft.password_change().unwrap())
        .await
        .unwrap()
}

/// What a reader gets back: the bodies, and each attachment with its download.
async fn check_reads_back(store: &Store, id: &str) {
    let email = store.get_email(id).await.unwrap();
    assert_eq!(
        email.text_body.as_deref().map(str::trim),
        Some("café body-in-plain-text")
    );
    assert_eq!(
        email.html_body.as_deref().map(str::trim),
        Some("<p>café body-in-html</p>")
    );
    assert_eq!(email.attachments.len(), 3);
    for (info, (filename, content_type, content)) in email.attachments.iter().zip(DECODED) {
        assert_eq!(info.filename.as_deref(), Some(filename));
        let (got, bytes) = store.attachment_content(id, &info.id).await.unwrap();
        assert_eq!(got.content_type, content_type);
        assert_eq!(bytes, content, "{filename}");
    }
    let listed = store.recent_emails(email.mailbox_id, 10).await.unwrap();
    assert_eq!(listed[0].text_body, email.text_body);
}

#[tokio::test]
async fn bodies_and_attachments_are_read_from_the_compressed_raw_message_and_not_stored_again() {
    for db in [TestDatabase::Sqlite, TestDatabase::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let store = unmigrated(db, dir.path()).await;
        store.migrate().await.unwrap();
        let mailbox = mailbox(&store).await;
        let batch = SyncBatch {
            emails: vec![inbox_email(MESSAGE)],
            ..SyncBatch::default()
        };
        assert_eq!(store.save_sync_batch(mailbox.id, batch).await.unwrap(), 1);
        let id = store.recent_emails(mailbox.id, 1).await.unwrap()[0]
            .id
            .clone();
        check_reads_back(&store, &id).await;
        assert_eq!(store.email_raw(&id).await.unwrap(), MESSAGE);
        // A record that no longer matches its part is reported damaged, never served wrong.
        let info = store.get_email(&id).await.unwrap().attachments[1].clone();
        sqlx::query("UPDATE attachments SET size = 1 WHERE id = $1")
            .bind(&info.id)
            .execute(&store.pool)
            .await
            .unwrap();
        let damaged = store.attachment_content(&id, &info.id).await.unwrap_err();
        assert!(
            damaged
                .to_string()
                .contains("no longer found in the raw message"),
            "{damaged}"
        );
        store.close().await;
        let kept = String::from_utf8_lossy(&db.contents(dir.path()).await.unwrap()).into_owned();
        assert!(
            !kept.contains("caf=C3=A9 body-in-plain-text"),
            "{db:?}: the raw message is not compressed"
        );
        for decoded in [
            "café body-in",
            "first-attachment-bytes",
            "second-attachment",
        ] {
            assert!(
                !kept.contains(decoded),
                "{db:?} stores {decoded:?} beside the raw message"
            );
        }
    }
}

/// A database made before migration 0022 (bodies and attachment contents in their own
/// columns) reads the same after it.
#[tokio::test]
async fn mail_stored_before_the_raw_only_migration_reads_the_same_after_it() {
    for db in [TestDatabase::Sqlite, TestDatabase::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let store = before_migration(db, dir.path(), "0022").await;
        let mailbox = old_mailbox(&store).await;
        let email = "0190f0a0-0000-7000-8000-000000000001";
        sqlx::query(
            "INSERT INTO emails (id, mailbox_id, direction, remote_key, content_sha256, folder, uid, \
             subject, text_body, html_body, raw, size, conversation_id, created_at) \
             VALUES ($1, $2, 'incoming', 'imap/INBOX/1/1', $3, 'INBOX', 1, 'three files', \
             'café body-in-plain-text', '<p>café body-in-html</p>', $4, $5, 'c1', 0)",
        )
        .bind(email)
        .bind(mailbox)
        .bind(crate::sha256_hex(MESSAGE))
        .bind(MESSAGE.to_vec())
        .bind(i64::try_from(MESSAGE.len()).unwrap())
        .execute(&store.pool)
        .await
        .unwrap();
        // Ids as the old code made them: v7, growing in the message's order.
        for (n, (filename, content_type, content)) in DECODED.iter().enumerate() {
            sqlx::query(
                "INSERT INTO attachments (id, email_id, filename, content_type, size, content) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(format!("0190f0a0-0000-7000-8000-00000000010{n}"))
            .bind(email)
            .bind(*filename)
            .bind(*content_type)
            .bind(i64::try_from(content.len()).unwrap())
            .bind(content.to_vec())
            .execute(&store.pool)
            .await
            .unwrap();
        }
        store.migrate().await.unwrap();
        check_reads_back(&store, email).await;
        assert_eq!(store.email_raw(email).await.unwrap(), MESSAGE);
        store.close().await;
    }
}
