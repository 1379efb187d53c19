//! SQLite: this process's writers take turns at a gate of their own before they ask for
//! SQLite's write lock (see [`crate::Store::begin_write`]), first come first served — except
//! the webhook worker, which gives way: it waits, for a bounded time, until no other writer
//! is at the gate or through it and none has been for [`QUIET`]. A sync's batches (tens of
//! milliseconds apart while a first sync runs) then follow each other without waiting
//! behind a round of webhook bookkeeping; under writes that never pause the worker still
//! writes once per [`GIVE_WAY`], a round of many deliveries at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify, OwnedMutexGuard};
use tokio::time::Instant;

/// The longest a writer that gives way waits for the others before it queues like them.
pub const GIVE_WAY: Duration = Duration::from_millis(250);
/// How long the gate must have been free of other writers for one that gives way to go.
pub const QUIET: Duration = Duration::from_millis(30);

pub(crate) struct WriteGate {
    turn: Arc<Mutex<()>>,
    /// Writers waiting at the gate or through it that do not give way.
    pressing: Arc<AtomicUsize>,
    /// When the last of them left, in milliseconds since `opened`.
    left_ms: Arc<AtomicU64>,
    opened: Instant,
    /// Told when `pressing` falls to zero.
    clear: Arc<Notify>,
}

impl Default for WriteGate {
    fn default() -> Self {
        Self {
            turn: Arc::default(),
            pressing: Arc::default(),
            left_ms: Arc::default(),
            opened: Instant::now(),
            clear: Arc::default(),
        }
    }
}

/// A writer's turn: held until its transaction ends.
pub(crate) struct Turn {
    _turn: OwnedMutexGuard<()>,
    _pressing: Option<Pressing>,
}

/// One writer counted in `pressing` until dropped (through the gate and done, or gave up).
struct Pressing {
    count: Arc<AtomicUsize>,
    left_ms: Arc<AtomicU64>,
    opened: Instant,
    clear: Arc<Notify>,
}

impl Drop for Pressing {
    fn drop(&mut self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.left_ms.store(ms, Ordering::SeqCst);
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.clear.notify_waiters();
        }
    }
}

impl WriteGate {
    /// Queues for a turn, waiting at most `limit`.
    pub(crate) async fn enter(&self, limit: Duration) -> Option<Turn> {
        self.pressing.fetch_add(1, Ordering::SeqCst);
        let pressing = Pressing {
            count: self.pressing.clone(),
            left_ms: self.left_ms.clone(),
            opened: self.opened,
            clear: self.clear.clone(),
        };
        let turn = tokio::time::timeout(limit, self.turn.clone().lock_owned())
            .await
            .ok()?;
        Some(Turn {
            _turn: turn,
            _pressing: Some(pressing),
        })
    }

    /// Waits until no writer that does not give way is at the gate, nor has been for
    /// [`QUIET`] (at most [`GIVE_WAY`]), then queues for a turn, waiting at most `limit` more.
    pub(crate) async fn enter_giving_way(&self, limit: Duration) -> Option<Turn> {
        let deadline = Instant::now() + GIVE_WAY;
        loop {
            let cleared = self.clear.notified();
            tokio::pin!(cleared);
            // Registered before the count is read, so a fall to zero in between is not missed.
            cleared.as_mut().enable();
            let wake = if self.pressing.load(Ordering::SeqCst) == 0 {
                let left = self.opened + Duration::from_millis(self.left_ms.load(Ordering::SeqCst));
                if Instant::now() >= left + QUIET {
                    break;
                }
                (left + QUIET).min(deadline)
            } else {
                deadline
            };
            if Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = cleared => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        let turn = tokio::time::timeout(limit, self.turn.clone().lock_owned())
            .await
            .ok()?;
        Some(Turn {
            _turn: turn,
            _pressing: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_writer_giving_way_goes_after_the_others_but_not_later_than_its_bound() {
        let gate = Arc::new(WriteGate::default());
        let started = Instant::now();
        let first = gate.enter(Duration::from_secs(5)).await;
        assert!(first.is_some());
        // Another writer queues behind the first; the one giving way waits for both, and
        // then for the gate to stay quiet.
        let second = tokio::spawn({
            let gate = gate.clone();
            async move {
                let turn = gate.enter(Duration::from_secs(5)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(turn);
                Instant::now()
            }
        });
        let background = tokio::spawn({
            let gate = gate.clone();
            async move {
                let turn = gate.enter_giving_way(Duration::from_secs(5)).await;
                (turn.is_some(), Instant::now())
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(first);
        let second_done = second.await.unwrap();
        let (entered, at) = background.await.unwrap();
        assert!(entered);
        assert_eq!(second_done - started, Duration::from_millis(80));
        assert_eq!(at - second_done, QUIET, "it went before the gate was quiet");

        // Writers that keep coming: it goes once GIVE_WAY has passed, when the turn is free.
        let holder = gate.enter(Duration::from_secs(5)).await;
        let started = Instant::now();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                gate.enter_giving_way(Duration::from_secs(5))
                    .await
                    .is_some()
            }
        });
        tokio::time::sleep(GIVE_WAY + Duration::from_millis(10)).await;
        assert!(
            !waiting.is_finished(),
            "it cannot enter while the turn is held"
        );
        drop(holder);
        assert!(waiting.await.unwrap());
        assert_eq!(
            Instant::now() - started,
            GIVE_WAY + Duration::from_millis(10)
        );

        // A quiet gate: at once.
        tokio::time::sleep(QUIET).await;
        let started = Instant::now();
        assert!(
            gate.enter_giving_way(Duration::from_secs(5))
                .await
                .is_some()
        );
        assert_eq!(Instant::now(), started);
    }
}
