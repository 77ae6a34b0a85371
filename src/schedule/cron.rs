//! Cron expressions, validated when configuration loads with the same parser settings the
//! daemon's scheduler (tokio-cron-scheduler, built on croner) uses, so that a schedule
//! `vigil config check` accepts is one the daemon can run.

use std::fmt;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A validated cron schedule in UTC.
#[derive(Clone)]
pub struct CronSchedule {
    /// Always six fields (seconds first), the form the scheduler takes.
    normalized: String,
    cron: Cron,
}

/// Why a cron expression was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "`{expression}` is not a valid cron schedule ({reason}); write 5 fields `min hour day month weekday` or 6 with seconds first, e.g. `0 3 * * *`"
)]
pub struct CronError {
    expression: String,
    reason: String,
}

impl CronSchedule {
    /// Parses a 5-field (minute first) or 6-field (seconds first) expression.
    pub fn parse(expression: &str) -> Result<Self, CronError> {
        let fields = expression.split_whitespace().count();
        let normalized = match fields {
            5 => format!("0 {}", expression.trim()),
            6 => expression.split_whitespace().collect::<Vec<_>>().join(" "),
            n => {
                return Err(CronError { expression: expression.to_owned(), reason: format!("{n} fields") });
            }
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(&normalized)
            .map_err(|err| CronError { expression: expression.to_owned(), reason: err.to_string() })?;
        Ok(Self { normalized, cron })
    }

    /// The first time strictly after `after` that the schedule fires, if any.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// The longest time between two firings from `from` on, over about a year or 10,000
    /// firings, whichever comes first: how old the newest run can be just before the next.
    /// `None` when it never fires twice.
    pub fn longest_gap(&self, from: DateTime<Utc>) -> Option<chrono::Duration> {
        let horizon = from + chrono::Duration::days(400);
        let mut previous = self.next_after(from)?;
        let mut longest: Option<chrono::Duration> = None;
        for _ in 0..10_000 {
            let Some(next) = self.next_after(previous).filter(|next| *next <= horizon) else { break };
            longest = Some(longest.map_or(next - previous, |l| l.max(next - previous)));
            previous = next;
        }
        longest
    }

    /// The six-field form, seconds first.
    pub fn as_str(&self) -> &str {
        &self.normalized
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CronSchedule").field(&self.normalized).finish()
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized)
    }
}

impl serde::Serialize for CronSchedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.normalized)
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.normalized == other.normalized
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn the_longest_gap_is_the_widest_space_between_firings() {
        let from = at("2026-01-01T00:00:00Z");
        let gap = |cron: &str| CronSchedule::parse(cron).unwrap().longest_gap(from).map(|d| d.num_minutes());
        assert_eq!(gap("0 2 * * *"), Some(24 * 60));
        assert_eq!(gap("*/10 * * * *"), Some(10));
        // Weekdays only: Friday to Monday.
        assert_eq!(gap("0 2 * * MON-FRI"), Some(3 * 24 * 60));
        assert_eq!(gap("0 4 * * SUN"), Some(7 * 24 * 60));
    }

    #[test]
    fn five_fields_gain_a_seconds_field() {
        let cron = CronSchedule::parse("0 3 * * *").unwrap();
        assert_eq!(cron.as_str(), "0 0 3 * * *");
        assert_eq!(cron.next_after(at("2026-11-24T10:00:00Z")), Some(at("2026-11-25T03:00:00Z")));
    }

    #[test]
    fn six_fields_are_kept() {
        let cron = CronSchedule::parse("30 15 2 * * SUN").unwrap();
        assert_eq!(cron.next_after(at("2026-11-24T10:00:00Z")), Some(at("2026-11-29T02:15:30Z")));
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in ["", "* *", "61 * * * *", "0 25 * * *", "0 0 * * FOO", "1 2 3 4 5 6 7 8"] {
            assert!(CronSchedule::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
