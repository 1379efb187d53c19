//! The tracking rule: which incoming messages become email records.

use mailbridge_core::TrackingRule;
use mailbridge_core::message::ParsedEmail;
use mailbridge_store::{Store, StoreError};

/// Whether the rule keeps this message. A message that could not be parsed is always kept
/// (raw, flagged): nobody can tell it is not wanted.
pub(crate) async fn keeps(
    store: &Store,
    rule: TrackingRule,
    email: &ParsedEmail,
) -> Result<bool, StoreError> {
    if email.parse_error.is_some() {
        return Ok(true);
    }
    match rule {
        TrackingRule::All => Ok(true),
        TrackingRule::None => Ok(false),
        TrackingRule::Responses => {
            let ids: Vec<String> = email
                .in_reply_to
                .iter()
                .chain(&email.references)
                .cloned()
                .collect();
            store
                .is_reply_to_sent_mail(&ids, email.subject.as_deref())
                .await
        }
        TrackingRule::KnownContacts => {
            let parties: Vec<String> = email
                .from
                .iter()
                .chain(&email.to)
                .chain(&email.cc)
                .map(|p| p.address.clone())
                .collect();
            store.any_known_contact(&parties).await
        }
    }
}
