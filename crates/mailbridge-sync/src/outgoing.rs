//! Outgoing mail: [`compose`] builds the RFC 5322 message (with a Message-ID that replies
//! will carry back in In-Reply-To, so they join the conversation), and `send_due` sends
//! what is queued over SMTP with the mailbox's token: `sent` with the server's words, retried
//! with backoff on 4xx and network errors, `failed` with the server's words on 5xx. An email
//! whose final `.` went out but whose answer was lost is never sent again blindly (see
//! `settle_unconfirmed`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use mail_builder::MessageBuilder;
use mailbridge_core::message::Party;
use mailbridge_core::{
    Clock, EmailAddress, IncomingProtocol, MailboxId, OutgoingAuth, OutgoingMessage, tracking,
};
use mailbridge_proto::imap::ImapSession;
use mailbridge_proto::smtp::SmtpSession;
use mailbridge_proto::{Credentials, ErrorKind, TlsSettings};
use mailbridge_store::{
    EmailRecord, MailboxRecord, NewEmail, OutgoingEmail, ProfileRecord, RawMessage, Store,
    StoreError,
};

use crate::limits::ConnectionLimits;
use crate::metrics::Metrics;
use crate::tokens::TokenService;
use mailbridge_core::parse::parse;

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
            truncated_from: None,
            renumbered_from: None,
            flags: None,
            sent_by_owner: false,
        },
        envelope: mail.envelope(),
        bcc: mail.bcc.clone(),
        fingerprint: mail.fingerprint(),
    })
}

/// What sending needs, lent by the engine: a narrow view, so this module never reaches into
/// the engine.
pub(crate) struct SendContext<'a> {
    pub store: &'a Store,
    pub tokens: &'a TokenService,
    pub tls: &'a TlsSettings,
    pub limits: &'a ConnectionLimits,
    pub metrics: &'a Metrics,
    pub clock: &'a dyn Clock,
    /// Bound on connecting to a mail server and on every read from it.
    pub timeout: Duration,
    /// What SMTP EHLO says.
    pub client_name: &'a str,
}

/// Emails claimed per round.
pub(crate) const CLAIM_PER_ROUND: i64 = 50;

/// Sends the emails due now from the mailboxes whose lease `node` holds, one SMTP session per
/// mailbox. Returns how many were claimed (a full round means more may be waiting).
pub(crate) async fn send_due(ctx: &SendContext<'_>, node: &str) -> Result<usize, StoreError> {
    let claimed = ctx.store.claim_due_outgoing(node, CLAIM_PER_ROUND).await?;
    let count = claimed.len();
    let mut by_mailbox: BTreeMap<MailboxId, Vec<String>> = BTreeMap::new();
    for (email, mailbox) in claimed {
        by_mailbox.entry(mailbox).or_default().push(email);
    }
    // Mailboxes are independent: their sessions run side by side, a few at a time.
    let results: Vec<Result<usize, StoreError>> = futures::stream::iter(by_mailbox)
        .map(|(mailbox, emails)| async move { send_for_mailbox(ctx, mailbox, &emails).await })
        .buffer_unordered(SEND_CONCURRENCY)
        .collect()
        .await;
    let mut sent = 0;
    for r in results {
        sent += r?;
    }
    if sent > 0 {
        tracing::info!(sent, "sent queued email");
    }
    Ok(count)
}

async fn send_for_mailbox(
    ctx: &SendContext<'_>,
    mailbox: MailboxId,
    emails: &[String],
) -> Result<usize, StoreError> {
    let store = ctx.store;
    let record = store.get_mailbox(mailbox).await?;
    let profile = store.get_profile(record.spec.profile_id).await?;
    // One of the profile's connections for the whole session.
    let _slot = ctx.limits.acquire(&profile).await;
    let session = async {
        let endpoint = crate::login::outgoing(&profile, ctx.timeout);
        match profile.spec.outgoing.authentication {
            OutgoingAuth::Mailbox => {
                let (credentials, _) =
                    crate::login::credentials(store, ctx.tokens, &record, &profile).await?;
                let session =
                    SmtpSession::login(&endpoint, ctx.tls, &credentials, ctx.client_name).await?;
                Ok::<_, crate::incoming::SyncError>((session, Some(credentials)))
            }
            OutgoingAuth::None => {
                let session = SmtpSession::connect(&endpoint, ctx.tls, ctx.client_name).await?;
                // The mailbox's own IMAP login is still what files sent mail in Sent and looks
                // there for an unconfirmed send, when it has one; POP3 has no Sent folder.
                let credentials = if profile.spec.incoming.protocol == IncomingProtocol::Imap {
                    match crate::login::credentials(store, ctx.tokens, &record, &profile).await {
                        Ok((c, _)) => Some(c),
                        Err(e) => {
                            tracing::debug!(%mailbox, error = %e, "no mailbox login beside the relay: sent mail is not filed in Sent");
                            None
                        }
                    }
                } else {
                    None
                };
                Ok((session, credentials))
            }
        }
    }
    .await;
    let (mut session, credentials) = match session {
        Ok(s) => s,
        Err(e) => {
            for id in emails {
                if e.is_provider_limit() {
                    settle_wait(ctx, id, &e.to_string(), provider_wait_over(ctx)).await?;
                    continue;
                }
                let attempts = store.get_email(id).await?.send_attempts;
                settle_failure(ctx, id, attempts, &e.to_string(), e.is_transient()).await?;
            }
            return Ok(0);
        }
    };
    // Counted only once the connection is really open.
    let _connection = ctx.metrics.connection();
    let mut sent = 0;
    let mut to_file = Vec::new();
    for (n, id) in emails.iter().enumerate() {
        if let Some((until, why)) = paced(ctx, &record, &profile).await? {
            // The profile's per-minute limit is reached: the rest wait, uncounted.
            for rest in &emails[n..] {
                settle_wait(ctx, rest, &why, until).await?;
            }
            break;
        }
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
                ctx.metrics.send("sent");
                sent += 1;
                to_file.push(raw);
            }
            Err(e) => {
                let lost = matches!(
                    e.kind,
                    ErrorKind::Io(_) | ErrorKind::Timeout(_) | ErrorKind::Unconfirmed(_)
                );
                if matches!(e.kind, ErrorKind::Unconfirmed(_)) {
                    settle_unconfirmed(ctx, &profile, credentials.as_ref(), &email, &e.to_string())
                        .await?;
                } else if crate::incoming::is_provider_limit(&e) {
                    settle_wait(ctx, id, &e.to_string(), provider_wait_over(ctx)).await?;
                } else {
                    settle_failure(
                        ctx,
                        id,
                        email.send_attempts,
                        &e.to_string(),
                        e.is_transient(),
                    )
                    .await?;
                }
                if lost {
                    // The session is gone; the rest wait for the next round.
                    for rest in &emails[n + 1..] {
                        let attempts = store.get_email(rest).await?.send_attempts;
                        settle_failure(
                            ctx,
                            rest,
                            attempts,
                            "not attempted: the connection was lost",
                            true,
                        )
                        .await?;
                    }
                    file_in_sent(ctx, &record, &profile, credentials.as_ref(), &to_file).await;
                    return Ok(sent);
                }
            }
        }
    }
    let _ = session.quit().await;
    file_in_sent(ctx, &record, &profile, credentials.as_ref(), &to_file).await;
    Ok(sent)
}

/// Files a copy of what was just sent in the mailbox's Sent folder (IMAP APPEND, marked
/// read), where the profile asks for it: servers other than Gmail do not file mail sent over
/// SMTP themselves, and the user expects to see it in their client. The copy comes back with
/// the Sent folder's sync and joins the email's record (same Message-ID). A failure costs
/// only the copy: the email was sent. Without a login to the mailbox (sent through a relay,
/// with no incoming login) there is nowhere to file it.
async fn file_in_sent(
    ctx: &SendContext<'_>,
    mailbox: &MailboxRecord,
    profile: &ProfileRecord,
    credentials: Option<&Credentials>,
    raws: &[Vec<u8>],
) {
    let Some(credentials) = credentials else {
        return;
    };
    if raws.is_empty()
        || !profile.spec.append_sent
        || profile.spec.incoming.protocol != IncomingProtocol::Imap
    {
        return;
    }
    let endpoint = crate::login::incoming(profile, ctx.timeout);
    let filed = async {
        let mut imap = ImapSession::login(&endpoint, ctx.tls, credentials).await?;
        let Some(folder) = imap.sent_folder().await? else {
            imap.logout().await;
            return Ok(None);
        };
        for raw in raws {
            imap.append(&folder, "(\\Seen)", raw).await?;
        }
        imap.logout().await;
        Ok::<_, mailbridge_proto::ProtoError>(Some(folder))
    };
    match filed.await {
        Ok(Some(folder)) => {
            tracing::debug!(mailbox = %mailbox.id, folder, count = raws.len(), "filed sent mail");
        }
        Ok(None) => {
            tracing::warn!(mailbox = %mailbox.id, "no Sent folder to file sent mail in (no \\Sent folder, nor one of the usual names)");
        }
        Err(e) => {
            tracing::warn!(mailbox = %mailbox.id, error = %e, "cannot file sent mail in the Sent folder");
        }
    }
}

/// The whole message went out but the server's answer was lost: it may have been delivered.
/// It is never sent again blindly. Where the mailbox's own server keeps sent mail (Gmail
/// files what it accepts in Sent), the Sent folder is searched for its Message-ID: found,
/// it was delivered; otherwise it is marked failed, saying so, and the owner is alerted to
/// decide.
async fn settle_unconfirmed(
    ctx: &SendContext<'_>,
    profile: &ProfileRecord,
    credentials: Option<&Credentials>,
    email: &EmailRecord,
    error: &str,
) -> Result<(), StoreError> {
    let found = match (&email.message_id, credentials) {
        (Some(message_id), Some(credentials))
            if profile.spec.incoming.protocol == IncomingProtocol::Imap =>
        {
            // A server that files what it accepts may take a moment to do so.
            tokio::time::sleep(UNCONFIRMED_CHECK_DELAY).await;
            let endpoint = crate::login::incoming(profile, ctx.timeout);
            let search = async {
                let mut imap = ImapSession::login(&endpoint, ctx.tls, credentials).await?;
                let found = match imap.sent_folder().await? {
                    Some(folder) => imap.has_message_id(&folder, message_id).await?,
                    None => false,
                };
                imap.logout().await;
                Ok::<bool, mailbridge_proto::ProtoError>(found)
            };
            match search.await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(email = %email.id, error = %e, "cannot search the Sent folder for an unconfirmed email");
                    false
                }
            }
        }
        _ => false,
    };
    if found {
        tracing::info!(email = %email.id, "the server's answer was lost, but the email is in the Sent folder");
        ctx.metrics.send("sent");
        ctx.store
            .mark_sent(
                &email.id,
                &format!("{error}; it is in the mailbox's Sent folder, so it was delivered"),
            )
            .await
    } else {
        tracing::warn!(email = %email.id, error, "sent without confirmation; not sending it again");
        ctx.metrics.send("unconfirmed");
        ctx.store.mark_send_unconfirmed(&email.id, error).await
    }
}

/// How long to give a server to file an email it accepted before its Sent folder is searched.
const UNCONFIRMED_CHECK_DELAY: Duration = Duration::from_secs(2);

/// How long to wait when the provider says a mailbox sends too much at once.
const PROVIDER_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// When to send again after the provider asked to wait: a minute from now.
fn provider_wait_over(ctx: &SendContext<'_>) -> DateTime<Utc> {
    ctx.clock.now() + chrono::Duration::from_std(PROVIDER_LIMIT_WAIT).unwrap_or_default()
}

/// The email waits (a limit of sends or connections at once, the provider's or the
/// profile's): it is sent again at `retry_at`, and the attempt does not count towards
/// giving up.
async fn settle_wait(
    ctx: &SendContext<'_>,
    id: &str,
    why: &str,
    retry_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tracing::info!(email = id, why, %retry_at, "waiting before sending");
    ctx.metrics.send("wait");
    ctx.store.mark_send_wait(id, why, retry_at).await
}

/// When the profile's `sends_per_minute` is used up for the mailbox: until when, and why.
async fn paced(
    ctx: &SendContext<'_>,
    mailbox: &MailboxRecord,
    profile: &ProfileRecord,
) -> Result<Option<(DateTime<Utc>, String)>, StoreError> {
    let limit = profile.spec.sends_per_minute;
    if limit == 0 {
        return Ok(None);
    }
    let now = ctx.clock.now();
    let minute = chrono::Duration::minutes(1);
    let (sent, first) = ctx.store.sent_since(mailbox.id, now - minute).await?;
    if sent < limit {
        return Ok(None);
    }
    Ok(Some((
        first.unwrap_or(now) + minute,
        format!(
            "waiting: {sent} emails went out in the last minute, the profile's sends_per_minute"
        ),
    )))
}

/// Retry later with backoff (2 s, 4 s, … capped at 15 min), or give up.
async fn settle_failure(
    ctx: &SendContext<'_>,
    id: &str,
    attempts: i64,
    error: &str,
    transient: bool,
) -> Result<(), StoreError> {
    let now = ctx.clock.now();
    if transient && attempts < MAX_SEND_ATTEMPTS {
        let wait = Duration::from_secs(
            2u64.saturating_pow(u32::try_from(attempts).unwrap_or(u32::MAX))
                .min(900),
        );
        let retry_at = now + chrono::Duration::from_std(wait).unwrap_or_default();
        tracing::info!(email = id, error, attempts, "send failed; will retry");
        ctx.metrics.send("retry");
        ctx.store.mark_send_retry(id, error, retry_at).await
    } else {
        tracing::warn!(email = id, error, attempts, "send failed for good");
        ctx.metrics.send("failed");
        ctx.store.mark_send_failed(id, error).await
    }
}
