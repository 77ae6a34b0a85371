//! When things are due: cadences, cron schedules and the pure maths between them.
//!
//! Nothing here performs IO or reads the wall clock: callers pass `now` from a
//! [`Clock`](crate::clock::Clock), so every answer is reproducible in a test.

mod cron;
mod duration;

use chrono::{DateTime, Utc};

pub use cron::{CronError, CronSchedule};
pub use duration::{Duration, DurationError};

/// When a credential with `cadence` that last rotated at `last_rotated` is next due.
///
/// A credential with no recorded rotation is due at once: nothing proves its age.
pub fn next_due(last_rotated: Option<DateTime<Utc>>, cadence: Duration, now: DateTime<Utc>) -> DateTime<Utc> {
    match last_rotated {
        Some(at) => at + cadence.to_chrono(),
        None => now,
    }
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
        assert_eq!(next_due(None, "30d".parse().unwrap(), now), now);
    }

    #[test]
    fn due_one_cadence_after_last_rotation() {
        let due = next_due(Some(at("2026-11-01T00:00:00Z")), "30d".parse().unwrap(), at("2026-11-24T00:00:00Z"));
        assert_eq!(due, at("2026-12-01T00:00:00Z"));
    }
}
