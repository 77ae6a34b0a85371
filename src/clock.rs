//! Where vigil reads the time.
//!
//! Due-time maths, saga transitions and ledger timestamps take a [`Clock`] instead of calling
//! `Utc::now()`, so that tests and drills move time by hand and never sleep for a schedule.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current instant, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + test_offset()
    }
}

/// In `failpoints` builds (tests only, never release), `VIGIL_CLOCK_OFFSET=SECONDS` runs the
/// binary's clock ahead, so that a crash test can cross an overlap window without sleeping
/// through it.
fn test_offset() -> chrono::Duration {
    #[cfg(feature = "failpoints")]
    if let Some(seconds) = std::env::var("VIGIL_CLOCK_OFFSET").ok().and_then(|s| s.parse::<i64>().ok()) {
        return chrono::Duration::seconds(seconds);
    }
    chrono::Duration::zero()
}

/// A clock that stands still until it is moved: for tests and for replaying a schedule.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock that reads `start` until moved.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { now: Mutex::new(start) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(chrono::Duration::days(30));
        assert_eq!(clock.now().to_rfc3339(), "2026-01-31T00:00:00+00:00");
    }
}
