//! What a sync pass must fetch, decided from the server's state and ours alone, with no I/O.

use std::collections::HashSet;

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
}
