//! Cron expressions, validated when configuration loads with the same parser settings the
//! daemon's scheduler (tokio-cron-scheduler, built on croner) uses, so that a schedule
//! `vigil config check` accepts is one the daemon can run.
//!
//! UTC unless the expression starts with a time zone, as cron and Kubernetes write it:
//! `TZ=Europe/Berlin 0 3 * * *` (or `CRON_TZ=`) fires at 03:00 Berlin time, summer and winter.

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A validated cron schedule, in UTC or the time zone it names.
#[derive(Clone)]
pub struct CronSchedule {
    /// Always six fields (seconds first), after `TZ=ZONE ` when it names one.
    normalized: String,
    cron: Cron,
    zone: Option<Tz>,
}

/// Why a cron expression was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "`{expression}` is not a valid cron schedule ({reason}); write 5 fields `min hour day month weekday` or 6 with seconds first, e.g. `0 3 * * *`, after `TZ=Area/City ` for a time zone other than UTC"
)]
pub struct CronError {
    expression: String,
    reason: String,
}

impl CronSchedule {
    /// Parses a 5-field (minute first) or 6-field (seconds first) expression, optionally after
    /// `TZ=ZONE ` or `CRON_TZ=ZONE ` (an IANA name such as `Europe/Berlin`).
    pub fn parse(expression: &str) -> Result<Self, CronError> {
        let refuse = |reason: String| CronError { expression: expression.to_owned(), reason };
        let mut words: Vec<&str> = expression.split_whitespace().collect();
        let zone = match words.first().and_then(|w| w.strip_prefix("CRON_TZ=").or_else(|| w.strip_prefix("TZ="))) {
            Some(name) => {
                let zone = parse_zone(name).map_err(refuse)?;
                words.remove(0);
                Some(zone)
            }
            None => None,
        };
        let fields = match words.len() {
            5 => format!("0 {}", words.join(" ")),
            6 => words.join(" "),
            n => return Err(refuse(format!("{n} fields"))),
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(&fields)
            .map_err(|err| refuse(err.to_string()))?;
        let normalized = match zone {
            Some(zone) => format!("TZ={} {fields}", zone.name()),
            None => fields,
        };
        Ok(Self { normalized, cron, zone })
    }

    /// The first time strictly after `after` that the schedule fires, if any.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.zone {
            None => self.cron.find_next_occurrence(&after, false).ok(),
            Some(zone) => {
                let local = after.with_timezone(&zone);
                self.cron.find_next_occurrence(&local, false).ok().map(|next| next.to_utc())
            }
        }
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

    /// The six-field form, seconds first, after `TZ=ZONE ` when it names one.
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

/// An IANA time zone name (`Europe/Berlin`, `UTC`).
pub(super) fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("`{name}` is not a time zone; write an IANA name such as Europe/Berlin or UTC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zone's schedule follows its clock across daylight saving time, and fires once on the
    /// days the clock jumps.
    #[test]
    fn a_time_zone_moves_the_firings_with_its_clock() {
        let berlin = CronSchedule::parse("TZ=Europe/Berlin 0 3 * * *").unwrap();
        assert_eq!(berlin.to_string(), "TZ=Europe/Berlin 0 0 3 * * *");
        assert_eq!(berlin.next_after(at("2026-01-05T00:00:00Z")), Some(at("2026-01-05T02:00:00Z")));
        assert_eq!(berlin.next_after(at("2026-07-06T00:00:00Z")), Some(at("2026-07-06T01:00:00Z")));
        assert_eq!(CronSchedule::parse("CRON_TZ=UTC 0 3 * * *").unwrap().to_string(), "TZ=UTC 0 0 3 * * *");
        // 02:30 does not exist in Berlin on 2026-03-29 and happens twice on 2026-10-25: one
        // firing each day all the same.
        let night = CronSchedule::parse("TZ=Europe/Berlin 30 2 * * *").unwrap();
        for (from, to) in
            [("2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z"), ("2026-10-23T12:00:00Z", "2026-10-27T12:00:00Z")]
        {
            let (mut t, mut fired) = (at(from), 0);
            while let Some(next) = night.next_after(t).filter(|n| *n < at(to)) {
                fired += 1;
                t = next;
            }
            assert!((3..=4).contains(&fired), "{from}: {fired} firings in four days");
        }
        let err = CronSchedule::parse("TZ=Mars/Olympus 0 3 * * *").unwrap_err().to_string();
        assert!(err.contains("`Mars/Olympus` is not a time zone"), "{err}");
    }

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
