//! [`Currency`]: when each mailbox this node works last confirmed it was current — a sync
//! pass that ended without error, whether it found new mail or not, or an idling session's
//! DONE answered with nothing to report (at least every `idle_refresh`). The node's lag is
//! the oldest of these; the mailboxes'
//! own `current_at` in the database is written from it in batches, so thousands of quiet
//! mailboxes cost one statement per few hundred of them per flush, not one per pass.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use mailbridge_core::MailboxId;

#[derive(Default)]
pub struct Currency {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The mailboxes this node works (incoming): since when each is known current, or since
    /// when this node has had it, when it has not confirmed yet.
    since: HashMap<MailboxId, DateTime<Utc>>,
    /// Confirmations not yet written to the database.
    unwritten: HashMap<MailboxId, DateTime<Utc>>,
}

impl Currency {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This node began working `mailbox` at `at` (nothing confirmed yet).
    pub fn working(&self, mailbox: MailboxId, at: DateTime<Utc>) {
        self.lock().since.entry(mailbox).or_insert(at);
    }

    /// This node no longer works `mailbox` (lease gone, disabled, outgoing only).
    pub fn stopped(&self, mailbox: MailboxId) {
        let mut inner = self.lock();
        inner.since.remove(&mailbox);
    }

    /// Keeps only the mailboxes `works` says this node still works.
    pub fn retain(&self, works: impl Fn(&MailboxId) -> bool) {
        self.lock().since.retain(|m, _| works(m));
    }

    /// A pass over `mailbox` ended without error at `at`.
    pub fn confirmed(&self, mailbox: MailboxId, at: DateTime<Utc>) {
        let mut inner = self.lock();
        inner.since.insert(mailbox, at);
        inner.unwritten.insert(mailbox, at);
    }

    /// The confirmations since the last call, to write.
    pub fn take_unwritten(&self) -> Vec<(MailboxId, DateTime<Utc>)> {
        self.lock().unwritten.drain().collect()
    }

    /// Seconds since the least recently confirmed mailbox of this node was current; `None`
    /// when the node works none.
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        let inner = self.lock();
        inner
            .since
            .values()
            .min()
            .map(|oldest| (now - *oldest).num_milliseconds().max(0) as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_oldest_confirmation_and_quiet_confirmations_count() {
        let c = Currency::default();
        let t0 = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000);
        let (a, b) = (MailboxId::new(), MailboxId::new());
        assert_eq!(c.lag_seconds(t0), None);
        c.working(a, t0);
        c.working(b, t0);
        c.confirmed(a, t0 + chrono::Duration::seconds(30));
        // b never confirmed: its lag runs from when this node took it.
        assert_eq!(
            c.lag_seconds(t0 + chrono::Duration::seconds(40)),
            Some(40.0)
        );
        c.confirmed(b, t0 + chrono::Duration::seconds(35));
        assert_eq!(
            c.lag_seconds(t0 + chrono::Duration::seconds(40)),
            Some(10.0)
        );
        // A second `working` does not reset what is known.
        c.working(a, t0 + chrono::Duration::seconds(39));
        assert_eq!(
            c.lag_seconds(t0 + chrono::Duration::seconds(40)),
            Some(10.0)
        );
        c.stopped(a);
        assert_eq!(c.lag_seconds(t0 + chrono::Duration::seconds(40)), Some(5.0));
        let mut written = c.take_unwritten();
        written.sort_by_key(|(_, at)| *at);
        assert_eq!(written.len(), 2);
        assert!(c.take_unwritten().is_empty());
        c.retain(|m| *m != b);
        assert_eq!(c.lag_seconds(t0), None);
    }
}
