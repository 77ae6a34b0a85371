//! When things are due: cadences, cron schedules and the pure maths between them.
//!
//! Nothing here performs IO or reads the wall clock: callers pass `now` from a
//! [`Clock`](crate::clock::Clock), so every answer is reproducible in a test.

mod cron;
mod duration;
mod window;

use chrono::{DateTime, Utc};

pub use cron::{CronError, CronSchedule};
pub use duration::{Duration, DurationError};
pub use window::{Window, WindowError};

/// Where a credential stands against its cadence: the one answer to "is it due?" that
/// `vigil status`, `vigil config check` and `vigil rotate --all-due` share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// When the next rotation falls due.
    pub next: DateTime<Utc>,
    /// A rotation is already in flight: resuming it, not starting another, is what is due.
    pub in_flight: bool,
    now: DateTime<Utc>,
}

impl Standing {
    /// Whether a new rotation should start now.
    pub fn is_due(&self) -> bool {
        !self.in_flight && self.next <= self.now
    }

    /// Whole days past `next`; 0 when not yet due.
    pub fn overdue_days(&self) -> i64 {
        (self.now - self.next).num_days().max(0)
    }
}

/// Where a credential with `cadence` that last rotated at `last_rotated` stands at `now`.
///
/// A credential with no recorded rotation is due at once: nothing proves its age.
pub fn standing(
    cadence: Duration,
    last_rotated: Option<DateTime<Utc>>,
    in_flight: bool,
    now: DateTime<Utc>,
) -> Standing {
    let next = match last_rotated {
        // Saturating: a stored time far in the future must not panic a status command.
        Some(at) => at.checked_add_signed(cadence.to_chrono()).unwrap_or(DateTime::<Utc>::MAX_UTC),
        None => now,
    };
    Standing { next, in_flight, now }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn never_rotated_is_due_now() {
        let now = at("2026-11-24T10:00:00Z");
        let standing = standing("30d".parse().unwrap(), None, false, now);
        assert_eq!(standing.next, now);
        assert!(standing.is_due());
        assert_eq!(standing.overdue_days(), 0);
    }

    #[test]
    fn due_one_cadence_after_last_rotation() {
        let last = Some(at("2026-11-01T00:00:00Z"));
        let early = standing("30d".parse().unwrap(), last, false, at("2026-11-24T00:00:00Z"));
        assert_eq!(early.next, at("2026-12-01T00:00:00Z"));
        assert!(!early.is_due());
        let late = standing("30d".parse().unwrap(), last, false, at("2026-12-04T12:00:00Z"));
        assert!(late.is_due());
        assert_eq!(late.overdue_days(), 3);
    }

    #[test]
    fn a_last_rotation_far_in_the_future_saturates_instead_of_panicking() {
        let standing =
            standing("36525d".parse().unwrap(), Some(DateTime::<Utc>::MAX_UTC), false, at("2026-11-24T00:00:00Z"));
        assert_eq!(standing.next, DateTime::<Utc>::MAX_UTC);
        assert!(!standing.is_due());
        assert_eq!(standing.overdue_days(), 0);
    }

    #[test]
    fn a_rotation_in_flight_is_resumed_not_started_again() {
        let overdue = standing("30d".parse().unwrap(), None, true, at("2026-11-24T00:00:00Z"));
        assert!(!overdue.is_due());
    }
}
