//! Incoming IMAP: new UIDs of INBOX fetched in batches with `BODY.PEEK[]` (never marking mail
//! read), each batch stored with the folder's new position in one transaction. Sizes are read
//! first (`RFC822.SIZE`): batches are bounded in bytes as well as in messages, and a message
//! larger than the endpoint's `max_message_bytes` is stored as its header only, `truncated`.

use chrono::NaiveDate;
use mailbridge_core::TrackingRule;
use mailbridge_proto::ProtoError;
use mailbridge_proto::imap::{FetchedMessage, ImapSession};
use mailbridge_store::{
    Fence, FolderPosition, MailboxRecord, NewEmail, PassProgress, RawMessage, Store, SyncBatch,
};

use super::plan::{Batching, Download, FolderPlan, ServerFolder, plan_downloads, plan_folder};
use super::{BATCH_SIZE, SyncError, SyncReport, track};
use crate::parse::{parse, parse_header};

pub const INBOX: &str = "INBOX";

/// Bytes per download at most (a single larger message is a download of its own): with the
/// pipeline's stages a batch apart, a few of these are in memory at once.
const BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// A batch's messages. When the server refuses part of the batch (Gmail: "Some messages
/// could not be FETCHed", while it cannot read one of them), the messages it did not give are
/// asked for alone, so the one it cannot give holds back only itself: the others come back
/// with the first refused UID and the refusal.
async fn fetch_batch(
    session: &mut ImapSession,
    batch: &[u32],
) -> Result<(Vec<FetchedMessage>, Option<(u32, ProtoError)>), ProtoError> {
    let (mut fetched, refusal) = session.uid_fetch_some(batch).await?;
    let Some(refusal) = refusal else {
        return Ok((fetched, None));
    };
    let got: std::collections::HashSet<u32> = fetched.iter().map(|m| m.uid).collect();
    let missing: Vec<u32> = batch.iter().copied().filter(|u| !got.contains(u)).collect();
    let mut refused = match missing.as_slice() {
        [] => return Ok((fetched, None)), // all there after all
        [uid] => return Ok((fetched, Some((*uid, refusal)))),
        _ => None,
    };
    tracing::info!(missing = missing.len(), error = %refusal, "the server refused part of a batch; asking for the rest one by one");
    for uid in missing {
        let (one, no) = session.uid_fetch_some(&[uid]).await?;
        fetched.extend(one);
        if let Some(no) = no {
            refused.get_or_insert((uid, no));
        }
    }
    fetched.sort_by_key(|m| m.uid);
    Ok((fetched, refused))
}

/// The messages of `batch` the mailbox's tracking rule keeps, judged by their headers, so
/// only those are downloaded whole: all of them under `all`, none under `none`; under
/// `responses` and `known_contacts` the headers (`BODY.PEEK[HEADER]`) say. When the server
/// will not give the headers, all of them (the store applies the rule again).
async fn wanted_by_rule(
    store: &Store,
    session: &mut ImapSession,
    mailbox: &MailboxRecord,
    batch: &[u32],
) -> Result<Vec<u32>, SyncError> {
    match mailbox.spec.tracking_rule {
        TrackingRule::All => return Ok(batch.to_vec()),
        TrackingRule::None => return Ok(Vec::new()),
        TrackingRule::Responses | TrackingRule::KnownContacts => {}
    }
    let (headers, refused) = session.uid_fetch_headers(batch).await?;
    if refused.is_some() {
        return Ok(batch.to_vec());
    }
    let mut wanted = Vec::with_capacity(headers.len());
    for m in headers {
        if track::keeps(store, mailbox.spec.tracking_rule, &parse_header(&m.raw)).await? {
            wanted.push(m.uid);
        }
    }
    Ok(wanted)
}

/// One pass over INBOX: fetch what is new since the stored position and store it.
/// `since` bounds the first sync ("process emails received after"); with a `fence`, each
/// batch commits only while this node still holds the mailbox's lease.
pub async fn sync_inbox(
    store: &Store,
    session: &mut ImapSession,
    mailbox: &MailboxRecord,
    since: Option<NaiveDate>,
    fence: Option<&Fence>,
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
    let started_at = store.now();
    let uids = session
        .uids_from(first_uid, if first_sync { since } else { None })
        .await?;
    // How far the pass is once everything up to `last` is read, for the mailbox's status.
    let progress = |last: u32| PassProgress {
        messages: status.exists,
        total: u32::try_from(uids.len()).unwrap_or(u32::MAX),
        done: u32::try_from(uids.partition_point(|u| *u <= last)).unwrap_or(u32::MAX),
        started_at,
    };
    let mut report = SyncReport::default();
    let sizes: std::collections::HashMap<u32, u64> = if uids.is_empty() {
        std::collections::HashMap::new()
    } else {
        session.uid_sizes(first_uid).await?.into_iter().collect()
    };
    let downloads = plan_downloads(
        &uids,
        &sizes,
        Batching {
            count: BATCH_SIZE,
            bytes: BATCH_BYTES,
            max_message: session.max_message_bytes() as u64,
        },
    );
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
                    fence: fence.cloned(),
                    progress: Some(progress(last)),
                    ..SyncBatch::default()
                },
            )
            .await?;
        return Ok(report);
    }
    // Three stages joined on this task, one batch apart: while batch k is stored, batch k+1
    // is parsed (on a blocking thread, so the other core works too) and batch k+2 is read from
    // the server. Batches reach the store in order, so the folder position only moves forward;
    // when a stage fails, what was read before it is still stored.
    let folder_key = format!("imap/{INBOX}/");
    let epoch = format!("{folder_key}{}/", server.uid_validity);
    let (fetched_tx, mut fetched_rx) = tokio::sync::mpsc::channel(1);
    let (parsed_tx, mut parsed_rx) = tokio::sync::mpsc::channel(1);
    let fetch = async {
        for download in &downloads {
            let (fetched, refused) = match download {
                Download::Whole(batch) => {
                    let wanted = wanted_by_rule(store, session, mailbox, batch).await?;
                    fetch_batch(session, &wanted).await?
                }
                Download::Header(uid) => {
                    tracing::info!(mailbox = %mailbox.id, uid, size = sizes.get(uid), "a message larger than max_message_bytes: storing its header only");
                    let (fetched, refused) = session.uid_fetch_headers(&[*uid]).await?;
                    (fetched, refused.map(|r| (*uid, r)))
                }
            };
            // The position stops just before a message the server would not give: the next
            // pass asks for it again (what follows it is stored now, and not twice later).
            let last = match &refused {
                Some((uid, _)) => uid.saturating_sub(1),
                None => download.last().unwrap_or(first_uid),
            };
            let header_only = matches!(download, Download::Header(_));
            if fetched_tx.send((last, fetched, header_only)).await.is_err() {
                break; // a later stage stopped
            }
            if let Some((_, refusal)) = refused {
                return Err(refusal.into());
            }
        }
        drop(fetched_tx);
        Ok::<_, SyncError>(())
    };
    let parse_stage = async {
        while let Some((last, fetched, header_only)) = fetched_rx.recv().await {
            let parsed = tokio::task::spawn_blocking(move || {
                fetched
                    .into_iter()
                    .map(|mut m: FetchedMessage| {
                        let raw = RawMessage::new(std::mem::take(&mut m.raw));
                        let parsed = if header_only {
                            parse_header(raw.bytes())
                        } else {
                            parse(raw.bytes())
                        };
                        (parsed, raw, m)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic())
                }
                SyncError::Interrupted
            })?;
            if parsed_tx.send((last, parsed, header_only)).await.is_err() {
                break;
            }
        }
        drop(parsed_tx);
        Ok::<_, SyncError>(())
    };
    let store_stage = async {
        while let Some((last, parsed, header_only)) = parsed_rx.recv().await {
            report.fetched += parsed.len();
            let mut emails = Vec::with_capacity(parsed.len());
            for (parsed, raw, m) in parsed {
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
                        .then(|| (folder_key.clone(), epoch.clone())),
                    folder: Some(INBOX.to_owned()),
                    uid: Some(m.uid),
                    gmail_labels: m.gmail_labels,
                    gmail_thread_id: m.gmail_thread_id,
                    tracking_token: None,
                    truncated_from: header_only
                        .then(|| sizes.get(&m.uid).copied().unwrap_or_default()),
                    parsed,
                    raw,
                });
            }
            let batch = SyncBatch {
                emails,
                position: Some(position(last)),
                pop3_seen: Vec::new(),
                fence: fence.cloned(),
                progress: Some(progress(last)),
            };
            report.stored += store.save_sync_batch(mailbox.id, batch).await?;
        }
        Ok::<_, SyncError>(())
    };
    let (fetched, parsed, stored) = tokio::join!(fetch, parse_stage, store_stage);
    stored?;
    parsed?;
    fetched?;
    Ok(report)
}
