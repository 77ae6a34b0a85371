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

/// An id that sorts by time: the UTC time to the second and 32 random bits
/// (`20261124T020000Z-00ff00ff`). Backups and drill runs are named so.
pub fn sortable_id(clock: &dyn Clock) -> String {
    sortable_id_at(clock.now())
}

/// [`sortable_id`] for a time already read.
pub fn sortable_id_at(now: DateTime<Utc>) -> String {
    use rand_core::RngCore as _;
    format!("{}-{:08x}", now.format("%Y%m%dT%H%M%SZ"), rand_core::OsRng.next_u32())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sortable_ids_sort_by_time() {
        let clock = ManualClock::new(DateTime::parse_from_rfc3339("2026-11-24T02:00:00Z").unwrap().to_utc());
        let first = sortable_id(&clock);
        clock.advance(chrono::Duration::seconds(1));
        assert!(first.starts_with("20261124T020000Z-"));
        assert!(sortable_id(&clock) > first);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(chrono::Duration::days(30));
        assert_eq!(clock.now().to_rfc3339(), "2026-01-31T00:00:00+00:00");
    }
}
