//! Incoming POP3: the UIDL list against the UIDLs already processed; new messages are read
//! one at a time and left on the server. A message larger than the endpoint's
//! `max_message_bytes` (by `LIST`) is stored as its header only (`TOP n 0`), `truncated`.

use chrono::NaiveDate;
use mailbridge_proto::pop3::Pop3Session;
use mailbridge_store::{Fence, MailboxRecord, NewEmail, RawMessage, Store, SyncBatch};

use super::plan::plan_pop3;
use super::{SyncError, SyncReport, track};
use mailbridge_core::parse::{parse, parse_header};

/// Messages committed together: POP3 reads one message per round trip, so a smaller batch
/// than IMAP's keeps a crash from repeating much.
const POP3_BATCH: usize = 50;

/// One pass over the maildrop. `since` drops older messages ("process emails received
/// after"); they are still marked as seen.
pub async fn sync_maildrop(
    store: &Store,
    session: &mut Pop3Session,
    mailbox: &MailboxRecord,
    since: Option<NaiveDate>,
    fence: Option<&Fence>,
) -> Result<SyncReport, SyncError> {
    let listing = session.uidl().await?;
    let seen = store.pop3_seen(mailbox.id).await?;
    let new = plan_pop3(&listing, &seen);
    let sizes = if new.is_empty() {
        std::collections::HashMap::new()
    } else {
        session.list().await?
    };
    let max = session.max_message_bytes() as u64;
    let mut report = SyncReport::default();
    for chunk in new.chunks(POP3_BATCH) {
        let mut batch = SyncBatch {
            fence: fence.cloned(),
            ..SyncBatch::default()
        };
        for item in chunk {
            let oversized = sizes.get(&item.number).copied().filter(|size| *size > max);
            let raw = match oversized {
                Some(size) => {
                    tracing::info!(mailbox = %mailbox.id, number = item.number, size, "a message larger than max_message_bytes: storing its header only");
                    session.top(item.number, 0).await?
                }
                None => session.retr(item.number).await?,
            };
            let parsed = match oversized {
                Some(_) => parse_header(&raw),
                None => parse(&raw),
            };
            report.fetched += 1;
            batch.pop3_seen.push(item.uid.clone());
            let too_old = match (since, parsed.date) {
                (Some(after), Some(date)) => date.date_naive() < after,
                _ => false,
            };
            if too_old || !track::keeps(store, mailbox.spec.tracking_rule, &parsed).await? {
                continue;
            }
            batch.emails.push(NewEmail {
                remote_key: format!("pop3/{}", item.uid),
                folder: None,
                uid: None,
                gmail_labels: Vec::new(),
                gmail_thread_id: None,
                tracking_token: None,
                flags: None,
                sent_by_owner: false,
                truncated_from: oversized,
                parsed,
                raw: RawMessage::new(raw),
                renumbered_from: None,
            });
        }
        report.stored += store.save_sync_batch(mailbox.id, batch).await?;
    }
    Ok(report)
}
