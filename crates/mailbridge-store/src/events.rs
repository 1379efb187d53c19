//! [`Event`]: the event log, the one road out to the host application. Every change it cares
//! about is appended (`append`) in the transaction that makes the change, so an event exists
//! exactly when its change committed: a rolled-back batch leaves none, a crash loses none.
//! The change feed reads it in commit order by `seq` ([`Store::read_events`]); webhooks
//! deliver from it.
//!
//! Commit order, gap-free: a reader that has seen event `n` never later finds an event below
//! `n`. SQLite has one writer, so `seq` order is commit order. On PostgreSQL a sequence value
//! is taken before commit, so two transactions could commit in the other order than their
//! values; `append` therefore takes one transaction-scoped advisory lock right before it
//! inserts and holds it to commit (PostgreSQL makes a transaction visible before it releases
//! its locks), so no other transaction takes a value until this one is visible. Appends come
//! last in a transaction, so the lock is held only for the insert and the commit.

use chrono::{DateTime, Utc};
use mailbridge_core::{EventType, MailboxId, UserId};
use sqlx::AnyConnection;

use crate::inserts::BatchInsert;
use crate::sql::{SqlConn, Stmt};
use crate::{Backend, Result, Store, StoreError, time_from_ms};

/// `pg_advisory_xact_lock` key of the event log ("MBEV").
const EVENT_LOCK: i64 = 0x4D42_4556;
/// Appended events (a sync batch's, and every other write's).
pub(crate) static INSERT_EVENTS: BatchInsert = BatchInsert::new(
    "events (id, type, mailbox_id, owner_user_id, created_at, data)",
    "",
);

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: EventType,
    pub mailbox_id: Option<MailboxId>,
    /// Who may read it: the mailbox's owner, or the alert's recipient.
    pub owner: Option<UserId>,
    /// The event's data, as JSON text: serialized once, where it is made.
    pub data: String,
}

/// An event as read from the log.
#[derive(Debug, Clone)]
pub struct Event {
    /// The position in the log (the feed's cursor after this event).
    pub seq: i64,
    /// Stable: the same in the feed and on every webhook delivery.
    pub id: String,
    pub kind: String,
    pub mailbox_id: Option<String>,
    pub owner_user_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

impl Event {
    /// The event as the feed and webhooks show it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": self.kind,
            "timestamp": self.created_at,
            "cursor": self.seq.to_string(),
            "mailbox_id": self.mailbox_id,
            "owner_user_id": self.owner_user_id,
            "data": self.data,
        })
    }
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Read events after this position (0: from the oldest kept).
    pub after: i64,
    /// Only these types (empty: all).
    pub types: Vec<EventType>,
    pub mailbox: Option<MailboxId>,
    /// Only this user's (for a user; `None` for an admin).
    pub owner: Option<UserId>,
    pub limit: i64,
}

/// A page of the feed: the events, and where to read on from (present even when the page is
/// empty: every event up to it was looked at).
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub next: i64,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    id: String,
    kind: String,
    mailbox_id: Option<String>,
    owner_user_id: Option<String>,
    created_at: i64,
    data: String,
}

impl TryFrom<EventRow> for Event {
    type Error = StoreError;
    fn try_from(r: EventRow) -> Result<Self> {
        Ok(Self {
            data: serde_json::from_str(&r.data)
                .map_err(|e| StoreError::corrupt(format!("event {}", r.id), e))?,
            seq: r.seq,
            id: r.id,
            kind: r.kind,
            mailbox_id: r.mailbox_id,
            owner_user_id: r.owner_user_id,
            created_at: time_from_ms(r.created_at),
        })
    }
}

const EVENT_COLUMNS: &str = "seq, id, type AS kind, mailbox_id, owner_user_id, created_at, data";

/// After a commit that may have appended events: tells this process's readers.
pub(crate) fn signal(events: &tokio::sync::watch::Sender<u64>) {
    events.send_modify(|n| *n = n.wrapping_add(1));
}

/// Appends events in `tx`, the transaction of the change they describe. Call it last before
/// the commit: on PostgreSQL it holds the log's lock from here to the commit.
pub(crate) async fn append(
    tx: &mut impl SqlConn,
    backend: Backend,
    now: i64,
    events: &[NewEvent],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    if backend == Backend::Postgres {
        tx.execute(Stmt::new("SELECT pg_advisory_xact_lock($1)").bind(EVENT_LOCK))
            .await?;
    }
    INSERT_EVENTS
        .run(tx, backend, events, |q, e| {
            q.bind(e.map(|_| uuid::Uuid::now_v7().to_string()))
                .bind(e.map(|e| e.kind.as_str()))
                .bind(e.and_then(|e| e.mailbox_id.map(|m| m.to_string())))
                .bind(e.and_then(|e| e.owner.map(|u| u.to_string())))
                .bind(e.map(|_| now))
                .bind(e.map(|e| e.data.as_str()))
        })
        .await?;
    Ok(())
}

/// Up to `limit` events after `after` and up to `head`, oldest first, read in `tx`.
pub(crate) async fn page(
    tx: &mut AnyConnection,
    after: i64,
    head: i64,
    limit: i64,
) -> Result<Vec<Event>> {
    let rows: Vec<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
    )))
    .bind(after)
    .bind(head)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    rows.into_iter().map(Event::try_from).collect()
}

impl Store {
    /// Commits a transaction that appended events, and wakes the feed's waiting readers.
    pub(crate) async fn commit(&self, tx: crate::WriteTx) -> Result<()> {
        tx.commit().await?;
        signal(&self.events_signal);
        Ok(())
    }

    /// Changes whenever this process commits new events (other nodes' commits are found by
    /// reading again; see the feed's long poll).
    pub fn event_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events_signal.subscribe()
    }

    /// Events after `query.after`, oldest first. `next` is the position to read on from: the
    /// last event returned, or, when fewer than `limit` matched, the newest position in the
    /// log (nothing up to it that matches is left unread). A position older than retention
    /// is [`StoreError::Gone`].
    pub async fn read_events(&self, query: &EventQuery) -> Result<EventPage> {
        let (pruned,): (i64,) = sqlx::query_as("SELECT pruned_through FROM event_log WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        if query.after < pruned {
            return Err(StoreError::Gone {
                message: format!(
                    "the cursor {} is older than the events still kept (they are kept for the event_retention_days setting); the oldest cursor still available is {pruned}: read from there, or from after=latest",
                    query.after
                ),
            });
        }
        // Every event up to `head` is committed and visible (see the module's doc), so it is
        // safe to move past it.
        let (head,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM events")
            .fetch_one(&self.pool)
            .await?;
        let head = head.unwrap_or(query.after).max(query.after);
        let types: Vec<String> = query
            .types
            .iter()
            .map(|t| format!("'{}'", t.as_str()))
            .collect();
        let type_filter = if types.is_empty() {
            String::new()
        } else {
            // The words come from a closed set (`EventType`), never from the request.
            format!(" AND type IN ({})", types.join(", "))
        };
        let rows: Vec<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 AND seq <= $2 \
             AND ($3 IS NULL OR owner_user_id = $3) AND ($4 IS NULL OR mailbox_id = $4){type_filter} \
             ORDER BY seq LIMIT $5"
        )))
        .bind(query.after)
        .bind(head)
        .bind(query.owner.map(|u| u.to_string()))
        .bind(query.mailbox.map(|m| m.to_string()))
        .bind(query.limit)
        .fetch_all(&self.pool)
        .await?;
        let full = rows.len() as i64 >= query.limit;
        let events = rows
            .into_iter()
            .map(Event::try_from)
            .collect::<Result<Vec<_>>>()?;
        let next = match events.last() {
            Some(last) if full => last.seq,
            _ => head,
        };
        Ok(EventPage { events, next })
    }

    /// The newest position in the log (where `after=latest` starts).
    pub async fn event_head(&self) -> Result<i64> {
        let (head, pruned): (Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT MAX(seq) FROM events), pruned_through FROM event_log WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(head.unwrap_or(pruned).max(pruned))
    }

    /// Deletes events older than `before`, and remembers how far it went. Returns how many.
    pub async fn prune_events(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let (last,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(seq) FROM events WHERE created_at < $1")
                .bind(before.timestamp_millis())
                .fetch_one(&mut *tx)
                .await?;
        let Some(last) = last else {
            return Ok(0);
        };
        let done = sqlx::query("DELETE FROM events WHERE seq <= $1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE event_log SET pruned_through = $1 WHERE id = 1 AND pruned_through < $1",
        )
        .bind(last)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

/// What an email event says of its email: enough to route it; bodies stay behind
/// `GET /emails/{id}`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct EmailSummary<'a> {
    pub id: &'a str,
    pub mailbox_id: &'a str,
    pub direction: &'a str,
    pub message_id: Option<&'a str>,
    pub conversation_id: &'a str,
    pub subject: Option<&'a str>,
    pub from: Option<&'a mailbridge_core::message::Party>,
    pub to: &'a [mailbridge_core::message::Party],
    /// Outgoing: `pending_send`, `sending`, `sent` or `failed`.
    pub status: Option<&'a str>,
    /// Outgoing: the server's last words about it.
    pub send_reply: Option<&'a str>,
}

/// An email event's data: `{"email": {...}}`.
#[derive(serde::Serialize)]
struct EmailData<'a> {
    email: &'a EmailSummary<'a>,
}

impl EmailSummary<'_> {
    pub(crate) fn event(&self, kind: EventType, owner: Option<UserId>) -> Result<NewEvent> {
        Ok(NewEvent {
            kind,
            mailbox_id: Some(
                self.mailbox_id
                    .parse()
                    .map_err(|e| StoreError::corrupt("email mailbox", e))?,
            ),
            owner,
            // Straight to text: a first sync makes one per message, and building a
            // `serde_json::Value` first cost as much again in allocations.
            data: serde_json::to_string(&EmailData { email: self })
                .map_err(|e| StoreError::Database(sqlx::Error::Encode(Box::new(e))))?,
        })
    }
}

/// An email event about a stored email, its summary read in `tx`.
pub(crate) async fn email_event(
    tx: &mut impl SqlConn,
    kind: EventType,
    email: &str,
) -> Result<Option<NewEvent>> {
    type Columns = (
        String,
        String,
        String,
        String,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
    );
    let row: Option<Columns> = tx
        .fetch_optional(
            Stmt::new(
                "SELECT e.id, e.mailbox_id, m.owner_user_id, e.direction, e.message_id, \
                 e.conversation_id, e.subject, e.from_address, e.from_name, e.to_json, e.status, \
                 e.send_reply FROM emails e JOIN mailboxes m ON m.id = e.mailbox_id WHERE e.id = $1",
            )
            .bind(email),
        )
        .await?;
    let Some((
        id,
        mailbox_id,
        owner_user_id,
        direction,
        message_id,
        conversation_id,
        subject,
        from_address,
        from_name,
        to_json,
        status,
        send_reply,
    )) = row
    else {
        return Ok(None);
    };
    let bad = |e: &dyn std::fmt::Display| StoreError::corrupt(format!("email {id}"), e);
    let from = from_address.map(|address| mailbridge_core::message::Party {
        address,
        name: from_name,
    });
    let to: Vec<mailbridge_core::message::Party> =
        serde_json::from_str(&to_json).map_err(|e| bad(&e))?;
    let owner: UserId = owner_user_id.parse().map_err(|e| bad(&e))?;
    EmailSummary {
        id: &id,
        mailbox_id: &mailbox_id,
        direction: &direction,
        message_id: message_id.as_deref(),
        conversation_id: &conversation_id,
        subject: subject.as_deref(),
        from: from.as_ref(),
        to: &to,
        status: status.as_deref(),
        send_reply: send_reply.as_deref(),
    }
    .event(kind, Some(owner))
    .map(Some)
}

/// A mailbox event with the mailbox's state read in `tx`, and `extra` fields in its data.
pub(crate) async fn mailbox_event(
    tx: &mut AnyConnection,
    kind: EventType,
    mailbox: &str,
    extra: serde_json::Value,
) -> Result<Option<NewEvent>> {
    let row: Option<(String, String, i64, String, String)> = sqlx::query_as(
        "SELECT owner_user_id, email, enabled, incoming_status, outgoing_status \
         FROM mailboxes WHERE id = $1",
    )
    .bind(mailbox)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((owner, email, enabled, incoming, outgoing)) = row else {
        return Ok(None);
    };
    let bad = |e: &dyn std::fmt::Display| StoreError::corrupt(format!("mailbox {mailbox}"), e);
    let mut data = serde_json::json!({
        "mailbox": {
            "id": mailbox, "email": email, "enabled": enabled != 0,
            "incoming_status": incoming, "outgoing_status": outgoing,
        },
    });
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    Ok(Some(NewEvent {
        kind,
        mailbox_id: Some(mailbox.parse().map_err(|e| bad(&e))?),
        owner: Some(owner.parse().map_err(|e| bad(&e))?),
        data: data.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn event(n: u32) -> NewEvent {
        NewEvent {
            kind: EventType::AlertCreated,
            mailbox_id: None,
            owner: None,
            data: serde_json::json!({ "n": n }).to_string(),
        }
    }

    /// Two transactions append in one order and would commit in the other: the first holds
    /// its (lower) position while the second, later, commits. A reader in between must not
    /// see the second yet, or it moves its cursor past the first, which it then never reads.
    #[tokio::test]
    async fn an_append_that_commits_late_is_never_passed_by_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::tests::fresh_postgres(dir.path()).await;
        let mut slow = store.begin_write().await.unwrap();
        append(&mut slow, store.backend, 0, &[event(1)])
            .await
            .unwrap();
        let quick = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin_write().await.unwrap();
                append(&mut tx, store.backend, 0, &[event(2)])
                    .await
                    .unwrap();
                store.commit(tx).await.unwrap();
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let query = EventQuery {
            limit: 100,
            ..EventQuery::default()
        };
        let early = store.read_events(&query).await.unwrap();
        store.commit(slow).await.unwrap();
        quick.await.unwrap();
        let late = store
            .read_events(&EventQuery {
                after: early.next,
                ..query
            })
            .await
            .unwrap();
        let seen: Vec<i64> = early
            .events
            .iter()
            .chain(&late.events)
            .map(|e| e.data["n"].as_i64().unwrap())
            .collect();
        assert_eq!(
            seen,
            [1, 2],
            "the reader skipped an event or saw it out of commit order"
        );
    }
}
