//! The whole mailbox against a real Dovecot, run by the engine and seen through the API: mail
//! the user sent from their own client (the Sent folder, found by SPECIAL-USE) is stored
//! `outgoing` and joins its conversation; what Mailbridge sends is filed in Sent once and that
//! copy joins its record; flags changed and messages expunged by another client (Python's
//! imaplib) follow, with `email.updated` / `email.deleted` events, on servers with and without
//! CONDSTORE; `PATCH /emails/{id}` sets flags on the server; a folder that fails is reported
//! and skipped while the others go on.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use mailbridge_testkit::{AppOptions, Dovecot, MailWorld};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn world() -> MailWorld {
    MailWorld::start(AppOptions {
        engine: Some(MailWorld::fast_engine()),
        ..AppOptions::default()
    })
    .await
}

/// `GET path` as Ann: the array under `key` of a 200 answer.
async fn list(w: &MailWorld, path: &str, key: &str) -> Vec<Value> {
    let (status, page) = w.api.get(&w.app, path, &w.ann).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page[key].as_array().unwrap().clone()
}

/// The mailbox's emails, oldest first.
async fn emails(w: &MailWorld, mailbox: &str) -> Vec<Value> {
    list(w, &format!("/api/v1/emails?mailbox_id={mailbox}"), "emails").await
}

/// Polls the mailbox's emails until `done` holds for them.
async fn emails_until(
    w: &MailWorld,
    mailbox: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    w.poll(
        &format!("/api/v1/emails?mailbox_id={mailbox}"),
        &w.ann,
        20,
        what,
        |page| done(page["emails"].as_array().unwrap()),
    )
    .await["emails"]
        .as_array()
        .unwrap()
        .clone()
}

/// Polls `GET /emails/{id}` until `done` holds for it.
async fn email_until(w: &MailWorld, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    w.poll(&format!("/api/v1/emails/{id}"), &w.ann, 20, what, done)
        .await
}

/// Polls the mailbox until its folder `name` satisfies `done`; returns the mailbox.
async fn folder_until(
    w: &MailWorld,
    mailbox: &str,
    name: &str,
    what: &str,
    done: fn(&Value) -> bool,
) -> Value {
    w.poll(
        &format!("/api/v1/mailboxes/{mailbox}"),
        &w.ann,
        20,
        what,
        |m| {
            m["folders"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["folder"] == name && done(f))
        },
    )
    .await
}

/// Ann's own mail program (Python's imaplib, not Mailbridge) runs `commands` in INBOX.
fn in_anns_client(dovecot: &Dovecot, commands: &[&str]) {
    dovecot
        .other_client("ann@example.com", "hunter2", "INBOX", commands)
        .unwrap();
}

/// Ann's own mail program files `message` in Sent (APPEND), as after sending it.
fn filed_in_sent_by_anns_client(dovecot: &Dovecot, message: &str) {
    dovecot
        .other_client(
            "ann@example.com",
            "hunter2",
            "Sent",
            &[&format!("APPEND {message}")],
        )
        .unwrap();
}

/// The events of `types` for the mailbox, oldest first.
async fn events(w: &MailWorld, mailbox: &str, types: &str) -> Vec<Value> {
    let path = format!("/api/v1/events?after=0&types={types}&mailbox_id={mailbox}&limit=500");
    list(w, &path, "events").await
}

fn by_subject<'a>(emails: &'a [Value], subject: &str) -> &'a Value {
    emails
        .iter()
        .find(|e| e["subject"] == subject)
        .unwrap_or_else(|| panic!("no email '{subject}' in {emails:#?}"))
}

/// Files in a folder of the Maildir (new and cur), as Dovecot keeps them.
fn maildir_files(dovecot: &Dovecot, user: &str, folder: &str) -> Vec<String> {
    let dir = dovecot.maildir(user).join(format!(".{folder}"));
    ["new", "cur"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(dir.join(sub)).into_iter().flatten())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn mail_the_user_sent_from_their_own_client_is_outgoing_and_joins_its_conversation() {
    // Sent is looked at only each minute unless the server announces its changes.
    let w = MailWorld::start(AppOptions {
        engine: Some(mailbridge_sync::EngineConfig {
            folder_check: std::time::Duration::from_secs(60),
            ..MailWorld::fast_engine()
        }),
        ..AppOptions::default()
    })
    .await;
    // Ann signs in with a password too, for her other mail program.
    w.dovecot
        .add_password_user("ann@example.com", "hunter2")
        .unwrap();
    w.dovecot.deliver("ann@example.com", b"From: Bob <bob@example.com>\r\nTo: ann@example.com\r\nSubject: Quote?\r\nMessage-ID: <q1@example.com>\r\n\r\nHow much?\r\n").unwrap();
    w.dovecot.deliver_to("ann@example.com", "Sent", b"From: Ann <ann@example.com>\r\nTo: bob@example.com\r\nSubject: Re: Quote?\r\nMessage-ID: <a1@example.com>\r\nIn-Reply-To: <q1@example.com>\r\n\r\n100 EUR.\r\n").unwrap();
    let (_, mailbox) = w.ann_enabled(json!({})).await;
    let all = emails_until(&w, &mailbox, "INBOX and Sent", |e| e.len() >= 2).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    let (question, answer) = (by_subject(&all, "Quote?"), by_subject(&all, "Re: Quote?"));
    assert_eq!(question["direction"], "incoming");
    assert_eq!(question["folder"], "INBOX");
    assert_eq!(answer["direction"], "outgoing", "{answer:#}");
    assert_eq!(answer["folder"], "Sent");
    assert_eq!(answer["status"], Value::Null, "not sent by Mailbridge");
    assert_eq!(answer["conversation_id"], question["conversation_id"]);

    // Later mail the user's own client files in Sent while INBOX idles: Dovecot announces
    // it (NOTIFY), so it is stored at once, not at the next full check (a minute here).
    let file_in_sent = |id: &str, body: &str| {
        let message = format!(
            "From: Ann <ann@example.com>\r\nTo: bob@example.com\r\nSubject: Re: Quote?\r\nMessage-ID: <{id}@example.com>\r\nIn-Reply-To: <q1@example.com>\r\n\r\n{body}\r\n"
        );
        filed_in_sent_by_anns_client(&w.dovecot, &message);
    };
    let written = std::time::Instant::now();
    file_in_sent("a2", "Or 90 EUR.");
    let all = emails_until(&w, &mailbox, "the second answer", |e| e.len() >= 3).await;
    eprintln!("mail filed in Sent stored after {:?}", written.elapsed());
    assert!(
        written.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        written.elapsed()
    );
    assert_eq!(all[2]["direction"], "outgoing");
    assert_eq!(all[2]["conversation_id"], question["conversation_id"]);
    // And again after a quiet spell of idling.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    file_in_sent("a3", "Final: 85 EUR.");
    let all = emails_until(&w, &mailbox, "the third answer", |e| e.len() >= 4).await;
    assert_eq!(all[3]["folder"], "Sent");
    let (_, m) = w
        .api
        .get(&w.app, &format!("/api/v1/mailboxes/{mailbox}"), &w.ann)
        .await;
    let names: Vec<&str> = m["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["folder"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["INBOX", "Sent"], "{m:#}");
    w.assert_healthy(&mailbox).await;
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn mail_filed_in_sent_on_a_server_without_notify_is_found_by_the_folder_check() {
    // Each second an idling session asks for Sent's counters (STATUS); the full pass is a
    // minute away.
    let w = world().await;
    let plain = Dovecot::start_without(&w.oauth, &[("ann@example.com", "hunter2")], &[]).unwrap();
    let profile = w
        .password_profile_at(
            "No NOTIFY",
            json!({"protocol": "imap", "host": "127.0.0.1", "port": plain.ports.imap, "security": "none"}),
            json!({"host": "127.0.0.1", "port": plain.ports.submission, "security": "none"}),
            json!({}),
        )
        .await;
    let mailbox = w.ann_password_mailbox_on(&profile).await;
    assert_eq!(w.test(&mailbox, &w.ann).await["enabled"], true);
    // Several checks find nothing changed; then Ann's mail program files a message.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let message = "From: Ann <ann@example.com>\r\nTo: bob@example.com\r\nSubject: Filed\r\nMessage-ID: <f1@example.com>\r\n\r\nSent from my phone.\r\n";
    filed_in_sent_by_anns_client(&plain, message);
    let all = emails_until(&w, &mailbox, "the filed message", |e| !e.is_empty()).await;
    assert_eq!(all[0]["folder"], "Sent", "{all:#?}");
    assert_eq!(all[0]["direction"], "outgoing");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn what_mailbridge_sends_is_filed_in_sent_once_and_that_copy_joins_its_record() {
    let w = world().await;
    // The Gmail preset files nothing (Gmail does it itself); this profile asks for it.
    let profile = w
        .gmail_like(
            "Files sent mail",
            w.imaps(),
            w.submissions(),
            json!({"append_sent": true}),
        )
        .await;
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    w.sign_in(&mailbox, &w.ann).await;
    let tested = w.test(&mailbox, &w.ann).await;
    assert_eq!(tested["enabled"], true, "{tested:#}");
    let send = |subject: &'static str| {
        let body = json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com"}],
                          "subject": subject, "text_body": "Hello.", "tracking_token": false});
        w.api.post(&w.app, "/api/v1/emails", &w.ann, body)
    };
    let (status, queued) = send("Filed").await;
    assert_eq!(status, StatusCode::CREATED, "{queued}");
    let id = queued["id"].as_str().unwrap().to_owned();
    let filed = email_until(&w, &id, "the sent email found in Sent", |e| {
        e["folder"] == "Sent"
    })
    .await;
    assert_eq!(filed["status"], "sent");
    assert_eq!(filed["flags"]["seen"], true, "filed as read: {filed:#}");
    assert_eq!(
        maildir_files(&w.dovecot, "ann@example.com", "Sent").len(),
        1
    );
    // One record: the copy in Sent did not make a second.
    let all = emails(&w, &mailbox).await;
    assert_eq!(all.len(), 1, "{all:#?}");
    let received = events(&w, &mailbox, "email.received").await;
    assert!(received.is_empty(), "{received:#?}");

    // A profile that files nothing: the next email is sent, and Sent keeps one message.
    let (status, p) = w
        .api
        .patch(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}"),
            &w.admin,
            json!({"append_sent": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["append_sent"], false);
    let (_, queued) = send("Not filed").await;
    let id = queued["id"].as_str().unwrap().to_owned();
    email_until(&w, &id, "the second email sent", |e| e["status"] == "sent").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        maildir_files(&w.dovecot, "ann@example.com", "Sent").len(),
        1
    );
    assert_eq!(emails(&w, &mailbox).await.len(), 2);
    w.app.stop().await.unwrap();
}

/// Flags set and messages expunged by another client on `dovecot` follow into the records,
/// with events; the records stay.
async fn changes_by_another_client_follow(w: &MailWorld, dovecot: &Dovecot, mailbox: &str) {
    let all = emails_until(w, mailbox, "two emails", |e| e.len() >= 2).await;
    let (keep, gone) = (by_subject(&all, "keep"), by_subject(&all, "gone"));
    assert_eq!(
        keep["flags"],
        json!({"seen": false, "flagged": false, "answered": false, "draft": false})
    );
    assert_eq!(gone["flags"]["seen"], true, "delivered read: {gone:#}");
    in_anns_client(dovecot, &["UID STORE 1 +FLAGS (\\Seen \\Flagged)"]);
    let keep_id = keep["id"].as_str().unwrap();
    let updated = email_until(w, keep_id, "the flags set by another client", |e| {
        e["flags"]["flagged"] == true
    })
    .await;
    assert_eq!(updated["flags"]["seen"], true);
    let events_now = events(w, mailbox, "email.updated").await;
    assert_eq!(events_now.len(), 1, "{events_now:#?}");
    assert_eq!(events_now[0]["data"]["email"]["id"], keep["id"]);

    in_anns_client(dovecot, &["UID STORE 2 +FLAGS (\\Deleted)", "EXPUNGE"]);
    let gone_id = gone["id"].as_str().unwrap();
    let deleted = email_until(w, gone_id, "the expunge by another client", |e| {
        e["deleted_on_server_at"].is_string()
    })
    .await;
    assert_eq!(deleted["subject"], "gone", "the record stays");
    let deletions = events(w, mailbox, "email.deleted").await;
    assert_eq!(deletions.len(), 1, "{deletions:#?}");
    assert_eq!(deletions[0]["data"]["email"]["id"], gone["id"]);
    // The \Deleted flag set before the expunge was an update too; nothing else was.
    let keep_now = w
        .api
        .get(&w.app, &format!("/api/v1/emails/{keep_id}"), &w.ann)
        .await
        .1;
    assert!(keep_now["deleted_on_server_at"].is_null(), "{keep_now:#}");
    w.assert_healthy(mailbox).await;
}

fn deliver_keep_and_gone(dovecot: &Dovecot) {
    dovecot.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: keep\r\nMessage-ID: <keep@example.com>\r\n\r\n1\r\n").unwrap();
    let read = dovecot.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: gone\r\nMessage-ID: <gone@example.com>\r\n\r\n2\r\n").unwrap();
    // Maildir: a message in cur/ with the S flag was read.
    let name = read.file_name().unwrap().to_string_lossy().into_owned();
    let cur = read.parent().unwrap().parent().unwrap().join("cur");
    std::fs::rename(&read, cur.join(format!("{name}:2,S"))).unwrap();
}

#[tokio::test]
async fn flags_and_expunges_by_another_client_follow_with_condstore() {
    let w = world().await;
    // Ann signs in with a password too, for her other mail program.
    w.dovecot
        .add_password_user("ann@example.com", "hunter2")
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    deliver_keep_and_gone(&w.dovecot);
    let profile = w.password_profile("Local").await;
    let mailbox = w.ann_password_mailbox_on(&profile).await;
    let tested = w.test(&mailbox, &w.ann).await;
    assert_eq!(tested["enabled"], true, "{tested:#}");
    changes_by_another_client_follow(&w, &w.dovecot, &mailbox).await;
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn flags_and_expunges_by_another_client_follow_without_condstore() {
    let w = world().await;
    let plain = Dovecot::start_without(
        &w.oauth,
        &[("ann@example.com", "hunter2")],
        &["CONDSTORE", "QRESYNC"],
    )
    .unwrap();
    deliver_keep_and_gone(&plain);
    let profile = w
        .password_profile_at(
            "No CONDSTORE",
            json!({"protocol": "imap", "host": "127.0.0.1", "port": plain.ports.imap, "security": "none"}),
            json!({"host": "127.0.0.1", "port": plain.ports.submission, "security": "none"}),
            json!({"poll_interval_seconds": 10}),
        )
        .await;
    let mailbox = w.ann_password_mailbox_on(&profile).await;
    assert_eq!(w.test(&mailbox, &w.ann).await["enabled"], true);
    changes_by_another_client_follow(&w, &plain, &mailbox).await;
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn patch_sets_read_and_flagged_on_the_server_and_refuses_what_it_cannot() {
    let mut w = world().await;
    w.dovecot.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: mark me\r\nMessage-ID: <mark@example.com>\r\n\r\n1\r\n").unwrap();
    let (_, mailbox) = w.ann_enabled(json!({})).await;
    let all = emails_until(&w, &mailbox, "the email", |e| !e.is_empty()).await;
    let id = all[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/emails/{id}");

    for (body, field) in [
        (json!({}), "seen"),
        (json!({"seen": "yes"}), "seen"),
        (json!({"seen": true, "deleted": true}), "deleted"),
    ] {
        let (status, e) = w.api.patch(&w.app, &path, &w.ann, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {e}");
        assert_eq!(e["error"]["field"], field, "{body}: {e}");
    }
    let (_, bob) = w
        .app
        .user("bob@example.com", mailbridge_core::Role::User)
        .await
        .unwrap();
    let (status, _) = w
        .api
        .patch(&w.app, &path, &bob, json!({"seen": true}))
        .await;
    assert!(
        status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
        "another user: {status}"
    );

    let (status, e) = w
        .api
        .patch(
            &w.app,
            &path,
            &w.ann,
            json!({"seen": true, "flagged": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(e["flags"]["seen"], true);
    assert_eq!(e["flags"]["flagged"], true);
    // Dovecot keeps a Maildir message's flags in its file name: F flagged, S seen.
    let files = maildir_files(&w.dovecot, "ann@example.com", "");
    assert!(
        files.iter().any(|f| f.ends_with(":2,FS")),
        "the server has them: {files:?}"
    );
    let updated = events(&w, &mailbox, "email.updated").await;
    assert_eq!(updated.len(), 1, "{updated:#?}");

    let (status, e) = w
        .api
        .patch(&w.app, &path, &w.ann, json!({"flagged": false}))
        .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(
        (&e["flags"]["seen"], &e["flags"]["flagged"]),
        (&json!(true), &json!(false))
    );
    let files = maildir_files(&w.dovecot, "ann@example.com", "");
    assert!(files.iter().any(|f| f.ends_with(":2,S")), "{files:?}");

    // An email queued here and not yet on the server has nothing to change.
    w.dovecot.stop_sink();
    let (_, queued) = w
        .api
        .post(
            &w.app,
            "/api/v1/emails",
            &w.ann,
            json!({"mailbox_id": mailbox, "to": [{"address": "bob@example.com"}], "subject": "queued", "text_body": "x"}),
        )
        .await;
    let (status, e) = w
        .api
        .patch(
            &w.app,
            &format!("/api/v1/emails/{}", queued["id"].as_str().unwrap()),
            &w.ann,
            json!({"seen": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "not_on_server", "{e}");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_folder_that_fails_is_reported_and_the_others_go_on() {
    let w = world().await;
    w.dovecot.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: in inbox\r\nMessage-ID: <in1@example.com>\r\n\r\n1\r\n").unwrap();
    let profile = w
        .gmail_like(
            "With folders",
            w.imaps(),
            w.submissions(),
            json!({"folders": ["Projects", "Sent"]}),
        )
        .await;
    let (_, p) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/server-profiles/{profile}"),
            &w.admin,
        )
        .await;
    assert_eq!(p["folders"], json!(["Projects", "Sent"]), "{p:#}");
    let mailbox = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    w.sign_in(&mailbox, &w.ann).await;
    assert_eq!(w.test(&mailbox, &w.ann).await["enabled"], true);
    emails_until(&w, &mailbox, "INBOX's mail", |e| !e.is_empty()).await;
    let m = folder_until(
        &w,
        &mailbox,
        "Projects",
        "the missing folder reported",
        |f| f["error"].is_string(),
    )
    .await;
    let projects = m["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["folder"] == "Projects")
        .unwrap()
        .clone();
    assert!(projects["failing_since"].is_string(), "{projects:#}");
    assert!(
        projects["error"].as_str().unwrap().contains("Projects"),
        "names the folder: {projects:#}"
    );
    assert_eq!(
        m["enabled"], true,
        "one folder does not stop the mailbox: {m:#}"
    );
    assert_eq!(m["items_failed"], 0, "{m:#}");

    // Mail goes on arriving in INBOX meanwhile; and once the folder exists, it syncs.
    w.dovecot.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: still\r\nMessage-ID: <in2@example.com>\r\n\r\n2\r\n").unwrap();
    w.dovecot.deliver_to("ann@example.com", "Projects", b"From: y@example.com\r\nTo: ann@example.com\r\nSubject: filed\r\nMessage-ID: <pr1@example.com>\r\n\r\n3\r\n").unwrap();
    let all = emails_until(&w, &mailbox, "INBOX and Projects", |e| e.len() >= 3).await;
    assert_eq!(by_subject(&all, "filed")["folder"], "Projects");
    assert_eq!(by_subject(&all, "filed")["direction"], "incoming");
    let m = folder_until(
        &w,
        &mailbox,
        "Projects",
        "the folder's error cleared",
        |f| f["error"].is_null(),
    )
    .await;
    assert_eq!(m["items_failed"], 0, "{m:#}");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn folder_names_are_validated_at_the_edge_and_a_user_names_their_own() {
    let w = world().await;
    for (folders, field) in [
        (json!(["INBOX"]), "folders[0]"),
        (json!(["ok", "bad*"]), "folders[1]"),
        (json!([""]), "folders[0]"),
        (json!(["a\u{7}b"]), "folders[0]"),
        (json!("Archive"), "folders"),
    ] {
        let (status, e) = w
            .api
            .post(
                &w.app,
                "/api/v1/server-profiles",
                &w.admin,
                json!({"name": "F", "auth": "password", "incoming": {"protocol": "imap", "host": "127.0.0.1", "port": 993, "security": "tls"},
                       "outgoing": {"host": "127.0.0.1", "port": 465, "security": "tls"}, "folders": folders}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{folders}: {e}");
        assert_eq!(e["error"]["field"], field, "{folders}: {e}");
    }
    let profile = w.password_profile("Local").await;
    let mailbox = w.ann_password_mailbox_on(&profile).await;
    let path = format!("/api/v1/mailboxes/{mailbox}");
    let (status, e) = w
        .api
        .patch(
            &w.app,
            &path,
            &w.ann,
            json!({"extra_folders": ["Clients", "inbox"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["field"], "extra_folders[1]", "{e}");
    let (status, m) = w
        .api
        .patch(
            &w.app,
            &path,
            &w.ann,
            json!({"extra_folders": [" Clients/Acme ", "Clients/Acme"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["extra_folders"], json!(["Clients/Acme"]), "trimmed, once");
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_moved_between_synced_folders_stays_one_record() {
    let w = world().await;
    w.dovecot
        .add_password_user("ann@example.com", "hunter2")
        .unwrap();
    w.dovecot.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: to file\r\nMessage-ID: <mv1@example.com>\r\n\r\n1\r\n").unwrap();
    w.dovecot.deliver_to("ann@example.com", "Archive", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: old\r\nMessage-ID: <old1@example.com>\r\n\r\n0\r\n").unwrap();
    // Archive is this mailbox's own choice, not its profile's.
    let profile = w
        .gmail_like("Plain", w.imaps(), w.submissions(), json!({}))
        .await;
    let mailbox = w
        .mailbox(
            "ann@example.com",
            &w.ann_id,
            &profile,
            json!({"extra_folders": ["Archive"]}),
        )
        .await;
    w.sign_in(&mailbox, &w.ann).await;
    assert_eq!(w.test(&mailbox, &w.ann).await["enabled"], true);
    let all = emails_until(&w, &mailbox, "both folders", |e| e.len() >= 2).await;
    let filed = by_subject(&all, "to file").clone();
    assert_eq!(filed["folder"], "INBOX");

    // Ann's mail program moves it to Archive (MOVE, RFC 6851).
    in_anns_client(&w.dovecot, &["UID MOVE 1 Archive"]);
    let id = filed["id"].as_str().unwrap();
    let moved = email_until(&w, id, "the record in Archive", |e| {
        e["folder"] == "Archive"
    })
    .await;
    assert!(moved["deleted_on_server_at"].is_null(), "{moved:#}");
    // Another pass over INBOX finds it gone from there: still nothing deleted, nothing twice.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let all = emails(&w, &mailbox).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all.iter().all(|e| e["deleted_on_server_at"].is_null()),
        "{all:#?}"
    );
    assert!(events(&w, &mailbox, "email.deleted").await.is_empty());
    let updated = events(&w, &mailbox, "email.updated").await;
    assert!(
        updated
            .iter()
            .any(|e| e["data"]["email"]["id"] == filed["id"]),
        "{updated:#?}"
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn patch_with_the_mail_server_down_is_a_502_and_the_record_is_unchanged() {
    let w = world().await;
    w.dovecot.deliver("ann@example.com", b"From: x@example.com\r\nTo: ann@example.com\r\nSubject: later\r\nMessage-ID: <later@example.com>\r\n\r\n1\r\n").unwrap();
    let proxy = mailbridge_testkit::CountingProxy::start(w.dovecot.ports.imap)
        .await
        .unwrap();
    let incoming =
        json!({"protocol": "imap", "host": "127.0.0.1", "port": proxy.port, "security": "none"});
    let (_, mailbox) = w.ann_enabled_via(incoming, json!({})).await;
    let all = emails_until(&w, &mailbox, "the email", |e| !e.is_empty()).await;
    let id = all[0]["id"].as_str().unwrap().to_owned();
    proxy.set_down(true);
    let (status, e) = w
        .api
        .patch(
            &w.app,
            &format!("/api/v1/emails/{id}"),
            &w.ann,
            json!({"flagged": true}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{e}");
    assert_eq!(e["error"]["code"], "mail_server", "{e}");
    let (_, now) = w
        .api
        .get(&w.app, &format!("/api/v1/emails/{id}"), &w.ann)
        .await;
    assert_eq!(now["flags"]["flagged"], false, "unchanged: {now:#}");
    assert!(events(&w, &mailbox, "email.updated").await.is_empty());
    w.app.stop().await.unwrap();
}
