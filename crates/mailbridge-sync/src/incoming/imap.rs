//! Incoming IMAP: new UIDs of INBOX fetched in batches with `BODY.PEEK[]` (never marking mail
//! read), each batch stored with the folder's new position in one transaction.

use chrono::NaiveDate;
use mailbridge_proto::imap::ImapSession;
use mailbridge_store::{FolderPosition, MailboxRecord, NewEmail, Store, SyncBatch};

use super::plan::{FolderPlan, ServerFolder, plan_folder};
use super::{BATCH_SIZE, SyncError, SyncReport, track};
use crate::parse::parse;

pub const INBOX: &str = "INBOX";

/// One pass over INBOX: fetch what is new since the stored position and store it.
/// `since` bounds the first sync ("process emails received after").
pub async fn sync_inbox(
    store: &Store,
    session: &mut ImapSession,
    mailbox: &MailboxRecord,
    since: Option<NaiveDate>,
) -> Result<SyncReport, SyncError> {
    let status = session.examine(INBOX).await?;
    let server = ServerFolder {
        uid_validity: status.uid_validity.unwrap_or(0),
        uid_next: status.uid_next,
    };
    let stored = store.folder_position(mailbox.id, INBOX).await?;
    let (first_uid, first_sync) = match plan_folder(stored.as_ref(), server) {
        FolderPlan::UpToDate => return Ok(SyncReport::default()),
        FolderPlan::FetchFrom { first_uid, resync } => {
            if resync {
                tracing::info!(mailbox = %mailbox.id, uid_validity = server.uid_validity, "UIDVALIDITY changed: reading INBOX again");
            }
            (first_uid, stored.is_none())
        }
    };
    let uids = session
        .uids_from(first_uid, if first_sync { since } else { None })
        .await?;
    let mut report = SyncReport::default();
    let position = |last_uid| FolderPosition {
        folder: INBOX.to_owned(),
        uid_validity: server.uid_validity,
        last_uid,
        highest_modseq: status.highest_modseq,
    };
    if uids.is_empty() {
        // Nothing to read (expunged, or before `since`): remember how far the server is.
        let last = server
            .uid_next
            .map_or(first_uid.saturating_sub(1), |n| n.saturating_sub(1));
        store
            .save_sync_batch(
                mailbox.id,
                SyncBatch {
                    position: Some(position(last)),
                    ..SyncBatch::default()
                },
            )
            .await?;
        return Ok(report);
    }
    // A pipeline: while batch k is parsed (on a blocking thread, so the other core works too)
    // and stored, batch k+1 is already being read from the server.
    let batches: Vec<&[u32]> = uids.chunks(BATCH_SIZE).collect();
    let epoch = format!("imap/{INBOX}/{}/", server.uid_validity);
    let mut in_hand = Some(session.uid_fetch(batches[0]).await?);
    for (k, batch) in batches.iter().enumerate() {
        let Some(fetched) = in_hand.take() else { break };
        let next = batches.get(k + 1).copied();
        let fetch_next = async {
            match next {
                Some(uids) => session.uid_fetch(uids).await.map(Some),
                None => Ok(None),
            }
        };
        let store_this = async {
            report.fetched += fetched.len();
            let parsed = tokio::task::spawn_blocking(move || {
                fetched
                    .into_iter()
                    .map(|m| (parse(&m.raw), m))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic())
                }
                SyncError::Interrupted
            })?;
            let mut emails = Vec::with_capacity(parsed.len());
            for (parsed, m) in parsed {
                if !track::keeps(store, mailbox.spec.tracking_rule, &parsed).await? {
                    continue;
                }
                emails.push(NewEmail {
                    // Gmail's X-GM-MSGID survives UIDVALIDITY changes and label moves;
                    // elsewhere a renumbered message is recognised by its bytes.
                    remote_key: match m.gmail_msg_id {
                        Some(id) => format!("gmail/{id}"),
                        None => format!("{epoch}{}", m.uid),
                    },
                    renumbered_from: m
                        .gmail_msg_id
                        .is_none()
                        .then(|| (format!("imap/{INBOX}/"), epoch.clone())),
                    folder: Some(INBOX.to_owned()),
                    uid: Some(m.uid),
                    gmail_labels: m.gmail_labels,
                    gmail_thread_id: m.gmail_thread_id,
                    tracking_token: None,
                    parsed,
                    raw: m.raw,
                });
            }
            let last = batch.last().copied().unwrap_or(first_uid);
            let batch = SyncBatch {
                emails,
                position: Some(position(last)),
                pop3_seen: Vec::new(),
            };
            store
                .save_sync_batch(mailbox.id, batch)
                .await
                .map_err(SyncError::from)
        };
        let (stored, fetched_next) = tokio::join!(store_this, fetch_next);
        report.stored += stored?;
        in_hand = fetched_next?;
    }
    Ok(report)
}
