//! [`ConnectionLimits`]: the connections each profile's mailboxes hold open at once — IDLE
//! sessions, sync passes, SMTP sends and Test & Enable runs alike — never more than the
//! profile's `max_connections`. IDLE sessions hold theirs for as long as they wait, so they
//! may take all but a reserve (a tenth): syncs, sends and tests always find a connection in
//! time, and mailboxes beyond that poll every `poll_interval_seconds` instead of idling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mailbridge_core::ProfileId;
use mailbridge_store::ProfileRecord;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One node's connection slots, per profile. Shared by the engine and Test & Enable.
#[derive(Default)]
pub struct ConnectionLimits {
    profiles: Mutex<HashMap<ProfileId, (u32, Arc<Semaphore>)>>,
}

impl ConnectionLimits {
    /// The profile's semaphore, made anew when its `max_connections` changed (slots held on
    /// the old one are given back to it; new ones come from the new size).
    fn semaphore(&self, profile: &ProfileRecord) -> Arc<Semaphore> {
        let size = profile.spec.max_connections.max(1);
        let mut map = self
            .profiles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = map
            .entry(profile.id)
            .or_insert_with(|| (size, Arc::new(Semaphore::new(size as usize))));
        if entry.0 != size {
            *entry = (size, Arc::new(Semaphore::new(size as usize)));
        }
        entry.1.clone()
    }

    /// Waits for a slot of the profile (for a sync pass, a send, a test).
    pub async fn acquire(&self, profile: &ProfileRecord) -> Option<OwnedSemaphorePermit> {
        // The semaphores are never closed, so this waits rather than fails.
        self.semaphore(profile).acquire_owned().await.ok()
    }

    /// A slot to hold through IDLE, when one is free beyond the reserve; `None` means the
    /// mailbox polls for now.
    pub fn try_idle(&self, profile: &ProfileRecord) -> Option<OwnedSemaphorePermit> {
        let semaphore = self.semaphore(profile);
        // At least one is always left, or a poll, a send or a test could wait forever.
        let reserve = (profile.spec.max_connections / 10).max(1) as usize;
        if semaphore.available_permits() <= reserve {
            return None;
        }
        semaphore.try_acquire_owned().ok()
    }
}
