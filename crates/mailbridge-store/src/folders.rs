//! Where each folder of a mailbox stands: its sync position (UIDVALIDITY, the last UID read,
//! HIGHESTMODSEQ), how far the pass over it is, why it failed if it did — and the changes a
//! pass finds on the server for mail already stored (flags, Gmail labels, expunges), applied
//! with their `email.updated` / `email.deleted` events in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use mailbridge_core::message::MessageFlags;
use mailbridge_core::{EventType, MailboxId};
use sqlx::AnyConnection;

use crate::events::{append, email_event};
use crate::nodes::{Fence, check_fence};
use crate::sql::{SqlConn, Stmt};
use crate::{Result, Store, StoreError, time_from_ms};

/// Where an IMAP folder's sync stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderPosition {
    pub folder: String,
    pub uid_validity: u32,
    /// Every UID up to this one has been processed (kept or filtered out).
    pub last_uid: u32,
    pub highest_modseq: Option<u64>,
    /// Messages in the folder on the server at this position (`None`: not known).
    pub messages: Option<u32>,
}

/// How far a sync pass over a folder is, for people to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassProgress {
    /// Messages in the folder on the server when the pass began.
    pub messages: u32,
    /// Messages the pass set out to read.
    pub total: u32,
    /// Of them, read so far (stored, or left out by the tracking rule).
    pub done: u32,
    pub started_at: DateTime<Utc>,
}

/// A folder of a mailbox as the last sync pass left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderProgress {
    pub folder: String,
    /// The pass's progress; `None` for a folder last synced before progress was kept.
    pub pass: Option<PassProgress>,
    /// When the pass last wrote (a batch, or the end).
    pub updated_at: DateTime<Utc>,
    /// Why the folder's last pass failed, while it fails (the other folders go on).
    pub error: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
}

impl FolderProgress {
    /// While the pass is under way: the seconds it should still take, at its rate so far
    /// (from its start to its last batch).
    pub fn seconds_left(&self) -> Option<u64> {
        let p = self.pass?;
        let left = p.total.checked_sub(p.done).filter(|l| *l > 0)?;
        let spent = (self.updated_at - p.started_at).to_std().ok()?;
        (p.done > 0)
            .then(|| (spent.as_secs_f64() * f64::from(left) / f64::from(p.done)).ceil() as u64)
    }
}

#[derive(sqlx::FromRow)]
struct FolderRow {
    mailbox_id: String,
    folder: String,
    updated_at: i64,
    messages: Option<i64>,
    pass_total: Option<i64>,
    pass_done: Option<i64>,
    pass_started_at: Option<i64>,
    error: Option<String>,
    failing_since: Option<i64>,
}

impl Store {
    /// The folders of these mailboxes and how far their last passes are, by mailbox.
    pub async fn folder_progress(
        &self,
        mailboxes: &[MailboxId],
    ) -> Result<std::collections::HashMap<MailboxId, Vec<FolderProgress>>> {
        let mut out: std::collections::HashMap<MailboxId, Vec<FolderProgress>> =
            std::collections::HashMap::new();
        for chunk in mailboxes.chunks(500) {
            let ids: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let mut q = sqlx::query_as::<_, FolderRow>(sqlx::AssertSqlSafe(format!(
                "SELECT mailbox_id, folder, updated_at, messages, pass_total, pass_done, pass_started_at, \
                 error, failing_since \
                 FROM folder_states WHERE mailbox_id IN ({}) ORDER BY mailbox_id, folder",
                ids.join(", ")
            )));
            for id in chunk {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&self.pool).await? {
                let mailbox: MailboxId = row
                    .mailbox_id
                    .parse()
                    .map_err(|e| StoreError::corrupt("folder state", e))?;
                let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
                let pass = match (
                    row.messages,
                    row.pass_total,
                    row.pass_done,
                    row.pass_started_at,
                ) {
                    (Some(messages), Some(total), Some(done), Some(started)) => {
                        Some(PassProgress {
                            messages: count(messages),
                            total: count(total),
                            done: count(done),
                            started_at: time_from_ms(started),
                        })
                    }
                    _ => None,
                };
                out.entry(mailbox).or_default().push(FolderProgress {
                    folder: row.folder,
                    pass,
                    updated_at: time_from_ms(row.updated_at),
                    error: row.error,
                    failing_since: row.failing_since.map(time_from_ms),
                });
            }
        }
        Ok(out)
    }

    pub async fn folder_position(
        &self,
        mailbox: MailboxId,
        folder: &str,
    ) -> Result<Option<FolderPosition>> {
        // UIDVALIDITY 0 (never a server's, RFC 3501 §9 nz-number): a folder that failed before
        // its first pass — it has no position yet.
        let row: Option<(i64, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT uid_validity, last_uid, highest_modseq, messages FROM folder_states \
             WHERE mailbox_id = $1 AND folder = $2 AND uid_validity <> 0",
        )
        .bind(mailbox.to_string())
        .bind(folder)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(v, l, m, messages)| {
            let bad = |e: std::num::TryFromIntError| StoreError::corrupt("folder state", e);
            Ok(FolderPosition {
                folder: folder.to_owned(),
                uid_validity: u32::try_from(v).map_err(bad)?,
                last_uid: u32::try_from(l).map_err(bad)?,
                highest_modseq: m.and_then(|m| u64::try_from(m).ok()),
                messages: messages.and_then(|n| u32::try_from(n).ok()),
            })
        })
        .transpose()
    }

    /// Applies what a pass found on the server for mail already stored in `changes.folder`:
    /// flags and labels that changed (`email.updated`), messages no longer there
    /// (`email.deleted`, the record kept with `deleted_on_server_at`), and the folder's new
    /// HIGHESTMODSEQ — in one transaction, only while `fence` holds.
    pub async fn apply_folder_changes(
        &self,
        mailbox: MailboxId,
        changes: &FolderChanges,
    ) -> Result<FolderChangeReport> {
        let now = self.now_ms();
        let mid = mailbox.to_string();
        let mut tx = self.begin_write().await?;
        if let Some(fence) = &changes.fence {
            check_fence(&mut tx, self.backend, &mid, fence, now).await?;
        }
        let mut events = Vec::new();
        let mut report = FolderChangeReport::default();
        for id in changed_states(&mut tx, &mid, &changes.states).await? {
            report.updated += 1;
            events.extend(email_event(&mut tx, EventType::EmailUpdated, &id).await?);
        }
        if let Some(present) = &changes.present {
            for id in vanished(&mut tx, &mid, changes, present).await? {
                sqlx::query("UPDATE emails SET deleted_on_server_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                report.deleted += 1;
                events.extend(email_event(&mut tx, EventType::EmailDeleted, &id).await?);
            }
        }
        sqlx::query(
            "UPDATE folder_states SET highest_modseq = $1, messages = $2, updated_at = $3 \
             WHERE mailbox_id = $4 AND folder = $5",
        )
        .bind(changes.highest_modseq.and_then(|m| i64::try_from(m).ok()))
        .bind(i64::from(changes.messages))
        .bind(now)
        .bind(&mid)
        .bind(&changes.folder)
        .execute(&mut *tx)
        .await?;
        append(&mut tx, self.backend, now, &events).await?;
        self.commit(tx).await?;
        Ok(report)
    }

    /// Records that a folder's pass failed (`error`), for the mailbox's status; the first
    /// failure of a run is kept as `failing_since`. A later pass that stores a position
    /// clears it. With a `fence`, only while this node still holds the mailbox.
    pub async fn record_folder_error(
        &self,
        mailbox: MailboxId,
        folder: &str,
        error: &str,
        fence: Option<&Fence>,
    ) -> Result<()> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        if let Some(fence) = fence {
            check_fence(&mut tx, self.backend, &mailbox.to_string(), fence, now).await?;
        }
        sqlx::query(
            "INSERT INTO folder_states (mailbox_id, folder, uid_validity, last_uid, updated_at, error, failing_since) \
             VALUES ($1, $2, 0, 0, $3, $4, $3) ON CONFLICT (mailbox_id, folder) DO UPDATE SET \
             error = excluded.error, updated_at = excluded.updated_at, \
             failing_since = COALESCE(folder_states.failing_since, excluded.failing_since)",
        )
        .bind(mailbox.to_string())
        .bind(folder)
        .bind(now)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await
    }

    /// Sets an email's flags after the server took them (`PATCH /emails/{id}`), with an
    /// `email.updated` event when they changed. Returns whether they did.
    pub async fn set_email_flags(&self, email: &str, flags: MessageFlags) -> Result<bool> {
        let now = self.now_ms();
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE emails SET flags = $1 WHERE id = $2 AND (flags IS NULL OR flags <> $1)",
        )
        .bind(flags.to_imap())
        .bind(email)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if changed {
            let events: Vec<_> = email_event(&mut tx, EventType::EmailUpdated, email)
                .await?
                .into_iter()
                .collect();
            append(&mut tx, self.backend, now, &events).await?;
        }
        self.commit(tx).await?;
        Ok(changed)
    }
}

/// A message's state on the server, for the record of that message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// The record's `remote_key` (`imap/<folder>/<uidvalidity>/<uid>`, `gmail/<msgid>`).
    pub remote_key: String,
    pub flags: MessageFlags,
    /// On Gmail, its labels.
    pub gmail_labels: Option<Vec<String>>,
}

/// Which messages a folder holds on the server, up to a UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentUids {
    /// The folder's UIDVALIDITY: records under another are not judged.
    pub uid_validity: u32,
    pub last_uid: u32,
    pub uids: HashSet<u32>,
}

/// What a pass found in a folder about mail already stored.
#[derive(Debug, Clone, Default)]
pub struct FolderChanges {
    pub folder: String,
    /// The states read (all, or on a CONDSTORE server those changed since the last pass).
    pub states: Vec<ServerState>,
    /// When the folder's message count said something was expunged: every UID it holds.
    pub present: Option<PresentUids>,
    pub highest_modseq: Option<u64>,
    pub messages: u32,
    /// On Gmail: the synchronized folder of sent mail. A message gone from `folder` whose
    /// labels say it is still sent mail moves there instead of being deleted.
    pub gmail_sent_folder: Option<String>,
    pub fence: Option<Fence>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FolderChangeReport {
    /// Records whose flags or labels changed.
    pub updated: usize,
    /// Records whose message the server no longer has.
    pub deleted: usize,
}

/// Stores `states` that differ from their records; the ids of records that changed (a record
/// whose flags were not known before is filled in without counting as a change).
async fn changed_states(
    tx: &mut AnyConnection,
    mailbox: &str,
    states: &[ServerState],
) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for chunk in states.chunks(crate::emails::IN_LIST) {
        let list: Vec<String> = (0..chunk.len()).map(|k| format!("${}", k + 2)).collect();
        let mut q = sqlx::query_as::<_, (String, String, Option<String>, Option<String>)>(
            sqlx::AssertSqlSafe(format!(
                "SELECT id, remote_key, flags, gmail_labels FROM emails \
                 WHERE mailbox_id = $1 AND remote_key IN ({})",
                list.join(", ")
            )),
        )
        .bind(mailbox.to_owned());
        for state in chunk {
            q = q.bind(state.remote_key.clone());
        }
        let stored: HashMap<String, (String, Option<String>, Option<String>)> = q
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(id, key, flags, labels)| (key, (id, flags, labels)))
            .collect();
        for state in chunk {
            let Some((id, flags, labels)) = stored.get(&state.remote_key) else {
                continue; // left out by the tracking rule
            };
            let new_flags = state.flags.to_imap();
            let new_labels = state
                .gmail_labels
                .as_ref()
                .map(|l| serde_json::to_string(l).unwrap_or_default());
            let labels_changed = new_labels.is_some() && new_labels != *labels;
            if flags.as_deref() == Some(new_flags.as_str()) && !labels_changed {
                continue;
            }
            sqlx::query(
                "UPDATE emails SET flags = $1, gmail_labels = COALESCE($2, gmail_labels) WHERE id = $3",
            )
            .bind(&new_flags)
            .bind(&new_labels)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if flags.is_some() || labels_changed {
                changed.push(id.clone());
            }
        }
    }
    Ok(changed)
}

/// The records of `changes.folder` whose message is no longer there. On Gmail, a message
/// still labelled as sent mail moves to the sent folder instead (one record per message,
/// wherever it is).
async fn vanished(
    tx: &mut AnyConnection,
    mailbox: &str,
    changes: &FolderChanges,
    present: &PresentUids,
) -> Result<Vec<String>> {
    let rows: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT id, remote_key, uid, gmail_labels FROM emails WHERE mailbox_id = $1 AND folder = $2 \
         AND uid IS NOT NULL AND uid <= $3 AND deleted_on_server_at IS NULL",
    )
    .bind(mailbox)
    .bind(&changes.folder)
    .bind(i64::from(present.last_uid))
    .fetch_all(&mut *tx)
    .await?;
    let epoch = format!("imap/{}/{}/", changes.folder, present.uid_validity);
    let mut gone = Vec::new();
    for (id, key, uid, labels) in rows {
        let here = u32::try_from(uid).is_ok_and(|u| present.uids.contains(&u));
        let gmail = key.starts_with("gmail/");
        if here || !(gmail || key.starts_with(&epoch)) {
            continue;
        }
        let still_sent = labels
            .and_then(|l| serde_json::from_str::<Vec<String>>(&l).ok())
            .is_some_and(|l| l.iter().any(|l| l.eq_ignore_ascii_case("\\Sent")));
        match &changes.gmail_sent_folder {
            Some(sent) if gmail && still_sent && *sent != changes.folder => {
                sqlx::query("UPDATE emails SET folder = $1, uid = NULL WHERE id = $2")
                    .bind(sent)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            _ => gone.push(id),
        }
    }
    Ok(gone)
}

/// Stores a folder's position (and the pass's progress) after a batch; a folder that stores
/// one works again, so its error is cleared.
pub(crate) async fn save_position(
    tx: &mut impl SqlConn,
    mailbox: &str,
    p: &FolderPosition,
    progress: Option<PassProgress>,
    now: i64,
) -> Result<()> {
    tx.execute(Stmt::new(
        "INSERT INTO folder_states (mailbox_id, folder, uid_validity, last_uid, highest_modseq, updated_at, \
         messages, pass_total, pass_done, pass_started_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (mailbox_id, folder) DO UPDATE SET \
         uid_validity = excluded.uid_validity, last_uid = excluded.last_uid, \
         highest_modseq = CASE WHEN folder_states.uid_validity = excluded.uid_validity \
         THEN COALESCE(folder_states.highest_modseq, excluded.highest_modseq) ELSE excluded.highest_modseq END, \
         updated_at = excluded.updated_at, \
         messages = COALESCE(excluded.messages, folder_states.messages), pass_total = excluded.pass_total, \
         pass_done = excluded.pass_done, pass_started_at = excluded.pass_started_at, \
         error = NULL, failing_since = NULL",
    )
    .bind(mailbox)
    .bind(&p.folder)
    .bind(i64::from(p.uid_validity))
    .bind(i64::from(p.last_uid))
    .bind(p.highest_modseq.and_then(|m| i64::try_from(m).ok()))
    .bind(now)
    .bind(p.messages.or(progress.map(|g| g.messages)).map(i64::from))
    .bind(progress.map(|g| i64::from(g.total)))
    .bind(progress.map(|g| i64::from(g.done)))
    .bind(progress.map(|g| g.started_at.timestamp_millis())))
    .await?;
    Ok(())
}
