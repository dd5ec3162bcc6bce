//! Time source, injectable so scenario tests can move time forward.

use jiff::{SignedDuration, Timestamp};
use std::sync::Mutex;

/// Where the controller reads "now".
pub trait Clock: Send + Sync + 'static {
    /// Current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock tests set and advance by hand.
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// Start at `t`.
    pub fn new(t: Timestamp) -> Self {
        Self(Mutex::new(t))
    }

    /// Move forward.
    pub fn advance(&self, d: SignedDuration) {
        let mut g = self.0.lock().expect("clock lock");
        *g += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().expect("clock lock")
    }
}
