//! What a sync pass must fetch, decided from the server's state and ours alone, with no I/O.

use std::collections::{HashMap, HashSet};

use mailbridge_store::FolderPosition;

/// What `EXAMINE` said about the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFolder {
    pub uid_validity: u32,
    pub uid_next: Option<u32>,
}

/// What to do with an IMAP folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderPlan {
    /// Nothing new since the last pass.
    UpToDate,
    /// Fetch every UID from `first_uid` up. `resync` means the server renumbered the folder
    /// (a new UIDVALIDITY): everything is read again, and stored records are recognised by
    /// their bytes, so none is duplicated.
    FetchFrom { first_uid: u32, resync: bool },
}

/// | stored position            | server                              | plan                          |
/// |----------------------------|-------------------------------------|-------------------------------|
/// | none (first sync)          | any                                 | fetch from UID 1              |
/// | same UIDVALIDITY, last L   | UIDNEXT ≤ L+1                       | up to date                    |
/// | same UIDVALIDITY, last L   | UIDNEXT > L+1, or not reported      | fetch from L+1                |
/// | other UIDVALIDITY          | any                                 | fetch from UID 1, resync      |
pub fn plan_folder(stored: Option<&FolderPosition>, server: ServerFolder) -> FolderPlan {
    match stored {
        None => FolderPlan::FetchFrom {
            first_uid: 1,
            resync: false,
        },
        Some(s) if s.uid_validity != server.uid_validity => FolderPlan::FetchFrom {
            first_uid: 1,
            resync: true,
        },
        Some(s) => match server.uid_next {
            Some(next) if next <= s.last_uid.saturating_add(1) => FolderPlan::UpToDate,
            _ => FolderPlan::FetchFrom {
                first_uid: s.last_uid.saturating_add(1),
                resync: false,
            },
        },
    }
}

/// How a pass reads the flags of mail already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagRead {
    Nothing,
    /// Only the messages changed after this HIGHESTMODSEQ (CONDSTORE, RFC 7162).
    ChangedSince(u64),
    /// Every message's flags (a server without CONDSTORE).
    All,
}

/// What a pass reads about mail already stored in a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePlan {
    pub flags: FlagRead,
    /// Whether to list every UID the folder holds, to find what was expunged.
    pub check_expunges: bool,
}

/// | server                                  | flags                                |
/// |-----------------------------------------|--------------------------------------|
/// | CONDSTORE, HIGHESTMODSEQ as stored      | nothing changed: none read           |
/// | CONDSTORE, HIGHESTMODSEQ moved          | those changed since the stored one   |
/// | no CONDSTORE (or none stored yet)       | all, when a scan is allowed          |
///
/// Expunges: the folder held `stored.messages` messages at the last pass and `new` UIDs
/// arrived since; any other count now means some left, and only then is every UID listed.
pub fn plan_state(
    stored: &FolderPosition,
    server: &mailbridge_proto::imap::FolderStatus,
    new: u32,
    condstore: bool,
    flag_scan: bool,
) -> StatePlan {
    let flags = match (condstore, stored.highest_modseq, server.highest_modseq) {
        (true, Some(ours), Some(theirs)) if ours == theirs => FlagRead::Nothing,
        (true, Some(ours), Some(_)) => FlagRead::ChangedSince(ours),
        _ if flag_scan => FlagRead::All,
        _ => FlagRead::Nothing,
    };
    let check_expunges = match stored.messages {
        Some(before) => u64::from(server.exists) != u64::from(before) + u64::from(new),
        None => true, // not counted before: look once
    };
    StatePlan {
        flags,
        check_expunges,
    }
}

/// One download of an IMAP sync, in UID order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// These messages, whole.
    Whole(Vec<u32>),
    /// This message's header only: it is larger than the service takes whole.
    Header(u32),
}

impl Download {
    /// The highest UID it covers.
    pub fn last(&self) -> Option<u32> {
        match self {
            Download::Whole(uids) => uids.last().copied(),
            Download::Header(uid) => Some(*uid),
        }
    }
}

/// Bounds on one [`Download`].
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Messages in a pass's first download; the k-th download (counting from 0, header-only
    /// ones and ones the bytes cut short too) may hold `first` × 2^k, up to `count`. A small
    /// first batch starts the parse and the store early (each stage waits for the whole batch
    /// before it); large ones later fetch and commit less often.
    pub first: usize,
    /// Messages per download, at most.
    pub count: usize,
    /// Bytes per download (a single message larger than this is a download of its own).
    pub bytes: u64,
    /// A message above this is taken as its header only.
    pub max_message: u64,
}

impl Batching {
    /// The size up to which a message's own size is not asked for: `count` messages this
    /// large fit in `bytes`, and none is over `max_message`. Only the messages above it are
    /// looked up (IMAP `SEARCH LARGER`); the others are counted as this large.
    pub fn small(&self) -> u64 {
        let count = u64::try_from(self.count.max(1)).unwrap_or(u64::MAX);
        (self.bytes / count).min(self.max_message)
    }
}

/// Splits `uids` (ascending) into downloads by count and by bytes, in order, so the folder
/// position only moves forward. `sizes` (`RFC822.SIZE`) holds the messages larger than
/// [`Batching::small`]; a UID without one counts as that large (the most it can be, by the
/// server's sizes: a batch's actual bytes stay within its bound).
pub fn plan_downloads(uids: &[u32], sizes: &HashMap<u32, u64>, bounds: Batching) -> Vec<Download> {
    let mut plan = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0_u64);
    let small = bounds.small();
    for &uid in uids {
        let size = sizes.get(&uid).copied().unwrap_or(small);
        // `first` doubled once per download made so far, up to `count`.
        let count = u32::try_from(plan.len())
            .ok()
            .and_then(|k| 1_usize.checked_shl(k))
            .map_or(bounds.count, |times| {
                bounds.first.max(1).saturating_mul(times).min(bounds.count)
            });
        let full = !batch.is_empty()
            && (batch.len() >= count || bytes.saturating_add(size) > bounds.bytes);
        if full || (size > bounds.max_message && !batch.is_empty()) {
            plan.push(Download::Whole(std::mem::take(&mut batch)));
            bytes = 0;
        }
        if size > bounds.max_message {
            plan.push(Download::Header(uid));
        } else {
            batch.push(uid);
            bytes = bytes.saturating_add(size);
        }
    }
    if !batch.is_empty() {
        plan.push(Download::Whole(batch));
    }
    plan
}

/// POP3: the messages whose UIDL was never processed, in the server's order.
pub fn plan_pop3<'a>(
    listing: &'a [mailbridge_proto::pop3::Listing],
    seen: &HashSet<String>,
) -> Vec<&'a mailbridge_proto::pop3::Listing> {
    listing.iter().filter(|l| !seen.contains(&l.uid)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailbridge_proto::pop3::Listing;

    fn at(uid_validity: u32, last_uid: u32) -> FolderPosition {
        FolderPosition {
            folder: "INBOX".into(),
            uid_validity,
            last_uid,
            highest_modseq: None,
            messages: None,
        }
    }

    fn server(uid_validity: u32, uid_next: Option<u32>) -> ServerFolder {
        ServerFolder {
            uid_validity,
            uid_next,
        }
    }

    #[test]
    fn every_case_of_the_table() {
        assert_eq!(
            plan_folder(None, server(7, Some(1))),
            FolderPlan::FetchFrom {
                first_uid: 1,
                resync: false
            }
        );
        assert_eq!(
            plan_folder(None, server(7, None)),
            FolderPlan::FetchFrom {
                first_uid: 1,
                resync: false
            }
        );
        assert_eq!(
            plan_folder(Some(&at(7, 10)), server(7, Some(11))),
            FolderPlan::UpToDate
        );
        assert_eq!(
            plan_folder(Some(&at(7, 10)), server(7, Some(5))),
            FolderPlan::UpToDate
        );
        assert_eq!(
            plan_folder(Some(&at(7, 10)), server(7, Some(12))),
            FolderPlan::FetchFrom {
                first_uid: 11,
                resync: false
            }
        );
        assert_eq!(
            plan_folder(Some(&at(7, 10)), server(7, None)),
            FolderPlan::FetchFrom {
                first_uid: 11,
                resync: false
            }
        );
        assert_eq!(
            plan_folder(Some(&at(7, 10)), server(8, Some(3))),
            FolderPlan::FetchFrom {
                first_uid: 1,
                resync: true
            }
        );
        assert_eq!(
            plan_folder(Some(&at(7, u32::MAX)), server(7, None)),
            FolderPlan::FetchFrom {
                first_uid: u32::MAX,
                resync: false
            }
        );
    }

    #[test]
    fn pop3_fetches_only_unseen_uidls_in_order() {
        let listing: Vec<Listing> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, u)| Listing {
                number: i as u32 + 1,
                uid: (*u).into(),
            })
            .collect();
        let seen: HashSet<String> = ["b".to_owned()].into();
        let plan: Vec<&str> = plan_pop3(&listing, &seen)
            .iter()
            .map(|l| l.uid.as_str())
            .collect();
        assert_eq!(plan, ["a", "c"]);
        assert!(plan_pop3(&listing, &listing.iter().map(|l| l.uid.clone()).collect()).is_empty());
    }

    #[test]
    fn downloads_are_bounded_by_count_and_bytes_and_oversized_mail_is_a_header() {
        use Download::{Header, Whole};
        let bounds = Batching {
            first: 3,
            count: 3,
            bytes: 100,
            max_message: 500,
        };
        let sizes: HashMap<u32, u64> = [
            (1, 10),
            (2, 10),
            (3, 10),
            (4, 10),
            (5, 60),
            (6, 60),
            (7, 150),
            (8, 10),
            (9, 900),
            (10, 10),
            (12, 60),
        ]
        .into();
        // 11 and 13 were not found larger than `small` (or were expunged meanwhile): each
        // counts as 100 / 3 = 33 bytes, the most it can be.
        assert_eq!(bounds.small(), 33);
        let uids: Vec<u32> = (1..=13).collect();
        assert_eq!(
            plan_downloads(&uids, &sizes, bounds),
            vec![
                Whole(vec![1, 2, 3]), // three, the count
                Whole(vec![4, 5]),    // 70 bytes; with 6 it would be 130
                Whole(vec![6]),       // 60; 7 alone is over the bytes bound
                Whole(vec![7]),       // larger than a batch, smaller than the limit
                Whole(vec![8]),       // ends before the oversized one
                Header(9),            // over max_message
                Whole(vec![10, 11]),  // 10 + 33; with 12 it would be 103
                Whole(vec![12, 13]),  // 60 + 33
            ]
        );
        // Below a batch's share, the largest message taken whole is what need not be asked.
        let strict = Batching {
            max_message: 20,
            ..bounds
        };
        assert_eq!(strict.small(), 20);
        assert_eq!(plan_downloads(&[], &sizes, bounds), Vec::new());
        assert_eq!(Header(9).last(), Some(9));
        assert_eq!(Whole(vec![10, 11]).last(), Some(11));
    }

    #[test]
    fn downloads_grow_from_the_first_to_the_count_and_the_bytes_still_bound_them() {
        let bounds = Batching {
            first: 2,
            count: 8,
            bytes: 1_000,
            max_message: 1_000,
        };
        let lengths = |uids: &[u32], sizes: &HashMap<u32, u64>| -> Vec<usize> {
            plan_downloads(uids, sizes, bounds)
                .iter()
                .map(|d| match d {
                    Download::Whole(uids) => uids.len(),
                    Download::Header(_) => 1,
                })
                .collect()
        };
        let uids: Vec<u32> = (1..=40).collect();
        // 2, then twice the one before, up to the count: 2 + 4 + 8 + 8 + 8 + 8 = 38, then 2.
        assert_eq!(lengths(&uids, &HashMap::new()), [2, 4, 8, 8, 8, 8, 2]);
        // The bytes bound what the ramp allows: at 300 bytes each, three make a full batch.
        let heavy: HashMap<u32, u64> = uids.iter().map(|u| (*u, 300)).collect();
        assert_eq!(lengths(&uids[..12], &heavy), [2, 3, 3, 3, 1]);
        // A plan far longer than the doublings a number holds stays at the count.
        let many: Vec<u32> = (1..=1_000).collect();
        let one_byte: HashMap<u32, u64> = many.iter().map(|u| (*u, 1)).collect();
        let plan = lengths(&many, &one_byte);
        assert_eq!(plan.iter().sum::<usize>(), 1_000);
        assert!(plan[2..plan.len() - 1].iter().all(|n| *n == 8), "{plan:?}");
        let long = Batching {
            first: usize::MAX / 2,
            count: 3,
            ..bounds
        };
        assert_eq!(plan_downloads(&many[..9], &one_byte, long).len(), 3);
    }

    fn status(exists: u32, highest_modseq: Option<u64>) -> mailbridge_proto::imap::FolderStatus {
        mailbridge_proto::imap::FolderStatus {
            exists,
            uid_validity: Some(7),
            uid_next: Some(100),
            highest_modseq,
        }
    }

    #[test]
    fn condstore_reads_only_what_changed_and_nothing_when_nothing_did() {
        let stored = FolderPosition {
            highest_modseq: Some(40),
            messages: Some(10),
            ..at(7, 99)
        };
        let plan = |theirs, condstore, scan| {
            plan_state(&stored, &status(10, theirs), 0, condstore, scan).flags
        };
        assert_eq!(plan(Some(40), true, true), FlagRead::Nothing);
        assert_eq!(plan(Some(41), true, false), FlagRead::ChangedSince(40));
        // Without CONDSTORE every flag is read again, when a scan is allowed.
        assert_eq!(plan(Some(41), false, true), FlagRead::All);
        assert_eq!(plan(None, true, true), FlagRead::All);
        assert_eq!(plan(None, false, false), FlagRead::Nothing);
    }

    #[test]
    fn expunges_are_looked_for_only_when_the_count_says_something_left() {
        let stored = FolderPosition {
            messages: Some(10),
            ..at(7, 99)
        };
        let check = |exists, new| plan_state(&stored, &status(exists, None), new, false, false);
        assert!(!check(10, 0).check_expunges);
        assert!(!check(13, 3).check_expunges, "three arrived, none left");
        assert!(check(9, 0).check_expunges, "one left");
        assert!(check(12, 3).check_expunges, "three arrived and one left");
        let uncounted = FolderPosition {
            messages: None,
            ..at(7, 99)
        };
        assert!(plan_state(&uncounted, &status(10, None), 0, false, false).check_expunges);
    }
}
