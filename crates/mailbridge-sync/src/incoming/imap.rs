//! Incoming IMAP, folder by folder: INBOX, the Sent folder (SPECIAL-USE `\Sent`, else a usual
//! name) and the folders the profile names. In each, new UIDs are fetched in batches with
//! `BODY.PEEK[]` (never marking mail read), each batch stored with the folder's new position
//! in one transaction. Sizes are read first (`RFC822.SIZE` of the messages `SEARCH LARGER`
//! finds above a batch's share of its bytes, or `max_message_bytes` if that is less): batches
//! are bounded in bytes as well as in messages (as far as the server's sizes are true), and a
//! message larger than the endpoint's `max_message_bytes` is stored as its header only,
//! `truncated`. Then what changed for mail already stored is read — flags
//! (only those changed since the last pass on a CONDSTORE server) and expunges — and applied.
//! Mail in Sent is the owner's own: stored `outgoing`, or joined to the record of what
//! Mailbridge sent. A folder other than INBOX that fails is reported on its own and skipped;
//! the others go on.

use chrono::NaiveDate;
use mailbridge_core::TrackingRule;
use mailbridge_core::message::MessageFlags;
use mailbridge_proto::ProtoError;
use mailbridge_proto::imap::{FetchedMessage, FolderStatus, ImapSession, MessageState};
use mailbridge_store::{
    Fence, FolderChanges, FolderPosition, MailboxRecord, NewEmail, PassProgress, PresentUids,
    RawMessage, ServerState, Store, SyncBatch,
};

use super::plan::{
    Batching, Download, FlagRead, FolderPlan, ServerFolder, plan_downloads, plan_folder, plan_state,
};
use super::{BATCH_BYTES, BATCH_SIZE, FIRST_BATCH, SyncError, SyncReport, track};
use mailbridge_core::parse::{parse, parse_header};

pub const INBOX: &str = "INBOX";

/// A folder to synchronize, and whose mail it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    pub name: String,
    /// The Sent folder: its mail is the owner's own, stored `outgoing`.
    pub sent: bool,
}

impl Folder {
    pub fn inbox() -> Self {
        Self {
            name: INBOX.to_owned(),
            sent: false,
        }
    }
}

/// The folders of a mailbox a session synchronizes: the Sent folder the server has, then the
/// profile's folders, then INBOX — last, so that it is the one open for IDLE.
pub async fn folders(
    session: &mut ImapSession,
    named: &[String],
) -> Result<Vec<Folder>, ProtoError> {
    let sent = match session.sent_folder().await {
        Ok(sent) => sent,
        // A server that refuses LIST this time: INBOX and the named folders are still read,
        // and the Sent folder is looked for again next pass.
        Err(e) if e.is_refusal() => {
            tracing::warn!(error = %e, "the server refused to list folders: the Sent folder waits for the next pass");
            None
        }
        Err(e) => return Err(e),
    };
    let mut out: Vec<Folder> = sent
        .iter()
        .map(|name| Folder {
            name: name.clone(),
            sent: true,
        })
        .collect();
    for name in named {
        if !out.iter().any(|f| f.name == *name) && !name.eq_ignore_ascii_case(INBOX) {
            out.push(Folder {
                name: name.clone(),
                sent: false,
            });
        }
    }
    out.push(Folder::inbox());
    Ok(out)
}

/// How a pass goes.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// The first sync reads only mail received on or after this day.
    pub since: Option<NaiveDate>,
    /// With a fence, each write commits only while this node still holds the mailbox's lease.
    pub fence: Option<Fence>,
    /// On a server without CONDSTORE, whether every flag may be read again (a full scan costs
    /// a line per message, so the engine bounds how often).
    pub flag_scan: bool,
    /// On Gmail: the Sent folder being synchronized (a message that leaves a folder but is
    /// still sent mail is not deleted).
    pub gmail_sent: Option<String>,
}

/// What a pass over a mailbox's folders did.
#[derive(Debug, Default)]
pub struct MailboxReport {
    pub sync: SyncReport,
    /// Folders other than INBOX that failed, with why; they were skipped.
    pub failed: Vec<(String, ProtoError)>,
}

/// Synchronizes `folders` (INBOX last), each in turn. A folder other than INBOX that the
/// server refuses (deleted, renamed, not allowed) is recorded on the mailbox's status and
/// skipped; the others go on. A lost connection, or INBOX failing, ends the pass.
pub async fn sync_folders(
    store: &Store,
    session: &mut ImapSession,
    mailbox: &MailboxRecord,
    folders: &[Folder],
    options: &PassOptions,
) -> Result<MailboxReport, SyncError> {
    // What the server said unasked until now, this pass reads; what it says during the pass
    // may be news the pass misses, and ends the next IDLE at once.
    session.forget_unsolicited();
    let mut report = MailboxReport::default();
    for folder in folders {
        match sync_folder(store, session, mailbox, folder, options).await {
            Ok(r) => {
                report.sync.fetched += r.fetched;
                report.sync.stored += r.stored;
            }
            // A provider's limit is the account's, not the folder's: the mailbox pauses.
            Err(SyncError::Proto(e))
                if folder.name != INBOX && e.is_refusal() && !super::is_provider_limit(&e) =>
            {
                tracing::warn!(mailbox = %mailbox.id, folder = %folder.name, error = %e, "a folder failed; the others go on");
                store
                    .record_folder_error(
                        mailbox.id,
                        &folder.name,
                        &e.to_string(),
                        options.fence.as_ref(),
                    )
                    .await?;
                report.failed.push((folder.name.clone(), e));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

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

/// One pass over INBOX alone ([`sync_folder`]), every flag read where CONDSTORE is missing.
pub async fn sync_inbox(
    store: &Store,
    session: &mut ImapSession,
    mailbox: &MailboxRecord,
    since: Option<NaiveDate>,
    fence: Option<&Fence>,
) -> Result<SyncReport, SyncError> {
    let options = PassOptions {
        since,
        fence: fence.cloned(),
        flag_scan: true,
        gmail_sent: None,
    };
    sync_folder(store, session, mailbox, &Folder::inbox(), &options).await
}

/// One pass over a folder: fetch what is new since the stored position and store it, then
/// read and apply what changed for the mail already stored (flags, expunges).
pub async fn sync_folder(
    store: &Store,
    session: &mut ImapSession,
    mailbox: &MailboxRecord,
    folder: &Folder,
    options: &PassOptions,
) -> Result<SyncReport, SyncError> {
    let status = session.examine(&folder.name).await?;
    let stored = store.folder_position(mailbox.id, &folder.name).await?;
    let server = ServerFolder {
        uid_validity: status.uid_validity.unwrap_or(0),
        uid_next: status.uid_next,
    };
    let (report, new) = match plan_folder(stored.as_ref(), server) {
        FolderPlan::UpToDate => (SyncReport::default(), 0),
        FolderPlan::FetchFrom { first_uid, resync } => {
            if resync {
                tracing::info!(mailbox = %mailbox.id, folder = %folder.name, uid_validity = server.uid_validity, "UIDVALIDITY changed: reading the folder again");
            }
            let first_sync = stored.is_none();
            let since = if first_sync { options.since } else { None };
            let uids = session.uids_from(first_uid, since).await?;
            let new = u32::try_from(uids.len()).unwrap_or(u32::MAX);
            let read = NewMail {
                store,
                mailbox,
                folder,
                status: &status,
                first_uid,
                uids,
                fence: options.fence.as_ref(),
            };
            (read.fetch_and_store(session).await?, new)
        }
    };
    // A first pass read every flag with the mail; after a renumbering, the records were
    // matched again as they were read.
    if let Some(stored) = stored.filter(|s| s.uid_validity == server.uid_validity) {
        follow_changes(
            store, session, mailbox, folder, &status, &stored, new, options,
        )
        .await?;
    }
    Ok(report)
}

/// Reads what changed on the server for the mail of `folder` already stored, and applies it.
#[allow(clippy::too_many_arguments)]
async fn follow_changes(
    store: &Store,
    session: &mut ImapSession,
    mailbox: &MailboxRecord,
    folder: &Folder,
    status: &FolderStatus,
    stored: &FolderPosition,
    new: u32,
    options: &PassOptions,
) -> Result<(), SyncError> {
    let plan = plan_state(
        stored,
        status,
        new,
        session.has("CONDSTORE"),
        options.flag_scan,
    );
    let states: Vec<MessageState> = match plan.flags {
        FlagRead::Nothing => Vec::new(),
        FlagRead::ChangedSince(m) => session.uid_states(stored.last_uid, Some(m)).await?,
        FlagRead::All => session.uid_states(stored.last_uid, None).await?,
    };
    let present = if plan.check_expunges {
        Some(PresentUids {
            uid_validity: stored.uid_validity,
            last_uid: stored.last_uid,
            uids: session.uids_from(1, None).await?.into_iter().collect(),
        })
    } else {
        None
    };
    if states.is_empty() && present.is_none() && stored.highest_modseq == status.highest_modseq {
        return Ok(());
    }
    let epoch = format!("imap/{}/{}/", folder.name, stored.uid_validity);
    let changes = FolderChanges {
        folder: folder.name.clone(),
        states: states
            .into_iter()
            .map(|m| ServerState {
                remote_key: match m.gmail_msg_id {
                    Some(id) => format!("gmail/{id}"),
                    None => format!("{epoch}{}", m.uid),
                },
                flags: MessageFlags::from_imap(&m.flags),
                gmail_labels: m.gmail_msg_id.map(|_| m.gmail_labels),
            })
            .collect(),
        present,
        // Only once read: a pass that stops before this reads the same changes again.
        highest_modseq: status.highest_modseq,
        messages: status.exists,
        gmail_sent_folder: options.gmail_sent.clone(),
        fence: options.fence.clone(),
    };
    let applied = store.apply_folder_changes(mailbox.id, &changes).await?;
    if applied.updated + applied.deleted > 0 {
        tracing::debug!(mailbox = %mailbox.id, folder = %folder.name, ?applied, "followed changes on the server");
    }
    Ok(())
}

/// The new mail of a folder to fetch and store.
struct NewMail<'a> {
    store: &'a Store,
    mailbox: &'a MailboxRecord,
    folder: &'a Folder,
    status: &'a FolderStatus,
    first_uid: u32,
    /// The UIDs to read, ascending.
    uids: Vec<u32>,
    fence: Option<&'a Fence>,
}

impl NewMail<'_> {
    async fn fetch_and_store(self, session: &mut ImapSession) -> Result<SyncReport, SyncError> {
        let NewMail {
            store,
            mailbox,
            folder,
            status,
            first_uid,
            uids,
            fence,
        } = self;
        let server = ServerFolder {
            uid_validity: status.uid_validity.unwrap_or(0),
            uid_next: status.uid_next,
        };
        let started_at = store.now();
        // How far the pass is once everything up to `last` is read, for the mailbox's status.
        let progress = |last: u32| PassProgress {
            messages: status.exists,
            total: u32::try_from(uids.len()).unwrap_or(u32::MAX),
            done: u32::try_from(uids.partition_point(|u| *u <= last)).unwrap_or(u32::MAX),
            started_at,
        };
        let mut report = SyncReport::default();
        let batching = Batching {
            first: FIRST_BATCH,
            count: BATCH_SIZE,
            bytes: BATCH_BYTES,
            max_message: session.max_message_bytes() as u64,
        };
        let sizes: std::collections::HashMap<u32, u64> = if uids.is_empty() {
            std::collections::HashMap::new()
        } else {
            session
                .uid_sizes_above(&uids, batching.small())
                .await?
                .into_iter()
                .collect()
        };
        let downloads = plan_downloads(&uids, &sizes, batching);
        let position = |last_uid| FolderPosition {
            folder: folder.name.clone(),
            uid_validity: server.uid_validity,
            last_uid,
            highest_modseq: status.highest_modseq,
            messages: Some(status.exists),
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
        let folder_key = format!("imap/{}/", folder.name);
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
                        folder: Some(folder.name.clone()),
                        uid: Some(m.uid),
                        flags: Some(MessageFlags::from_imap(&m.flags)),
                        sent_by_owner: folder.sent
                            || m.gmail_labels
                                .iter()
                                .any(|l| l.eq_ignore_ascii_case("\\Sent")),
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
}
