//! The outgoing queue: [`OutgoingEmail`]s queued by the application (with the limits that
//! keep one mailbox from crowding out the others or running past its provider's daily
//! limit), claimed fairly across mailboxes by the node that holds their lease, and settled
//! as sent, retried or failed.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use mailbridge_core::message::Party;
use mailbridge_core::{EventType, MailboxId};

use crate::emails::{EmailRecord, IN_LIST, NewEmail, Origin, insert_emails};
use crate::events::{NewEvent, append, email_event};
use crate::nodes::live_lease;
use crate::{Backend, Result, Store, StoreError};

/// An email to queue: its record, and what the message itself does not say.
#[derive(Debug, Clone)]
pub struct OutgoingEmail {
    pub email: NewEmail,
    /// Every RCPT TO: to, cc and bcc, as the application gave them.
    pub envelope: Vec<String>,
    /// The blind copies (not in the message).
    pub bcc: Vec<Party>,
    /// SHA-256 (hex) of the request's content (`OutgoingMessage::fingerprint`).
    pub fingerprint: String,
}

const DAY_MS: i64 = 24 * 3_600_000;

/// The alert kind raised when an email may or may not have been delivered.
pub const SEND_UNCONFIRMED: &str = "send_unconfirmed";

impl Store {
    /// Queues an email to send from a mailbox. With an idempotency key already used for this
    /// mailbox, nothing new is queued and the earlier email is returned — unless the earlier
    /// request asked for a different email ([`StoreError::IdempotencyKeyReused`]). Refuses
    /// ([`StoreError::RateLimited`]) when the mailbox already has its profile's
    /// `max_queued_emails` waiting, or has queued its `daily_send_limit` in the last 24 hours.
    /// Returns the email and whether it was created now.
    pub async fn queue_outgoing(
        &self,
        mailbox: MailboxId,
        outgoing: &OutgoingEmail,
        idempotency_key: Option<&str>,
    ) -> Result<(EmailRecord, bool)> {
        let now = self.now_ms();
        let mid = mailbox.to_string();
        let mut tx = self.begin_write().await?;
        if let Some(key) = idempotency_key
            && let Some(id) = earlier_request(&mut tx, &mid, key, &outgoing.fingerprint).await?
        {
            tx.rollback().await?;
            return Ok((self.get_email(&id).await?, false));
        }
        self.check_send_limits(&mut tx, &mid, now).await?;
        let created = insert_emails(
            &mut tx,
            self.backend,
            &mid,
            // A copy: the insert takes the bytes it stores.
            &mut [outgoing.email.clone()],
            now,
            Origin::Queued { idempotency_key },
        )
        .await?
        .len()
            == 1;
        if !created {
            // Another request with the same key committed between our look and our insert.
            tx.rollback().await?;
            let key = idempotency_key.unwrap_or_default();
            let mut tx = self.begin_write().await?;
            let earlier = earlier_request(&mut tx, &mid, key, &outgoing.fingerprint).await?;
            tx.rollback().await?;
            let id = earlier.ok_or_else(|| StoreError::NotFound {
                kind: "email with this Idempotency-Key",
                id: key.to_owned(),
            })?;
            return Ok((self.get_email(&id).await?, false));
        }
        let (id,): (String,) = sqlx::query_as(
            "UPDATE emails SET bcc_json = $1, envelope_json = $2, request_sha256 = $3 \
             WHERE mailbox_id = $4 AND remote_key = $5 RETURNING id",
        )
        .bind(to_json(&outgoing.bcc))
        .bind(to_json(&outgoing.envelope))
        .bind(&outgoing.fingerprint)
        .bind(&mid)
        .bind(&outgoing.email.remote_key)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((self.get_email(&id).await?, true))
    }

    /// The mailbox's profile limits: mail waiting, and mail queued within a day.
    async fn check_send_limits(
        &self,
        tx: &mut sqlx::AnyConnection,
        mailbox: &str,
        now: i64,
    ) -> Result<()> {
        if self.backend == Backend::Postgres {
            // Two requests for one mailbox count one after the other (SQLite's write
            // transaction already excludes every other writer).
            sqlx::query("SELECT id FROM mailboxes WHERE id = $1 FOR UPDATE")
                .bind(mailbox)
                .execute(&mut *tx)
                .await?;
        }
        let (email, max_queued, daily): (String, i64, i64) = sqlx::query_as(
            "SELECT m.email, p.max_queued_emails, p.daily_send_limit FROM mailboxes m \
             JOIN server_profiles p ON p.id = m.profile_id WHERE m.id = $1",
        )
        .bind(mailbox)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "mailbox",
            id: mailbox.to_owned(),
        })?;
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM emails WHERE mailbox_id = $1 AND direction = 'outgoing' \
             AND status IN ('pending_send', 'sending')",
        )
        .bind(mailbox)
        .fetch_one(&mut *tx)
        .await?;
        if waiting >= max_queued {
            return Err(StoreError::RateLimited {
                message: format!(
                    "{email} already has {waiting} emails waiting to be sent, its profile's limit (max_queued_emails); send again once some have gone out"
                ),
                retry_after_secs: 60,
            });
        }
        let (today, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at) FROM emails WHERE mailbox_id = $1 \
             AND direction = 'outgoing' AND created_at > $2",
        )
        .bind(mailbox)
        .bind(now - DAY_MS)
        .fetch_one(&mut *tx)
        .await?;
        if today >= daily {
            let wait_ms = u64::try_from(oldest.unwrap_or(now) + DAY_MS - now).unwrap_or(0);
            return Err(StoreError::RateLimited {
                message: format!(
                    "{email} has queued {today} emails in the last 24 hours, its profile's daily_send_limit (providers suspend accounts that send more); the next one can be sent in {} minutes",
                    wait_ms.div_ceil(60_000)
                ),
                retry_after_secs: wait_ms.div_ceil(1000),
            });
        }
        Ok(())
    }

    /// Every RCPT TO of an outgoing email, as the application gave them (to, cc, bcc). Mail
    /// queued before the envelope was kept goes to its to and cc.
    pub async fn send_envelope(&self, email: &EmailRecord) -> Result<Vec<String>> {
        let (envelope,): (Option<String>,) =
            sqlx::query_as("SELECT envelope_json FROM emails WHERE id = $1")
                .bind(&email.id)
                .fetch_one(&self.pool)
                .await?;
        match envelope {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| StoreError::corrupt(format!("envelope of email {}", email.id), e)),
            None => Ok(email
                .to
                .iter()
                .chain(&email.cc)
                .map(|p| p.address.clone())
                .collect()),
        }
    }

    /// Claims up to `limit` outgoing emails due for sending from enabled mailboxes whose lease
    /// `node` holds (mail of a disabled one waits until it is enabled again): each moves to
    /// `sending`, marked with the node, so no other worker or node takes it. Mailboxes take
    /// turns: each one's oldest due email first, then each one's second, so a mailbox with
    /// a long queue never holds back the others. Returns (email id, mailbox id).
    pub async fn claim_due_outgoing(
        &self,
        node: &str,
        limit: i64,
    ) -> Result<Vec<(String, MailboxId)>> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        // Leases are compared at the database's clock (see `lease_now`); due times at ours.
        let lease_now = crate::nodes::lease_now(&mut tx, self.backend, now).await?;
        let candidates: Vec<(String, String)> = sqlx::query_as(CLAIM_DUE_SQL.as_str())
            .bind(now)
            .bind(node)
            .bind(limit)
            .bind(lease_now)
            .fetch_all(&mut *tx)
            .await?;
        // Only a row this update moved out of pending_send is ours to send (under READ
        // COMMITTED another claimer may have moved it since the SELECT). One statement per
        // chunk, not one per email.
        let mut claimed: Vec<(String, String)> = Vec::with_capacity(candidates.len());
        for chunk in candidates.chunks(IN_LIST) {
            let list: Vec<String> = (0..chunk.len()).map(|k| format!("${}", k + 2)).collect();
            let mut q = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(format!(
                "UPDATE emails SET status = 'sending', sending_node = $1, send_attempts = send_attempts + 1 \
                 WHERE status = 'pending_send' AND id IN ({}) RETURNING id, mailbox_id",
                list.join(", ")
            )))
            .bind(node);
            for (id, _) in chunk {
                q = q.bind(id.clone());
            }
            claimed.extend(q.fetch_all(&mut *tx).await?);
        }
        tx.commit().await?;
        // The UPDATE returns rows in no promised order; keep the turns.
        let order: std::collections::HashMap<&str, usize> = candidates
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.as_str(), i))
            .collect();
        claimed.sort_by_key(|(id, _)| order.get(id.as_str()).copied().unwrap_or(usize::MAX));
        claimed
            .into_iter()
            .map(|(id, m)| {
                Ok((
                    id,
                    m.parse()
                        .map_err(|e| StoreError::corrupt("email mailbox", e))?,
                ))
            })
            .collect()
    }

    /// How many emails `mailbox` sent since `since`, and when the first of them went: what a
    /// per-minute send limit counts.
    pub async fn sent_since(
        &self,
        mailbox: MailboxId,
        since: DateTime<Utc>,
    ) -> Result<(u32, Option<DateTime<Utc>>)> {
        let (count, first): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(delivered_at) FROM emails WHERE mailbox_id = $1 \
             AND direction = 'outgoing' AND status = 'sent' AND delivered_at >= $2",
        )
        .bind(mailbox.to_string())
        .bind(since.timestamp_millis())
        .fetch_one(&self.pool)
        .await?;
        Ok((
            u32::try_from(count).unwrap_or(u32::MAX),
            first.map(crate::time_from_ms),
        ))
    }

    /// The server accepted the email.
    pub async fn mark_sent(&self, id: &str, reply: &str) -> Result<()> {
        self.set_send_state(id, "sent", reply, None).await
    }

    /// A temporary failure: send again at `retry_at`.
    pub async fn mark_send_retry(
        &self,
        id: &str,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<()> {
        self.set_send_state(id, "pending_send", error, Some(retry_at.timestamp_millis()))
            .await
    }

    /// The provider asked to wait (Exchange Online's `432 4.3.2`: too many connections or
    /// sends at once): send again at `retry_at`, and the attempt does not count towards
    /// giving up.
    pub async fn mark_send_wait(
        &self,
        id: &str,
        reply: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE emails SET status = 'pending_send', send_reply = $1, next_attempt_at = $2, \
             send_attempts = CASE WHEN send_attempts > 0 THEN send_attempts - 1 ELSE 0 END WHERE id = $3",
        )
        .bind(reply)
        .bind(retry_at.timestamp_millis())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await
    }

    /// A permanent failure (or too many temporary ones).
    pub async fn mark_send_failed(&self, id: &str, error: &str) -> Result<()> {
        self.set_send_state(id, "failed", error, None).await
    }

    /// The whole email went out but the server's answer was lost: it may have been
    /// delivered. It becomes `failed` with `reason` (never sent again by itself), and its
    /// mailbox's owner is alerted to decide.
    pub async fn mark_send_unconfirmed(&self, id: &str, reason: &str) -> Result<()> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        let row: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT e.mailbox_id, m.owner_user_id, e.subject FROM emails e \
             JOIN mailboxes m ON m.id = e.mailbox_id WHERE e.id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((mailbox, owner, subject)) = row else {
            return Err(StoreError::NotFound {
                kind: "email",
                id: id.to_owned(),
            });
        };
        let reply = format!("{reason}; not sent again automatically: check the Sent folder");
        sqlx::query(
            "UPDATE emails SET status = 'failed', send_reply = $1, next_attempt_at = NULL WHERE id = $2",
        )
        .bind(&reply)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let bad = |e: uuid::Error| StoreError::corrupt(format!("email {id}"), e);
        let mut events: Vec<NewEvent> = email_event(&mut tx, EventType::EmailSendFailed, id)
            .await?
            .into_iter()
            .collect();
        let alert = crate::alerts::raise_each(
            &mut tx,
            now,
            crate::alerts::NewAlert {
                mailbox_id: Some(mailbox.parse().map_err(bad)?),
                profile_id: None,
                user_id: owner.parse().map_err(bad)?,
                kind: SEND_UNCONFIRMED,
                message: format!(
                    "the email \"{}\" ({id}) may or may not have been delivered: the connection was lost after it was sent, before the server confirmed it",
                    subject.unwrap_or_default()
                ),
                hint: "Look for it in the mailbox's Sent folder (or ask the recipient); send it again only if it is not there. It was not sent again, so it cannot arrive twice.",
            },
        )
        .await?;
        events.push(alert);
        append(&mut tx, self.backend, now, &events).await?;
        self.commit(tx).await
    }

    async fn set_send_state(
        &self,
        id: &str,
        status: &str,
        reply: &str,
        retry_at: Option<i64>,
    ) -> Result<()> {
        let now = self.now_ms();
        let delivered = (status == "sent").then_some(now);
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE emails SET status = $1, send_reply = $2, next_attempt_at = $3, delivered_at = $4 WHERE id = $5")
            .bind(status)
            .bind(reply)
            .bind(retry_at)
            .bind(delivered)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let kind = match status {
            "sent" => Some(EventType::EmailSent),
            "failed" => Some(EventType::EmailSendFailed),
            _ => None,
        };
        if let Some(kind) = kind {
            let event = email_event(&mut tx, kind, id).await?;
            append(&mut tx, self.backend, now, event.as_slice()).await?;
        }
        self.commit(tx).await
    }

    /// Emails left in `sending` by a node that stopped or died mid-send (stopped, or no
    /// heartbeat within `ttl`) may or may not have reached the server. They are never sent
    /// again automatically (no email goes out twice): they become `failed` with a reason
    /// saying so. Returns how many.
    pub async fn fail_interrupted_sends(&self, ttl: std::time::Duration) -> Result<u64> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        // Heartbeats are written at the database's clock (see `lease_now`).
        let lease_now = crate::nodes::lease_now(&mut tx, self.backend, now).await?;
        let failed: Vec<(String,)> = sqlx::query_as(FAIL_INTERRUPTED_SENDS_SQL)
            .bind(lease_now.saturating_sub(ttl_ms))
            .fetch_all(&mut *tx)
            .await?;
        let mut events = Vec::with_capacity(failed.len());
        for (id,) in &failed {
            events.extend(email_event(&mut tx, EventType::EmailSendFailed, id).await?);
        }
        append(&mut tx, self.backend, now, &events).await?;
        self.commit(tx).await?;
        Ok(failed.len() as u64)
    }
}

/// The email an earlier request queued under `key`, if any; an error when that request asked
/// for a different email.
async fn earlier_request(
    tx: &mut sqlx::AnyConnection,
    mailbox: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Option<String>> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(IDEMPOTENCY_LOOKUP_SQL)
        .bind(mailbox)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
    match row {
        // Mail queued before fingerprints were kept matches any retry.
        Some((id, Some(earlier))) if earlier != fingerprint => {
            Err(StoreError::IdempotencyKeyReused {
                message: format!(
                    "the Idempotency-Key '{key}' was already used for a different email ({id}); use a new key for a new email, or send exactly the same request to get the earlier one"
                ),
            })
        }
        Some((id, _)) => Ok(Some(id)),
        None => Ok(None),
    }
}

/// A JSON column's text.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".to_owned())
}

// Queries that must find their (partial) index; `emails::tests` checks their plans on SQLite.

pub(crate) const IDEMPOTENCY_LOOKUP_SQL: &str =
    "SELECT id, request_sha256 FROM emails WHERE mailbox_id = $1 AND idempotency_key = $2";

/// Due mail (at time `$1`) of enabled mailboxes leased to node `$2` (at lease time `$4`), `$3`
/// at most, in turns:
/// each mailbox's first due email, then each one's second, and so on.
pub(crate) static CLAIM_DUE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, mailbox_id FROM (\
         SELECT e.id, e.mailbox_id, e.next_attempt_at, \
         ROW_NUMBER() OVER (PARTITION BY e.mailbox_id ORDER BY e.next_attempt_at, e.id) AS turn \
         FROM emails e JOIN mailboxes m ON m.id = e.mailbox_id \
         JOIN mailbox_leases l ON l.mailbox_id = e.mailbox_id \
         WHERE e.status = 'pending_send' AND e.next_attempt_at <= $1 AND m.enabled = 1 \
         AND l.node_id = $2 AND {}) due \
         ORDER BY turn, next_attempt_at, id LIMIT $3",
        live_lease("l", "$4")
    )
});

pub(crate) const FAIL_INTERRUPTED_SENDS_SQL: &str = "UPDATE emails SET status = 'failed', send_reply = 'the service stopped while sending this email; \
     it may or may not have been delivered: check the mailbox''s Sent folder before sending it again' \
     WHERE status = 'sending' AND (sending_node IS NULL OR sending_node NOT IN \
     (SELECT id FROM nodes WHERE stopped_at IS NULL AND heartbeat_at > $1)) RETURNING id";
