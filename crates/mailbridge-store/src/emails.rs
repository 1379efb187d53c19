//! [`EmailRecord`]: messages synchronized from (and later sent through) mailboxes, stored with
//! their raw bytes, attachments and the folder's sync position in one transaction — so a crash
//! at any point loses nothing and, replayed, duplicates nothing.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use mailbridge_core::message::{MessageFlags, ParsedAttachment, ParsedEmail, Party};
use mailbridge_core::{EventType, MailboxId, UserId, parse};

use crate::sql::{SqlConn, Stmt};

use crate::events::{EmailSummary, append, email_event};
use crate::folders::{FolderPosition, PassProgress};
use crate::inserts::BatchInsert;
use crate::nodes::{Fence, check_fence};
pub use crate::raw::RawMessage;
use crate::{Backend, Result, Store, StoreError, raw, time_from_ms};

/// A message to store, as read from the server.
#[derive(Debug, Clone)]
pub struct NewEmail {
    /// The message's identity on its server (see the `emails.remote_key` column).
    pub remote_key: String,
    pub folder: Option<String>,
    pub uid: Option<u32>,
    pub gmail_labels: Vec<String>,
    /// Gmail's conversation id (X-GM-THRID).
    pub gmail_thread_id: Option<u64>,
    /// Outgoing: the token in its subject (see `mailbridge_core::tracking`).
    pub tracking_token: Option<String>,
    pub parsed: ParsedEmail,
    pub raw: RawMessage,
    /// Set when `raw` is only the message's header, the message being larger than the
    /// service takes whole: its size on the server.
    pub truncated_from: Option<u64>,
    /// The message's flags on the server (`None`: the protocol has none, POP3).
    pub flags: Option<MessageFlags>,
    /// Found in the mailbox's sent mail (its Sent folder; on Gmail, labelled `\Sent`): the
    /// owner sent it from their own client, so it is stored `outgoing`, with no send state —
    /// or, when Mailbridge sent it (the same Message-ID), it joins that record.
    pub sent_by_owner: bool,
    /// IMAP without a stable id: (key prefix of the folder, key prefix of its current
    /// UIDVALIDITY). A record of this folder under an older UIDVALIDITY with the same bytes is
    /// this message renumbered: it is re-keyed instead of stored again.
    pub renumbered_from: Option<(String, String)>,
}

/// One step of a sync, committed at once: the messages kept, and how far the server was read.
#[derive(Debug, Default)]
pub struct SyncBatch {
    pub emails: Vec<NewEmail>,
    pub position: Option<FolderPosition>,
    /// POP3: the UIDLs processed in this step, kept or not.
    pub pop3_seen: Vec<String>,
    /// The lease the writer holds; the batch commits only while it still does.
    pub fence: Option<Fence>,
    /// With `position`: how far the pass over that folder is.
    pub progress: Option<PassProgress>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AttachmentInfo {
    pub id: String,
    pub filename: Option<String>,
    pub content_type: String,
    pub size: i64,
}

#[derive(Debug, Clone)]
pub struct EmailRecord {
    pub id: String,
    pub mailbox_id: MailboxId,
    pub mailbox_owner: UserId,
    pub direction: String,
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub subject: Option<String>,
    pub from: Option<Party>,
    pub to: Vec<Party>,
    pub cc: Vec<Party>,
    /// Outgoing: the blind copies (never in the message itself).
    pub bcc: Vec<Party>,
    pub sent_at: Option<DateTime<Utc>>,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    /// The message's size: of the raw bytes, or on the server when `truncated`.
    pub size: i64,
    /// Only the header was stored: the message is larger than `max_message_bytes`.
    pub truncated: bool,
    pub parse_error: Option<String>,
    pub conversation_id: String,
    pub folder: Option<String>,
    pub uid: Option<i64>,
    pub gmail_labels: Vec<String>,
    pub gmail_thread_id: Option<String>,
    /// Outgoing: the token in its subject that replies carry back.
    pub tracking_token: Option<String>,
    /// Incoming: the node that stored it.
    pub stored_by: Option<String>,
    pub attachments: Vec<AttachmentInfo>,
    pub created_at: DateTime<Utc>,
    /// Outgoing: `pending_send`, `sending`, `sent` or `failed`.
    pub status: Option<String>,
    pub send_attempts: i64,
    /// Outgoing: the server's last words about it.
    pub send_reply: Option<String>,
    /// Outgoing: when the server accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// The message's flags on its server, as last synchronized (`None`: not known — POP3, or
    /// sent from here and not yet seen in a folder).
    pub flags: Option<MessageFlags>,
    /// When the server stopped having the message (expunged; on Gmail, in no synchronized
    /// folder any more). The record stays.
    pub deleted_on_server_at: Option<DateTime<Utc>>,
}

/// Which emails to list.
#[derive(Debug, Default, Clone)]
pub struct EmailFilter {
    /// Only the mailboxes of this user.
    pub owner: Option<UserId>,
    pub mailbox: Option<MailboxId>,
    pub direction: Option<String>,
    pub conversation: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct EmailRow {
    id: String,
    mailbox_id: String,
    owner_user_id: String,
    direction: String,
    message_id: Option<String>,
    in_reply_to: Option<String>,
    references_ids: Option<String>,
    subject: Option<String>,
    from_address: Option<String>,
    from_name: Option<String>,
    to_json: String,
    cc_json: String,
    bcc_json: Option<String>,
    sent_at: Option<i64>,
    /// The bodies are read from here (they are not stored apart).
    raw: Vec<u8>,
    raw_zstd: i64,
    size: i64,
    truncated: i64,
    parse_error: Option<String>,
    conversation_id: String,
    folder: Option<String>,
    uid: Option<i64>,
    gmail_labels: Option<String>,
    gmail_thread_id: Option<String>,
    tracking_token: Option<String>,
    stored_by: Option<String>,
    created_at: i64,
    status: Option<String>,
    send_attempts: i64,
    send_reply: Option<String>,
    delivered_at: Option<i64>,
    flags: Option<String>,
    deleted_on_server_at: Option<i64>,
}

const EMAIL_SELECT: &str = "SELECT e.id, e.mailbox_id, m.owner_user_id, e.direction, e.message_id, \
     e.in_reply_to, e.references_ids, e.subject, e.from_address, e.from_name, e.to_json, e.cc_json, \
     e.bcc_json, e.sent_at, e.raw, e.raw_zstd, e.size, e.truncated, e.parse_error, e.conversation_id, e.folder, e.uid, \
     e.gmail_labels, e.gmail_thread_id, e.tracking_token, e.stored_by, e.created_at, e.status, e.send_attempts, e.send_reply, e.delivered_at, \
     e.flags, e.deleted_on_server_at \
     FROM emails e JOIN mailboxes m ON m.id = e.mailbox_id";

fn words(s: Option<String>) -> Vec<String> {
    s.map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

impl EmailRow {
    fn into_record(self, attachments: Vec<AttachmentInfo>) -> Result<EmailRecord> {
        let bad = |e: &dyn std::fmt::Display| StoreError::corrupt(format!("email {}", self.id), e);
        // A truncated record holds the message's header alone: it has no bodies to read.
        let (text_body, html_body) = if self.truncated != 0 {
            (None, None)
        } else {
            parse::bodies(&raw::original(self.raw, self.raw_zstd, &self.id)?)
        };
        Ok(EmailRecord {
            mailbox_id: self.mailbox_id.parse().map_err(|e| bad(&e))?,
            mailbox_owner: self.owner_user_id.parse().map_err(|e| bad(&e))?,
            to: serde_json::from_str(&self.to_json).map_err(|e| bad(&e))?,
            cc: serde_json::from_str(&self.cc_json).map_err(|e| bad(&e))?,
            bcc: match &self.bcc_json {
                Some(json) => serde_json::from_str(json).map_err(|e| bad(&e))?,
                None => Vec::new(),
            },
            from: self.from_address.map(|address| Party {
                address,
                name: self.from_name,
            }),
            in_reply_to: words(self.in_reply_to),
            references: words(self.references_ids),
            gmail_labels: self
                .gmail_labels
                .map(|l| serde_json::from_str(&l).unwrap_or_default())
                .unwrap_or_default(),
            sent_at: self.sent_at.map(time_from_ms),
            created_at: time_from_ms(self.created_at),
            id: self.id,
            direction: self.direction,
            message_id: self.message_id,
            subject: self.subject,
            text_body,
            html_body,
            size: self.size,
            truncated: self.truncated != 0,
            parse_error: self.parse_error,
            conversation_id: self.conversation_id,
            folder: self.folder,
            uid: self.uid,
            gmail_thread_id: self.gmail_thread_id,
            tracking_token: self.tracking_token,
            stored_by: self.stored_by,
            attachments,
            status: self.status,
            send_attempts: self.send_attempts,
            send_reply: self.send_reply,
            delivered_at: self.delivered_at.map(time_from_ms),
            flags: self.flags.as_deref().map(MessageFlags::from_stored),
            deleted_on_server_at: self.deleted_on_server_at.map(time_from_ms),
        })
    }
}

impl Store {
    /// Commits one sync step: the emails (each at most once per mailbox, by server identity
    /// and by content), their attachments, the folder position and the POP3 UIDLs seen, and
    /// the mailbox's counters. Returns how many emails were new.
    pub async fn save_sync_batch(&self, mailbox: MailboxId, batch: SyncBatch) -> Result<usize> {
        let now = self.now_ms();
        if let Some(native) = &self.native {
            return self
                .save_sync_batch_natively(native, mailbox, batch, now)
                .await;
        }
        let mut tx = self.begin_batch_write(mailbox).await?;
        let stored = write_sync_batch(&mut tx, self.backend, mailbox, batch, now).await?;
        tx.commit().await?;
        crate::events::signal(&self.events_signal);
        Ok(stored)
    }

    /// SQLite: [`Store::save_sync_batch`] on the native writer's thread (see `native`), in
    /// this process's turn to write — held until the transaction ends, even if the caller is
    /// gone by then.
    async fn save_sync_batch_natively(
        &self,
        native: &std::sync::Arc<crate::native::NativeWriter>,
        mailbox: MailboxId,
        batch: SyncBatch,
        now: i64,
    ) -> Result<usize> {
        let turn = self.sqlite_turn(crate::WriteKind::Batch(mailbox)).await?;
        let events = std::sync::Arc::clone(&self.events_signal);
        let runtime = tokio::runtime::Handle::current();
        native
            .run(move |slot| {
                // In the runtime's context, as the gate's turn reads the runtime's clock when
                // it is let go (a paused clock, in tests).
                let _context = runtime.enter();
                let _turn = turn;
                let stored = slot.transaction(|tx| {
                    // Its statements run at once: the futures are ready when first polled. They
                    // must stay so: a job that waited on the runtime could deadlock the store's
                    // drop, which joins this thread (see `native`).
                    runtime.block_on(write_sync_batch(tx, Backend::Sqlite, mailbox, batch, now))
                })?;
                crate::events::signal(&events);
                Ok(stored)
            })
            .await
    }

    /// The POP3 UIDLs already processed for a mailbox.
    pub async fn pop3_seen(&self, mailbox: MailboxId) -> Result<HashSet<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT uidl FROM pop3_seen WHERE mailbox_id = $1")
                .bind(mailbox.to_string())
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(u,)| u).collect())
    }

    /// Whether a message answers mail sent through Mailbridge: one of the message ids it
    /// refers to, or the tracking token in its subject, belongs to outgoing mail. One query
    /// (one per 500 ids).
    pub async fn is_reply_to_sent_mail(
        &self,
        ids: &[String],
        subject: Option<&str>,
    ) -> Result<bool> {
        let token = subject.and_then(mailbridge_core::tracking::find_token);
        if token.is_none() && ids.is_empty() {
            return Ok(false);
        }
        let no_ids: [String; 0] = [];
        let chunks: Vec<&[String]> = if ids.is_empty() {
            vec![&no_ids]
        } else {
            ids.chunks(IN_LIST).collect()
        };
        for chunk in chunks {
            let mut q =
                sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(reply_to_sent_sql(chunk.len())))
                    .bind(token.clone());
            for id in chunk {
                q = q.bind(id.clone());
            }
            if q.fetch_one(&self.pool).await?.0 > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether any of these addresses is a contact the application upserted. One query (one
    /// per 500 addresses).
    pub async fn any_known_contact(&self, addresses: &[String]) -> Result<bool> {
        for chunk in addresses.chunks(IN_LIST) {
            let list: Vec<String> = (1..=chunk.len()).map(|k| format!("${k}")).collect();
            let mut q = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM contacts WHERE email IN ({})",
                list.join(", ")
            )));
            for a in chunk {
                q = q.bind(a.to_ascii_lowercase());
            }
            if q.fetch_one(&self.pool).await?.0 > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A mailbox's newest emails, newest first.
    pub async fn recent_emails(&self, mailbox: MailboxId, limit: i64) -> Result<Vec<EmailRecord>> {
        let rows: Vec<EmailRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{EMAIL_SELECT} WHERE e.mailbox_id = $1 ORDER BY e.id DESC LIMIT $2"
        )))
        .bind(mailbox.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        self.records(rows).await
    }

    /// Rows with their attachments (looked up for all rows at once), as records.
    async fn records(&self, rows: Vec<EmailRow>) -> Result<Vec<EmailRecord>> {
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut attachments = self.attachments_of(&ids).await?;
        rows.into_iter()
            .map(|row| {
                let own = attachments.remove(&row.id).unwrap_or_default();
                row.into_record(own)
            })
            .collect()
    }

    /// Emails matching `filter`, oldest first, after the cursor (an email id), at most `limit`.
    pub async fn list_emails(
        &self,
        filter: &EmailFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EmailRecord>> {
        let rows: Vec<EmailRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{EMAIL_SELECT} WHERE ($1 IS NULL OR m.owner_user_id = $1) AND ($2 IS NULL OR e.mailbox_id = $2) \
             AND ($3 IS NULL OR e.direction = $3) AND ($4 IS NULL OR e.conversation_id = $4) \
             AND ($5 IS NULL OR e.created_at >= $5) AND e.id > $6 ORDER BY e.id LIMIT $7"
        )))
        .bind(filter.owner.map(|u| u.to_string()))
        .bind(filter.mailbox.map(|m| m.to_string()))
        .bind(filter.direction.clone())
        .bind(filter.conversation.clone())
        .bind(filter.since.map(|s| s.timestamp_millis()))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        self.records(rows).await
    }

    pub async fn get_email(&self, id: &str) -> Result<EmailRecord> {
        let row: Option<EmailRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{EMAIL_SELECT} WHERE e.id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            kind: "email",
            id: id.to_owned(),
        })?;
        let mut attachments = self.attachments_of(std::slice::from_ref(&row.id)).await?;
        let own = attachments.remove(&row.id).unwrap_or_default();
        row.into_record(own)
    }

    /// The original RFC 5322 bytes of an email.
    pub async fn email_raw(&self, id: &str) -> Result<Vec<u8>> {
        let row: Option<(Vec<u8>, i64)> =
            sqlx::query_as("SELECT raw, raw_zstd FROM emails WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let (stored, zstd) = row.ok_or_else(|| StoreError::NotFound {
            kind: "email",
            id: id.to_owned(),
        })?;
        raw::original(stored, zstd, id)
    }

    /// An attachment of email `email_id`, with its decoded bytes, read from the raw message
    /// (the `n`-th attachment record of an email, in id order, is the message's `n`-th).
    pub async fn attachment_content(
        &self,
        email_id: &str,
        attachment_id: &str,
    ) -> Result<(AttachmentInfo, Vec<u8>)> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: String,
            filename: Option<String>,
            content_type: String,
            size: i64,
            position: i64,
            raw: Vec<u8>,
            raw_zstd: i64,
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT a.id, a.filename, a.content_type, a.size, \
             (SELECT COUNT(*) FROM attachments b WHERE b.email_id = a.email_id AND b.id < a.id) AS position, \
             e.raw, e.raw_zstd FROM attachments a JOIN emails e ON e.id = a.email_id \
             WHERE a.id = $1 AND a.email_id = $2",
        )
        .bind(attachment_id)
        .bind(email_id)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            kind: "attachment",
            id: attachment_id.to_owned(),
        })?;
        let info = AttachmentInfo {
            id: row.id,
            filename: row.filename,
            content_type: row.content_type,
            size: row.size,
        };
        let position = usize::try_from(row.position).unwrap_or(usize::MAX);
        let part = parse::attachment(&raw::original(row.raw, row.raw_zstd, email_id)?, position);
        // The record was made from this very message, so its part is where the record says,
        // with the same type and size; anything else is a damaged row, said so.
        if let Some((_, content)) = part.filter(|(a, _)| {
            a.content_type == info.content_type
                && i64::try_from(a.size).is_ok_and(|n| n == info.size)
        }) {
            return Ok((info, content));
        }
        Err(StoreError::corrupt(
            format!("attachment {} of email {email_id}", info.id),
            "its part is no longer found in the raw message",
        ))
    }

    /// How many emails a mailbox holds.
    pub async fn count_emails(&self, mailbox: MailboxId) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM emails WHERE mailbox_id = $1")
            .bind(mailbox.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// The attachments of these emails, by email id, each list in id order.
    async fn attachments_of(
        &self,
        emails: &[String],
    ) -> Result<HashMap<String, Vec<AttachmentInfo>>> {
        let mut by_email: HashMap<String, Vec<AttachmentInfo>> = HashMap::new();
        for chunk in emails.chunks(IN_LIST) {
            let list: Vec<String> = (1..=chunk.len()).map(|k| format!("${k}")).collect();
            let mut q = sqlx::query_as::<_, (String, String, Option<String>, String, i64)>(
                sqlx::AssertSqlSafe(format!(
                    "SELECT email_id, id, filename, content_type, size FROM attachments \
                     WHERE email_id IN ({}) ORDER BY id",
                    list.join(", ")
                )),
            );
            for id in chunk {
                q = q.bind(id.clone());
            }
            for (email, id, filename, content_type, size) in q.fetch_all(&self.pool).await? {
                by_email.entry(email).or_default().push(AttachmentInfo {
                    id,
                    filename,
                    content_type,
                    size,
                });
            }
        }
        Ok(by_email)
    }
}

/// [`Store::save_sync_batch`]'s statements, in `tx`: everything but the transaction's begin and
/// its commit.
async fn write_sync_batch(
    tx: &mut impl SqlConn,
    backend: Backend,
    mailbox: MailboxId,
    mut batch: SyncBatch,
    now: i64,
) -> Result<usize> {
    let mid = mailbox.to_string();
    if let Some(fence) = &batch.fence {
        check_fence(tx, backend, &mid, fence, now).await?;
    }
    let (mut known, moved) = adopt_renumbered(tx, backend, &mid, &batch.emails).await?;
    join_own_sends(tx, backend, &mid, &batch.emails, &mut known).await?;
    let inserted = insert_emails(
        tx,
        backend,
        &mid,
        &mut batch.emails,
        now,
        Origin::Synced {
            known: &known,
            stored_by: batch.fence.as_ref().map(|f| f.node.as_str()),
        },
    )
    .await?;
    let mut events = Vec::new();
    for id in &moved {
        events.extend(email_event(tx, EventType::EmailUpdated, id).await?);
    }
    let (owner, ended_failures) = record_pass(tx, &mid, inserted.len(), now).await?;
    events.extend(if inserted.is_empty() {
        Vec::new()
    } else {
        let owner = owner.ok_or_else(|| StoreError::NotFound {
            kind: "mailbox",
            id: mid.clone(),
        })?;
        let owner: UserId = owner
            .parse()
            .map_err(|e| StoreError::corrupt("mailbox owner", e))?;
        inserted
            .iter()
            .map(|(i, id, conversation)| {
                let p = &batch.emails[*i].parsed;
                EmailSummary {
                    id,
                    mailbox_id: &mid,
                    direction: if batch.emails[*i].sent_by_owner {
                        "outgoing"
                    } else {
                        "incoming"
                    },
                    message_id: p.message_id.as_deref(),
                    conversation_id: conversation,
                    subject: p.subject.as_deref(),
                    from: p.from.as_ref(),
                    to: &p.to,
                    status: None,
                    send_reply: None,
                }
                .event(EventType::EmailReceived, Some(owner))
            })
            .collect::<Result<Vec<_>>>()?
    });
    if let Some(p) = &batch.position {
        crate::folders::save_position(tx, &mid, p, batch.progress, now).await?;
    }
    for uidl in &batch.pop3_seen {
        tx.execute(
            Stmt::new(
                "INSERT INTO pop3_seen (mailbox_id, uidl) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&mid)
            .bind(uidl),
        )
        .await?;
    }
    if ended_failures {
        crate::health::resolve_outage_if_over(tx, &mid, now).await?;
    }
    append(tx, backend, now, &events).await?;
    Ok(inserted.len())
}

/// Records a sync pass that stored `stored` emails on the mailbox (and ends any run of
/// failures). Returns whose mail it is (for the events; `None` if the mailbox is gone) and
/// whether the pass ended a run of failures. One statement — a batch's statements are round
/// trips on PostgreSQL — unless it does end one: a mailbox the first `UPDATE` leaves alone
/// is gone or failing (only the worker holding the lease writes `failing_since`:
/// `record_sync_error` is fenced as the batch is), and the second tells which.
async fn record_pass(
    tx: &mut impl SqlConn,
    mailbox: &str,
    stored: usize,
    now: i64,
) -> Result<(Option<String>, bool)> {
    // The two statements as constant text: built with `format!`, every batch made them anew.
    macro_rules! pass_update {
        ($condition:literal) => {
            concat!(
                "UPDATE mailboxes SET items_processed = items_processed + $1, last_sync_at = $2, \
                 last_sync_error = NULL, paused_until = NULL, failing_since = NULL \
                 WHERE id = $3",
                $condition,
                " RETURNING owner_user_id"
            )
        };
    }
    let update = |sql: &'static str| {
        Stmt::new(sql)
            .bind(i64::try_from(stored).unwrap_or(i64::MAX))
            .bind(now)
            .bind(mailbox)
    };
    if let Some((owner,)) = tx
        .fetch_optional::<(String,)>(update(pass_update!(" AND failing_since IS NULL")))
        .await?
    {
        return Ok((Some(owner), false));
    }
    let owner = tx
        .fetch_optional::<(String,)>(update(pass_update!("")))
        .await?;
    let ended_failures = owner.is_some();
    Ok((owner.map(|(o,)| o), ended_failures))
}

// Queries that must find their (partial) index; `tests` checks their plans on SQLite.

/// Whether outgoing mail has the token `$1` or one of the `ids` message ids (`$2`…).
fn reply_to_sent_sql(ids: usize) -> String {
    let by_id = if ids == 0 {
        String::new()
    } else {
        let list: Vec<String> = (0..ids).map(|k| format!("${}", k + 2)).collect();
        format!(" OR message_id IN ({})", list.join(", "))
    };
    format!(
        "SELECT COUNT(*) FROM emails WHERE direction = 'outgoing' AND (tracking_token = $1{by_id})"
    )
}

/// The `select` columns of the stored emails whose `column` is one of `keys` values (`$1`…,
/// or `$2`… after the mailbox `$1` when `scoped`), through the index that starts with
/// `column` (or with the mailbox, then `column`).
fn lookup_sql(backend: Backend, select: &str, column: &str, scoped: bool, keys: usize) -> String {
    let first = if scoped { 2 } else { 1 };
    let list: Vec<String> = (0..keys).map(|k| format!("${}", k + first)).collect();
    let scope = if scoped { "mailbox_id = $1 AND " } else { "" };
    match backend {
        Backend::Sqlite => format!(
            "SELECT {select} FROM emails WHERE {scope}{column} IN ({})",
            list.join(", ")
        ),
        // One index lookup per key. As an IN list, PostgreSQL's plans on a table not yet
        // analyzed (a new database's first sync) read every row of the mailbox (or of the
        // table) and compared it with every key: the renumbering lookup's cached generic plan
        // took 40–65 ms a batch at 5,500 rows and grew with the mailbox (auto_explain under
        // `bench/first-sync`); as a join it hashed them all instead. A lateral subquery (kept
        // apart by OFFSET 0) can only be a lookup per key, whatever the statistics say.
        Backend::Postgres => format!(
            "SELECT e.* FROM (VALUES ({})) AS wanted (key) CROSS JOIN LATERAL \
             (SELECT {select} FROM emails WHERE {scope}{column} = wanted.key OFFSET 0) e",
            list.join("), (")
        ),
    }
}

/// The values an `IN (…)` list of `n` keys is written with, so that such statements come in a
/// few sizes only — the count rounded up to a power of two from 8 to 256, or [`IN_LIST`] above
/// that (a longer list as it is) — the rest bound as NULL, which matches no row
/// ([`padded_keys`]): each size is one prepared statement with its cached plan. A statement
/// per count would be parsed and planned anew by almost every batch (their related ids come in
/// every count) and, up to sqlx's 100 a connection, would push the batch's INSERTs out of the
/// cache.
pub(crate) fn in_list_size(n: usize) -> usize {
    n.next_power_of_two().clamp(8, IN_LIST).max(n)
}

/// `keys`, then NULLs up to [`in_list_size`]: what an `IN (…)` list of them binds.
pub(crate) fn padded_keys<K: AsRef<str>>(keys: &[K]) -> impl Iterator<Item = Option<&str>> {
    let padding = in_list_size(keys.len()) - keys.len();
    keys.iter()
        .map(|k| Some(k.as_ref()))
        .chain(std::iter::repeat_n(None, padding))
}

/// [`lookup_sql`] for up to [`IN_LIST`] `keys` (in `mailbox` only, when given), bound, in
/// [`in_list_size`]'s sizes.
fn lookup_query(
    backend: Backend,
    select: &str,
    column: &str,
    mailbox: Option<&str>,
    keys: &[impl AsRef<str>],
) -> Stmt {
    debug_assert!(keys.len() <= IN_LIST, "{} keys in one lookup", keys.len());
    let size = in_list_size(keys.len());
    let q = Stmt::made(lookup_sql(backend, select, column, mailbox.is_some(), size));
    let q = match mailbox {
        Some(m) => q.bind(m),
        None => q,
    };
    padded_keys(keys).fold(q, |q, key| q.bind(key))
}

/// A batch's emails; each stored one's id comes back (one already there is left alone).
pub(crate) static INSERT_EMAILS: BatchInsert = BatchInsert::new(
    "emails (id, mailbox_id, direction, remote_key, content_sha256, folder, uid, \
     gmail_labels, message_id, in_reply_to, references_ids, subject, from_address, from_name, \
     to_json, cc_json, sent_at, raw, raw_zstd, size, parse_error, conversation_id, \
     created_at, status, idempotency_key, next_attempt_at, gmail_thread_id, tracking_token, \
     stored_by, truncated, flags)",
    " ON CONFLICT DO NOTHING RETURNING id",
);
/// The stored emails' attachments (what they are; their bytes stay in the raw message).
pub(crate) static INSERT_ATTACHMENTS: BatchInsert = BatchInsert::new(
    "attachments (id, email_id, filename, content_type, size)",
    "",
);
/// Values per `IN (…)` list.
pub(crate) const IN_LIST: usize = 500;

/// Inserts emails unless the mailbox already has them (same server identity; a renumbered
/// copy, see [`NewEmail::renumbered_from`]; for outgoing mail, the same idempotency key);
/// joins each to the conversation of the message it answers. A batch costs a few statements, not a few per email.
/// Returns the new ones: (index into `emails`, record id, conversation id), in input order.
/// Where emails to insert come from.
pub(crate) enum Origin<'a> {
    /// Mail to send, queued with this idempotency key.
    Queued { idempotency_key: Option<&'a str> },
    /// Mail read from the server: `known[i]` when `emails[i]` is already stored (replayed,
    /// renumbered, moved, or sent from here); the node that read it.
    Synced {
        known: &'a [bool],
        stored_by: Option<&'a str>,
    },
}

/// Adds `emails` to `mailbox`. The caller's transaction must hold the mailbox's row — on
/// PostgreSQL no foreign key ties emails to their mailbox (migration 0029: checked row by row,
/// it took an eighth of a first sync's INSERT) — so that a mailbox deleted meanwhile keeps no
/// email: [`Store::queue_outgoing`] locks the row (`FOR UPDATE`) before it adds its email, and
/// a sync batch's `record_pass` updates the row, and fails the batch (its emails with it) when
/// the mailbox is gone. Deleting the mailbox deletes its emails (a trigger on PostgreSQL,
/// migration 0030) once such a transaction has committed.
pub(crate) async fn insert_emails(
    tx: &mut impl SqlConn,
    backend: Backend,
    mailbox: &str,
    emails: &mut [NewEmail],
    now: i64,
    origin: Origin<'_>,
) -> Result<Vec<(usize, String, String)>> {
    let (outgoing, stored_by, known) = match origin {
        Origin::Queued { idempotency_key } => (Some(idempotency_key), None, &[][..]),
        Origin::Synced { known, stored_by } => (None, stored_by, known),
    };
    let skip = |i: usize| known.get(i).copied().unwrap_or(false);
    let rows: Vec<usize> = (0..emails.len()).filter(|i| !skip(*i)).collect();
    let conversations = conversations(tx, backend, mailbox, emails, &rows).await?;
    let ids: Vec<String> = rows
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let direction = |email: &NewEmail| {
        if outgoing.is_some() || email.sent_by_owner {
            "outgoing"
        } else {
            "incoming"
        }
    };
    let json =
        |parties: &[Party]| serde_json::to_string(parties).unwrap_or_else(|_| "[]".to_owned());
    // Each row: its place among `rows` (for its id and conversation) and its email's.
    let numbered: Vec<(usize, usize)> = rows.iter().copied().enumerate().collect();
    let returned: Vec<(String,)> = INSERT_EMAILS
        .returning(tx, backend, &numbered, |q, row| {
            // The original size, read before the bytes are moved out into the row.
            let size = row.map(|&(_, i)| {
                let email = &emails[i];
                i64::try_from(email.truncated_from.unwrap_or(email.raw.len() as u64))
                    .unwrap_or(i64::MAX)
            });
            let (raw, raw_zstd) = row.map(|&(_, i)| emails[i].raw.take_stored()).unzip();
            let row = row.map(|&(n, i)| (n, &emails[i], &emails[i].parsed));
            q.bind(row.map(|(n, ..)| ids[n].clone()))
                .bind(row.map(|_| mailbox.to_owned()))
                .bind(row.map(|(_, email, _)| direction(email)))
                .bind(row.map(|(_, email, _)| email.remote_key.clone()))
                .bind(row.map(|(_, email, _)| email.raw.sha256.clone()))
                .bind(row.and_then(|(_, email, _)| email.folder.clone()))
                .bind(row.and_then(|(_, email, _)| email.uid.map(i64::from)))
                .bind(row.and_then(|(_, email, _)| {
                    (!email.gmail_labels.is_empty())
                        .then(|| serde_json::to_string(&email.gmail_labels).unwrap_or_default())
                }))
                .bind(row.and_then(|(.., p)| p.message_id.clone()))
                .bind(row.and_then(|(.., p)| {
                    (!p.in_reply_to.is_empty()).then(|| p.in_reply_to.join(" "))
                }))
                .bind(
                    row.and_then(|(.., p)| {
                        (!p.references.is_empty()).then(|| p.references.join(" "))
                    }),
                )
                .bind(row.and_then(|(.., p)| p.subject.clone()))
                .bind(row.and_then(|(.., p)| p.from.as_ref().map(|f| f.address.clone())))
                .bind(row.and_then(|(.., p)| p.from.as_ref().and_then(|f| f.name.clone())))
                .bind(row.map(|(.., p)| json(&p.to)))
                .bind(row.map(|(.., p)| json(&p.cc)))
                .bind(row.and_then(|(.., p)| p.date.map(|d| d.timestamp_millis())))
                .bind(raw)
                .bind(raw_zstd)
                .bind(size)
                .bind(row.and_then(|(.., p)| p.parse_error.clone()))
                .bind(row.map(|(n, ..)| conversations[n].clone()))
                .bind(row.map(|_| now))
                .bind(row.and(outgoing).map(|_| "pending_send"))
                .bind(row.and(outgoing).flatten().map(str::to_owned))
                .bind(row.and(outgoing).map(|_| now))
                .bind(row.and_then(|(_, email, _)| email.gmail_thread_id.map(|t| t.to_string())))
                .bind(row.and_then(|(_, email, _)| email.tracking_token.clone()))
                .bind(row.and(stored_by).map(str::to_owned))
                .bind(row.map(|(_, email, _)| i64::from(email.truncated_from.is_some())))
                .bind(row.and_then(|(_, email, _)| email.flags.map(MessageFlags::to_imap)))
        })
        .await?;
    let inserted: HashSet<String> = returned.into_iter().map(|(id,)| id).collect();
    // Each stored email's attachments: what they are, in the order the message lists them
    // (their ids grow in that order); the contents stay in the raw message, read from there
    // when downloaded.
    let attachments: Vec<(&String, &ParsedAttachment)> = rows
        .iter()
        .enumerate()
        .filter(|(n, _)| inserted.contains(&ids[*n]))
        .flat_map(|(n, &i)| {
            let id = &ids[n];
            emails[i].parsed.attachments.iter().map(move |a| (id, a))
        })
        .collect();
    INSERT_ATTACHMENTS
        .run(tx, backend, &attachments, |q, attachment| {
            q.bind(attachment.map(|_| uuid::Uuid::now_v7().to_string()))
                .bind(attachment.map(|(email_id, _)| (*email_id).clone()))
                .bind(attachment.and_then(|(_, a)| a.filename.clone()))
                .bind(attachment.map(|(_, a)| a.content_type.clone()))
                .bind(attachment.map(|(_, a)| i64::try_from(a.size).unwrap_or(i64::MAX)))
        })
        .await?;
    Ok(rows
        .iter()
        .enumerate()
        .filter(|(n, _)| inserted.contains(&ids[*n]))
        .map(|(n, &i)| (i, ids[n].clone(), conversations[n].clone()))
        .collect())
}

/// What [`join_own_sends`] reads of the emails with a Message-ID it looks for.
const OWN_SENDS_SELECT: &str = "message_id, id, mailbox_id, direction, status, remote_key";
type OwnSendRow = (String, String, String, String, Option<String>, String);

/// Sent mail found on the server that Mailbridge itself sent (an outgoing record with the
/// same Message-ID, still keyed `out/…`): that record takes the message's place on the server
/// (its key, folder, UID, flags) instead of a second record being made.
async fn join_own_sends(
    tx: &mut impl SqlConn,
    backend: Backend,
    mailbox: &str,
    emails: &[NewEmail],
    skip: &mut [bool],
) -> Result<()> {
    let wanted = distinct(
        emails
            .iter()
            .zip(skip.iter())
            .filter(|(e, skipped)| e.sent_by_owner && !**skipped)
            .filter_map(|(e, _)| e.parsed.message_id.clone()),
    );
    if wanted.is_empty() {
        return Ok(());
    }
    // The emails with those ids, by the Message-ID index alone (scoped to the mailbox in SQL,
    // both planners read the whole mailbox instead: `tests`); of them, this mailbox's outgoing
    // records still keyed as queued here.
    let mut ours: HashMap<String, String> = HashMap::new();
    for chunk in wanted.chunks(IN_LIST) {
        let q = lookup_query(backend, OWN_SENDS_SELECT, "message_id", None, chunk);
        ours.extend(tx.fetch_all::<OwnSendRow>(q).await?.into_iter().filter_map(
            |(message_id, id, of, direction, status, key)| {
                (of == mailbox
                    && direction == "outgoing"
                    && status.is_some()
                    && key.starts_with("out/"))
                .then_some((message_id, id))
            },
        ));
    }
    for (i, email) in emails.iter().enumerate() {
        if skip[i] || !email.sent_by_owner {
            continue;
        }
        let Some(id) = email
            .parsed
            .message_id
            .as_ref()
            .and_then(|m| ours.remove(m))
        else {
            continue;
        };
        tx.execute(
            Stmt::new(
                "UPDATE emails SET remote_key = $1, folder = $2, uid = $3, flags = $4, \
                 gmail_labels = COALESCE($5, gmail_labels) WHERE id = $6",
            )
            .bind(&email.remote_key)
            .bind(email.folder.as_deref())
            .bind(email.uid.map(i64::from))
            .bind(email.flags.map(MessageFlags::to_imap))
            .bind(
                (!email.gmail_labels.is_empty())
                    .then(|| serde_json::to_string(&email.gmail_labels).unwrap_or_default()),
            )
            .bind(&id),
        )
        .await?;
        skip[i] = true;
    }
    Ok(())
}

/// Which emails are already stored: a replay of a committed batch (same key); a message
/// renumbered by a UIDVALIDITY change, whose older record of the folder (same bytes) is
/// re-keyed to it — one record per message read, so identical deliveries stay distinct; or a
/// message moved from another folder (same bytes there), whose record moves with it (it
/// returns those, for their `email.updated`). A copy kept in both folders is one record too,
/// following the copy read last.
async fn adopt_renumbered(
    tx: &mut impl SqlConn,
    backend: Backend,
    mailbox: &str,
    emails: &[NewEmail],
) -> Result<(Vec<bool>, Vec<String>)> {
    let mut skip = vec![false; emails.len()];
    let mut moved = Vec::new();
    let wanted: Vec<&String> = emails
        .iter()
        .filter(|e| e.renumbered_from.is_some())
        .map(|e| &e.raw.sha256)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if wanted.is_empty() {
        return Ok((skip, moved));
    }
    // By the content index alone (an equality every planner uses); the key test is done here.
    let mut candidates: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for chunk in wanted.chunks(IN_LIST) {
        let q = lookup_query(
            backend,
            "id, remote_key, content_sha256",
            "content_sha256",
            Some(mailbox),
            chunk,
        );
        for (id, key, hash) in tx.fetch_all::<(String, String, String)>(q).await? {
            candidates.entry(hash).or_default().push((id, key));
        }
    }
    let mut used: HashSet<String> = HashSet::new();
    for (i, email) in emails.iter().enumerate() {
        let Some((folder_prefix, epoch_prefix)) = &email.renumbered_from else {
            continue;
        };
        let mut list = candidates
            .get(&email.raw.sha256)
            .cloned()
            .unwrap_or_default();
        list.sort();
        if list.iter().any(|(_, key)| *key == email.remote_key) {
            skip[i] = true;
            continue;
        }
        let renumbered = list.iter().find(|(id, key)| {
            key.starts_with(folder_prefix.as_str())
                && !key.starts_with(epoch_prefix.as_str())
                && !used.contains(id)
        });
        // Moved from another folder (the same bytes there): the record follows it.
        let elsewhere = || {
            list.iter().find(|(id, key)| {
                key.starts_with("imap/")
                    && !key.starts_with(folder_prefix.as_str())
                    && !used.contains(id)
            })
        };
        let (old, is_move) = match renumbered {
            Some(old) => (Some(old), false),
            None => (elsewhere(), true),
        };
        if let Some((id, _)) = old {
            tx.execute(
                Stmt::new(
                    "UPDATE emails SET remote_key = $1, uid = $2, folder = $3, \
                     flags = COALESCE($4, flags), deleted_on_server_at = NULL WHERE id = $5",
                )
                .bind(&email.remote_key)
                .bind(email.uid.map(i64::from))
                .bind(email.folder.as_deref())
                .bind(email.flags.map(MessageFlags::to_imap))
                .bind(id),
            )
            .await?;
            used.insert(id.clone());
            skip[i] = true;
            if is_move {
                moved.push(id.clone());
            }
        }
    }
    Ok((skip, moved))
}

/// The conversation of each email in `rows`: that of the first message it answers
/// (In-Reply-To, then References) already stored or earlier in the batch; else that of the
/// sent mail whose tracking token its subject carries; else, on Gmail, that of a message of
/// the same mailbox in the same Gmail thread; else that of a stored answer to it; else a new
/// one.
async fn conversations(
    tx: &mut impl SqlConn,
    backend: Backend,
    mailbox: &str,
    emails: &[NewEmail],
    rows: &[usize],
) -> Result<Vec<String>> {
    let related = distinct(rows.iter().flat_map(|&i| {
        let p = &emails[i].parsed;
        p.in_reply_to.iter().chain(&p.references).cloned()
    }));
    let mut by_message = lookup(tx, backend, "message_id", None, &related).await?;
    let tokens = distinct(rows.iter().filter_map(|&i| subject_token(&emails[i])));
    let by_token = lookup(tx, backend, "tracking_token", None, &tokens).await?;
    let threads = distinct(
        rows.iter()
            .filter_map(|&i| emails[i].gmail_thread_id.map(|t| t.to_string())),
    );
    let mut by_thread = lookup(tx, backend, "gmail_thread_id", Some(mailbox), &threads).await?;
    // Answers stored before the message they answer (its folder read later: a reply in Sent
    // to mail of INBOX, or the other way round): the message joins their conversation.
    let own = distinct(
        rows.iter()
            .filter_map(|&i| emails[i].parsed.message_id.clone()),
    );
    let by_answer = lookup(tx, backend, "in_reply_to", Some(mailbox), &own).await?;
    let mut out = Vec::with_capacity(rows.len());
    for &i in rows {
        let (email, p) = (&emails[i], &emails[i].parsed);
        let thread = email.gmail_thread_id.map(|t| t.to_string());
        let conversation = p
            .in_reply_to
            .iter()
            .chain(&p.references)
            .find_map(|id| by_message.get(id).cloned())
            .or_else(|| subject_token(email).and_then(|t| by_token.get(&t).cloned()))
            .or_else(|| thread.as_ref().and_then(|t| by_thread.get(t).cloned()))
            .or_else(|| {
                p.message_id
                    .as_ref()
                    .and_then(|m| by_answer.get(m).cloned())
            })
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        if let Some(mid) = &p.message_id {
            by_message
                .entry(mid.clone())
                .or_insert_with(|| conversation.clone());
        }
        if let Some(t) = thread {
            by_thread.entry(t).or_insert_with(|| conversation.clone());
        }
        out.push(conversation);
    }
    Ok(out)
}

fn distinct(keys: impl Iterator<Item = String>) -> Vec<String> {
    keys.collect::<HashSet<_>>().into_iter().collect()
}

/// The tracking token an incoming message's subject carries.
fn subject_token(email: &NewEmail) -> Option<String> {
    if email.tracking_token.is_some() {
        return None; // mail we send: its own token, not an answer to one
    }
    email
        .parsed
        .subject
        .as_deref()
        .and_then(mailbridge_core::tracking::find_token)
}

/// `key → conversation_id` for the stored emails whose `column` is one of `keys` (in
/// `mailbox` only, when given).
async fn lookup(
    tx: &mut impl SqlConn,
    backend: Backend,
    column: &'static str,
    mailbox: Option<&str>,
    keys: &[String],
) -> Result<HashMap<String, String>> {
    let mut known = HashMap::new();
    for chunk in keys.chunks(IN_LIST) {
        let q = lookup_query(
            backend,
            &format!("{column}, conversation_id"),
            column,
            mailbox,
            chunk,
        );
        for (key, conversation) in tx.fetch_all::<(String, String)>(q).await? {
            known.entry(key).or_insert(conversation);
        }
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_in_list_takes_one_of_a_few_sizes_padded_with_nulls() {
        let sizes: std::collections::BTreeSet<usize> = (1..=IN_LIST).map(in_list_size).collect();
        assert_eq!(
            sizes.into_iter().collect::<Vec<_>>(),
            [8, 16, 32, 64, 128, 256, IN_LIST]
        );
        assert_eq!(
            in_list_size(IN_LIST + 100),
            IN_LIST + 100,
            "a longer list as it is"
        );
        let keys = ["a", "b", "c"];
        assert_eq!(
            padded_keys(&keys).collect::<Vec<_>>(),
            [
                Some("a"),
                Some("b"),
                Some("c"),
                None,
                None,
                None,
                None,
                None
            ]
        );
    }

    /// A database made before migration 0029 (emails keyed to their mailbox on both
    /// backends): its mail reads the same after it, and deleting the mailbox — even by hand —
    /// still deletes its emails and their attachments (on PostgreSQL by 0030's trigger).
    #[tokio::test]
    async fn mail_stored_before_the_unkeyed_migration_goes_with_its_mailbox() {
        use crate::tests::{before_migration, old_mailbox};
        for db in [
            mailbridge_testdb::TestDatabase::Sqlite,
            mailbridge_testdb::TestDatabase::Postgres,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = before_migration(db, dir.path(), "0029").await;
            let mailbox = old_mailbox(&store).await;
            let (email, raw) = (
                "0190f0a0-0000-7000-8000-000000000001",
                b"Subject: kept\r\n\r\nhi\r\n",
            );
            sqlx::query(
                "INSERT INTO emails (id, mailbox_id, direction, remote_key, content_sha256, raw, \
                 size, conversation_id, created_at) \
                 VALUES ($1, $2, 'incoming', 'imap/INBOX/1/1', 'x', $3, 22, 'c1', 0)",
            )
            .bind(email)
            .bind(mailbox)
            .bind(raw.to_vec())
            .execute(&store.pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO attachments (id, email_id, content_type, size) \
                 VALUES ('0190f0a0-0000-7000-8000-000000000101', $1, 'text/plain', 2)",
            )
            .bind(email)
            .execute(&store.pool)
            .await
            .unwrap();
            store.migrate().await.unwrap();
            let (keys,): (i64,) = sqlx::query_as(match db {
                mailbridge_testdb::TestDatabase::Postgres => {
                    "SELECT COUNT(*) FROM pg_constraint WHERE conname = 'emails_mailbox_id_fkey'"
                }
                mailbridge_testdb::TestDatabase::Sqlite => {
                    "SELECT COUNT(*) FROM pragma_foreign_key_list('emails') WHERE \"table\" = 'mailboxes'"
                }
            })
            .fetch_one(&store.pool)
            .await
            .unwrap();
            let kept = usize::from(db == mailbridge_testdb::TestDatabase::Sqlite);
            assert_eq!(
                keys, kept as i64,
                "{db:?}: the key to mailboxes dropped on PostgreSQL only"
            );
            assert_eq!(store.email_raw(email).await.unwrap(), raw, "{db:?}");
            // By hand, as an operator or a node of an older version would: the schema alone
            // takes the emails along.
            sqlx::query("DELETE FROM mailboxes WHERE id = $1")
                .bind(mailbox)
                .execute(&store.pool)
                .await
                .unwrap();
            for sql in [
                "SELECT COUNT(*) FROM emails",
                "SELECT COUNT(*) FROM attachments",
            ] {
                let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&store.pool).await.unwrap();
                assert_eq!(n, 0, "{db:?}: {sql}, after the mailbox's deletion");
            }
        }
    }

    /// Every lookup of a synced batch on PostgreSQL must find each key through its index,
    /// also in the generic plan PostgreSQL caches after five runs and on a table not yet
    /// analyzed — a new database's first sync — or every batch reads all the mailbox's rows
    /// (found with auto_explain: the renumbering lookup took 40–65 ms a batch at 5,500 rows).
    #[tokio::test]
    async fn the_batch_lookups_read_their_index_in_postgres_generic_plans() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::tests::fresh_postgres(dir.path()).await;
        let mut conn = store.pool.acquire().await.unwrap();
        sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
            .execute(&mut *conn)
            .await
            .unwrap();
        for (n, (select, column, scoped)) in [
            ("id, remote_key, content_sha256", "content_sha256", true),
            ("message_id, conversation_id", "message_id", false),
            (OWN_SENDS_SELECT, "message_id", false),
            ("tracking_token, conversation_id", "tracking_token", false),
            ("gmail_thread_id, conversation_id", "gmail_thread_id", true),
            ("in_reply_to, conversation_id", "in_reply_to", true),
        ]
        .into_iter()
        .enumerate()
        {
            let sql = lookup_sql(Backend::Postgres, select, column, scoped, 3);
            let (types, args) = if scoped {
                ("text, text, text, text", "'m', 'a', 'b', 'c'")
            } else {
                ("text, text, text", "'a', 'b', 'c'")
            };
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PREPARE lookup{n} ({types}) AS {sql}"
            )))
            .execute(&mut *conn)
            .await
            .unwrap();
            let plan: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "EXPLAIN EXECUTE lookup{n} ({args})"
            )))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
            let plan: Vec<String> = plan.into_iter().map(|(line,)| line).collect();
            // Where the plan names the key column: as an index's condition, never as a
            // condition checked row by row (a filter, a recheck, a hash join's).
            let uses: Vec<&str> = plan
                .iter()
                .filter(|line| line.contains(&format!("{column} =")))
                .map(|line| line.trim().split(':').next().unwrap_or(""))
                .collect();
            assert_eq!(uses, ["Index Cond"], "{column}:\n{}", plan.join("\n"));
        }
        conn.close().await.unwrap();
        store.close().await;
    }

    /// Migration 0010 left incoming mail out of four indexes; the queries that need them
    /// must still use them, or each would read every email (on SQLite, `status` sits after
    /// the raw bytes in the row). These are the queries the code runs.
    #[tokio::test]
    async fn the_partial_indexes_serve_the_queries_that_need_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::tests::fresh_sqlite(dir.path()).await;
        for (query, index) in [
            (
                lookup_sql(
                    Backend::Sqlite,
                    "tracking_token, conversation_id",
                    "tracking_token",
                    false,
                    2,
                ),
                "emails_tracking_token",
            ),
            (
                lookup_sql(
                    Backend::Sqlite,
                    "gmail_thread_id, conversation_id",
                    "gmail_thread_id",
                    true,
                    2,
                ),
                "emails_gmail_thread",
            ),
            (
                lookup_sql(Backend::Sqlite, OWN_SENDS_SELECT, "message_id", false, 2),
                "emails_message_id",
            ),
            (reply_to_sent_sql(0), "emails_tracking_token"),
            (reply_to_sent_sql(2), "emails_tracking_token"),
            (
                crate::outgoing::IDEMPOTENCY_LOOKUP_SQL.to_owned(),
                "emails_idempotency",
            ),
            (crate::outgoing::CLAIM_DUE_SQL.clone(), "emails_due"),
            (
                crate::outgoing::FAIL_INTERRUPTED_SENDS_SQL.to_owned(),
                "emails_due",
            ),
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {query}")))
                    .fetch_all(&store.pool)
                    .await
                    .unwrap();
            assert!(
                plan.iter().any(|(.., detail)| detail.contains(index)),
                "{query}\ndoes not use {index}: {plan:?}"
            );
        }
    }
}
