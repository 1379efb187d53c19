//! [`ManualClock`]: time that moves only when a test says so.

use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use mailbridge_core::{Clock, SystemClock};

pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// Starts at the real current time, so tokens issued by real peers line up.
    pub fn new() -> Self {
        Self(Mutex::new(SystemClock.now()))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
