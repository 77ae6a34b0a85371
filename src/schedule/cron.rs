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
