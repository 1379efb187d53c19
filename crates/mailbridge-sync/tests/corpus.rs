//! Real mail: 1,000 messages of the SpamAssassin corpus and mail-parser's malformed samples,
//! delivered to Dovecot and synchronized — every one stored, none lost, the unreadable ones
//! flagged. And the whole corpus parsed as a record keeps it, judged by mail-parser's default
//! parse.
#![allow(clippy::unwrap_used)] // a test that panics on an unexpected error fails clearly

use mailbridge_core::parse::{ParsedAttachment, ParsedEmail, Party};
use mailbridge_sync::incoming::imap::sync_inbox;
use mailbridge_testkit::{AppOptions, MailWorld, corpus};
use serde_json::json;

#[tokio::test]
async fn a_thousand_real_messages_and_the_malformed_samples_are_all_stored() {
    let mut messages = corpus::spam_assassin(1000).unwrap();
    assert_eq!(messages.len(), 1000, "the corpus is installed");
    let malformed = corpus::mail_parser_malformed().unwrap();
    assert!(
        malformed.len() >= 20,
        "mail-parser's malformed samples are found"
    );
    messages.extend(malformed);

    let w = MailWorld::start(AppOptions::default()).await;
    for m in &messages {
        w.dovecot.deliver("ann@example.com", m).unwrap();
    }
    let profile = w
        .gmail_like("G", w.imaps(), w.submissions(), json!({}))
        .await;
    let id = w
        .mailbox("ann@example.com", &w.ann_id, &profile, json!({}))
        .await;
    w.sign_in(&id, &w.ann).await;
    let mailbox = w.app.store.get_mailbox(id.parse().unwrap()).await.unwrap();
    let mut s = w.imap_session(&id).await;

    let started = std::time::Instant::now();
    let report = sync_inbox(&w.app.store, &mut s, &mailbox, None, None)
        .await
        .unwrap();
    eprintln!(
        "{} messages synchronized in {:?}",
        report.stored,
        started.elapsed()
    );
    assert_eq!(report.fetched, messages.len());
    assert_eq!(
        report.stored,
        messages.len(),
        "every message is stored, none lost"
    );
    assert_eq!(
        w.app.store.count_emails(mailbox.id).await.unwrap(),
        messages.len() as i64
    );

    // The records carry what was in the messages; the unreadable ones are flagged.
    let (_, page) = w
        .api
        .get(
            &w.app,
            &format!("/api/v1/emails?mailbox_id={id}&limit=200"),
            &w.ann,
        )
        .await;
    let emails = page["emails"].as_array().unwrap();
    let with_subject = emails.iter().filter(|e| e["subject"].is_string()).count();
    assert!(
        with_subject > 190,
        "real mail has subjects: {with_subject} of {}",
        emails.len()
    );
    // Each record has exactly the attachments of its own message (batched inserts must not
    // hand one message's files to another).
    let (mut after, mut attachments) = (None, 0);
    loop {
        let filter = mailbridge_store::EmailFilter {
            mailbox: Some(mailbox.id),
            ..Default::default()
        };
        let page = w
            .app
            .store
            .list_emails(&filter, after.as_deref(), 500)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for e in &page {
            let raw = w.app.store.email_raw(&e.id).await.unwrap();
            let expected: Vec<i64> = mail_parser::MessageParser::default()
                .parse(&raw[..])
                .map(|m| m.attachments().map(|a| a.contents().len() as i64).collect())
                .unwrap_or_default();
            let stored: Vec<i64> = e.attachments.iter().map(|a| a.size).collect();
            assert_eq!(stored, expected, "attachments of {:?}", e.message_id);
            attachments += stored.len();
        }
    }
    assert!(
        attachments > 20,
        "the corpus has attachments: {attachments}"
    );
    s.logout().await;
}

/// What mail-parser's default parse (every header read) gives for the fields a record keeps,
/// as [`mailbridge_core::parse::parse`] stores them.
fn by_default_parser(raw: &[u8]) -> Option<ParsedEmail> {
    use mail_parser::{Address, HeaderValue, MimeHeaders};
    let m = mail_parser::MessageParser::default().parse(raw)?;
    let text = |s: &str| s.replace('\0', "\u{FFFD}");
    let list = |v: &HeaderValue<'_>| -> Vec<String> {
        v.as_text_list()
            .map(|l| l.iter().map(|s| text(s)).collect())
            .unwrap_or_default()
    };
    let parties = |a: Option<&Address<'_>>| -> Vec<Party> {
        a.map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some(Party {
                        address: text(p.address()?),
                        name: p.name().map(text),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
    };
    Some(ParsedEmail {
        message_id: m.message_id().map(text),
        in_reply_to: list(m.in_reply_to()),
        references: list(m.references()),
        subject: m.subject().map(text),
        from: parties(m.from()).into_iter().next(),
        to: parties(m.to()),
        cc: parties(m.cc()),
        date: m
            .date()
            .and_then(|d| chrono::DateTime::from_timestamp(d.to_timestamp(), 0)),
        attachments: m
            .attachments()
            .map(|a| ParsedAttachment {
                filename: a.attachment_name().map(text),
                content_type: a.content_type().map_or_else(
                    || "application/octet-stream".to_owned(),
                    |ct| match ct.subtype() {
                        Some(sub) => text(&format!("{}/{sub}", ct.ctype())),
                        None => text(ct.ctype()),
                    },
                ),
                size: a.contents().len(),
            })
            .collect(),
        parse_error: None,
    })
}

#[test]
fn the_parse_reads_every_corpus_message_as_mail_parsers_default_does() {
    // The ingest parse reads only the headers a record keeps and skips the rest unparsed;
    // mail-parser's own default (every header parsed) is the judge that nothing it keeps
    // changed — nor the attachments a stored record lists, whose sizes older records were
    // made with.
    let mut messages = corpus::spam_assassin(usize::MAX).unwrap();
    assert!(messages.len() > 6000, "the corpus is installed");
    messages.extend(corpus::mail_parser_malformed().unwrap());
    let mut attachments = 0;
    for raw in &messages {
        let ours = mailbridge_core::parse::parse(raw);
        let Some(expected) = by_default_parser(raw) else {
            assert!(ours.parse_error.is_some(), "{ours:?}");
            continue;
        };
        let fields = |p: &ParsedEmail| {
            (
                p.message_id.clone(),
                p.in_reply_to.clone(),
                p.references.clone(),
                p.subject.clone(),
                p.from.clone(),
                p.to.clone(),
                p.cc.clone(),
                p.date,
                p.attachments.clone(),
            )
        };
        assert_eq!(fields(&ours), fields(&expected), "{:?}", ours.message_id);
        attachments += ours.attachments.len();
    }
    assert!(
        attachments > 100,
        "the corpus has attachments: {attachments}"
    );
}
