//! Outgoing mail: [`compose`] builds the RFC 5322 message (with a Message-ID that replies
//! will carry back in In-Reply-To, so they join the conversation), and [`send_due`] sends
//! what is queued over SMTP with the mailbox's token: `sent` with the server's words, retried
//! with backoff on 4xx and network errors, `failed` with the server's words on 5xx.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use mail_builder::MessageBuilder;
use mailbridge_core::message::Party;
use mailbridge_core::{EmailAddress, MailboxId, OutgoingMessage, tracking};
use mailbridge_proto::smtp::SmtpSession;
use mailbridge_store::{NewEmail, OutgoingEmail, RawMessage, Store, StoreError};

use crate::engine::Engine;
use crate::parse::parse;

/// Mailboxes sending at once.
const SEND_CONCURRENCY: usize = 8;

/// Attempts before a temporarily failing email is given up as `failed`.
pub(crate) const MAX_SEND_ATTEMPTS: i64 = 10;

/// Builds the RFC 5322 message for a checked [`OutgoingMessage`] from `from`, and the record
/// to queue for it: the message (bcc never written into it), the envelope it goes to, and
/// the request's fingerprint for `Idempotency-Key` checks.
pub fn compose(
    from: &EmailAddress,
    mail: &OutgoingMessage,
    now: DateTime<Utc>,
) -> Result<OutgoingEmail, std::io::Error> {
    use mail_builder::headers::address::Address;
    use mail_builder::headers::text::Text;
    let local = uuid::Uuid::now_v7();
    let message_id = format!("{local}@{}", from.domain());
    let token = mail.tracking_token.then(|| {
        let mut random = [0u8; 5];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        tracking::new_token(random)
    });
    let subject = match &token {
        Some(t) => tracking::with_token(&mail.subject, t),
        None => mail.subject.clone(),
    };
    let list = |parties: &[Party]| {
        parties
            .iter()
            .map(|p| Address::new_address(p.name.clone(), p.address.clone()))
            .collect::<Vec<_>>()
    };
    let mut builder = MessageBuilder::new()
        .from(from.as_str())
        .to(list(&mail.to))
        .subject(subject)
        .message_id(message_id)
        .date(now.timestamp());
    if !mail.cc.is_empty() {
        builder = builder.cc(list(&mail.cc));
    }
    if !mail.reply_to.is_empty() {
        builder = builder.reply_to(list(&mail.reply_to));
    }
    if let Some(parent) = &mail.in_reply_to {
        builder = builder
            .in_reply_to(parent.as_str().to_owned())
            .references(parent.as_str().to_owned());
    }
    for (name, value) in &mail.headers {
        builder = builder.header(name.clone(), Text::new(value.clone()));
    }
    if let Some(text) = &mail.text_body {
        builder = builder.text_body(text.clone());
    }
    if let Some(html) = &mail.html_body {
        builder = builder.html_body(html.clone());
    }
    for a in &mail.attachments {
        builder = builder.attachment(
            a.content_type.clone(),
            a.filename.clone(),
            a.content.clone(),
        );
    }
    let raw = builder.write_to_vec()?;
    Ok(OutgoingEmail {
        email: NewEmail {
            remote_key: format!("out/{local}"),
            folder: None,
            uid: None,
            gmail_labels: Vec::new(),
            gmail_thread_id: None,
            tracking_token: token,
            parsed: parse(&raw),
            raw: RawMessage::new(raw),
            renumbered_from: None,
        },
        envelope: mail.envelope(),
        bcc: mail.bcc.clone(),
        fingerprint: mail.fingerprint(),
    })
}

/// Sends the emails due now from the mailboxes whose lease `node` holds, one SMTP session per
/// mailbox. Returns how many were sent.
pub(crate) async fn send_due(
    engine: &Engine,
    store: &Store,
    node: &str,
) -> Result<usize, StoreError> {
    let claimed = store.claim_due_outgoing(node, 50).await?;
    let mut by_mailbox: BTreeMap<MailboxId, Vec<String>> = BTreeMap::new();
    for (email, mailbox) in claimed {
        by_mailbox.entry(mailbox).or_default().push(email);
    }
    // Mailboxes are independent: their sessions run side by side, a few at a time.
    let results: Vec<Result<usize, StoreError>> =
        futures::stream::iter(by_mailbox)
            .map(|(mailbox, emails)| async move {
                send_for_mailbox(engine, store, mailbox, &emails).await
            })
            .buffer_unordered(SEND_CONCURRENCY)
            .collect()
            .await;
    let mut sent = 0;
    for r in results {
        sent += r?;
    }
    Ok(sent)
}

async fn send_for_mailbox(
    engine: &Engine,
    store: &Store,
    mailbox: MailboxId,
    emails: &[String],
) -> Result<usize, StoreError> {
    let record = store.get_mailbox(mailbox).await?;
    let profile = store.get_profile(record.spec.profile_id).await?;
    let session = async {
        let (credentials, _) = engine.credentials(&record, &profile).await?;
        let endpoint = crate::login::outgoing(&profile, engine.mail_timeout());
        Ok::<_, crate::incoming::SyncError>(
            SmtpSession::login(&endpoint, engine.tls(), &credentials, engine.client_name()).await?,
        )
    }
    .await;
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            for id in emails {
                let attempts = store.get_email(id).await?.send_attempts;
                settle_failure(
                    engine,
                    store,
                    id,
                    attempts,
                    &e.to_string(),
                    e.is_transient(),
                )
                .await?;
            }
            return Ok(0);
        }
    };
    // Counted only once the connection is really open.
    let _connection = engine.metrics().connection();
    let mut sent = 0;
    for id in emails {
        let email = store.get_email(id).await?;
        let raw = store.email_raw(id).await?;
        let recipients = store.send_envelope(&email).await?;
        match session
            .send(record.spec.email.as_str(), &recipients, &raw)
            .await
        {
            Ok(report) => {
                let refused: Vec<String> = report
                    .recipients
                    .iter()
                    .filter(|r| !r.accepted)
                    .map(|r| format!("{}: {}", r.address, r.reply))
                    .collect();
                let words = if refused.is_empty() {
                    report.reply
                } else {
                    format!("{}; refused: {}", report.reply, refused.join("; "))
                };
                store.mark_sent(id, &words).await?;
                engine.metrics().send("sent");
                sent += 1;
            }
            Err(e) => {
                let transient = e.is_transient();
                settle_failure(
                    engine,
                    store,
                    id,
                    email.send_attempts,
                    &e.to_string(),
                    transient,
                )
                .await?;
                if matches!(
                    e.kind,
                    mailbridge_proto::ErrorKind::Io(_) | mailbridge_proto::ErrorKind::Timeout(_)
                ) {
                    // The session is gone; the rest wait for the next round.
                    for rest in emails.iter().skip_while(|x| *x != id).skip(1) {
                        let attempts = store.get_email(rest).await?.send_attempts;
                        settle_failure(
                            engine,
                            store,
                            rest,
                            attempts,
                            "not attempted: the connection was lost",
                            true,
                        )
                        .await?;
                    }
                    return Ok(sent);
                }
            }
        }
    }
    let _ = session.quit().await;
    Ok(sent)
}

/// Retry later with backoff (2 s, 4 s, … capped at 15 min), or give up.
async fn settle_failure(
    engine: &Engine,
    store: &Store,
    id: &str,
    attempts: i64,
    error: &str,
    transient: bool,
) -> Result<(), StoreError> {
    let now = engine.now();
    if transient && attempts < MAX_SEND_ATTEMPTS {
        let wait = Duration::from_secs(
            2u64.saturating_pow(u32::try_from(attempts).unwrap_or(u32::MAX))
                .min(900),
        );
        let retry_at = now + chrono::Duration::from_std(wait).unwrap_or_default();
        tracing::info!(email = id, error, attempts, "send failed; will retry");
        engine.metrics().send("retry");
        store.mark_send_retry(id, error, retry_at).await
    } else {
        tracing::warn!(email = id, error, attempts, "send failed for good");
        engine.metrics().send("failed");
        store.mark_send_failed(id, error).await
    }
}
