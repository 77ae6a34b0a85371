//! Allowed windows for rotations: `Mon-Fri 02:00-05:00`, `Sat,Sun 00:00-06:00`, `01:00-04:00`
//! (every day), in UTC. A window whose end is before its start runs past midnight into the
//! next day (`Fri 22:00-02:00` opens Friday night and closes Saturday morning).

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveTime, Timelike, Utc};

/// Days of the week and a time of day during which a job may start.
#[derive(Clone, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    days: [bool; 7],
    /// Minutes after midnight.
    start: u32,
    end: u32,
    text: String,
}

/// Why a window was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "`{text}` is not a valid window ({reason}); write days and a time range in UTC, e.g. `Mon-Fri 02:00-05:00`, `Sat,Sun 00:00-06:00` or `01:00-04:00` for every day"
)]
pub struct WindowError {
    text: String,
    reason: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    /// Parses `[DAYS ]HH:MM-HH:MM`, where DAYS is a comma-separated list of days or day ranges.
    pub fn parse(text: &str) -> Result<Self, WindowError> {
        let refuse = |reason: String| WindowError { text: text.to_owned(), reason };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (days, times) = match parts.as_slice() {
            [times] => ([true; 7], *times),
            [days, times] => (parse_days(days).map_err(refuse)?, *times),
            _ => return Err(refuse("expected `DAYS HH:MM-HH:MM`".into())),
        };
        let (start, end) = times.split_once('-').ok_or_else(|| refuse(format!("`{times}` is not HH:MM-HH:MM")))?;
        let (start, end) = (minutes(start).map_err(refuse)?, minutes(end).map_err(refuse)?);
        if start == end {
            return Err(refuse("the window is empty: its start and end are the same time".into()));
        }
        Ok(Self { days, start, end, text: text.trim().to_owned() })
    }

    /// Whether a job may start at `at`.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let minute = at.hour() * 60 + at.minute();
        let today = at.weekday().num_days_from_monday() as usize;
        let yesterday = (today + 6) % 7;
        if self.start < self.end {
            self.days[today] && (self.start..self.end).contains(&minute)
        } else {
            // Past midnight: opened today in the evening, or yesterday and not yet closed.
            (self.days[today] && minute >= self.start) || (self.days[yesterday] && minute < self.end)
        }
    }

    /// The first instant at or after `at` inside the window.
    pub fn next_open(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        if self.contains(at) {
            return at;
        }
        let midnight = at.date_naive().and_time(NaiveTime::MIN).and_utc();
        (0..=7)
            .map(|day| midnight + Duration::days(day) + Duration::minutes(i64::from(self.start)))
            .find(|open| *open >= at && self.days[open.weekday().num_days_from_monday() as usize])
            // Parsing refuses a window with no day, so one of eight days opens it.
            .unwrap_or(at)
    }
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let day = |name: &str| {
        DAYS.iter()
            .position(|d| d.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("`{name}` is not a day; use Mon, Tue, Wed, Thu, Fri, Sat, Sun"))
    };
    let mut days = [false; 7];
    for item in text.split(',') {
        match item.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                let mut d = from;
                loop {
                    days[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(item)?] = true,
        }
    }
    Ok(days)
}

fn minutes(text: &str) -> Result<u32, String> {
    let bad = || format!("`{text}` is not a time HH:MM");
    let (hours, mins) = text.split_once(':').ok_or_else(bad)?;
    let (hours, mins): (u32, u32) = (hours.parse().map_err(|_| bad())?, mins.parse().map_err(|_| bad())?);
    // 24:00 ends a window at midnight.
    if mins >= 60 || hours > 24 || (hours == 24 && mins > 0) {
        return Err(bad());
    }
    Ok((hours * 60 + mins) % (24 * 60))
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Window").field(&self.text).finish()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn weekday_mornings() {
        let window = Window::parse("Mon-Fri 02:00-05:00").unwrap();
        // 2026-11-30 is a Monday.
        assert!(window.contains(at("2026-11-30T02:00:00Z")));
        assert!(window.contains(at("2026-11-30T04:59:59Z")));
        assert!(!window.contains(at("2026-11-30T05:00:00Z")));
        assert!(!window.contains(at("2026-12-05T03:00:00Z")), "Saturday");
        assert_eq!(window.next_open(at("2026-11-30T06:00:00Z")), at("2026-12-01T02:00:00Z"));
        assert_eq!(window.next_open(at("2026-12-04T06:00:00Z")), at("2026-12-07T02:00:00Z"), "Friday to Monday");
        assert_eq!(window.next_open(at("2026-11-30T03:10:00Z")), at("2026-11-30T03:10:00Z"), "inside: now");
    }

    #[test]
    fn a_window_past_midnight_closes_the_next_day() {
        let window = Window::parse("Fri 22:00-02:00").unwrap();
        assert!(window.contains(at("2026-12-04T23:00:00Z")), "Friday night");
        assert!(window.contains(at("2026-12-05T01:59:00Z")), "Saturday morning");
        assert!(!window.contains(at("2026-12-04T01:00:00Z")), "Friday morning belongs to Thursday");
        assert_eq!(window.next_open(at("2026-12-05T03:00:00Z")), at("2026-12-11T22:00:00Z"));
    }

    #[test]
    fn every_day_and_lists() {
        let window = Window::parse("01:00-24:00").unwrap();
        assert!(window.contains(at("2026-12-05T23:59:00Z")));
        assert!(!window.contains(at("2026-12-05T00:30:00Z")));
        let window = Window::parse("sat,SUN 00:00-06:00").unwrap();
        assert!(window.contains(at("2026-12-06T05:00:00Z")));
        assert!(!window.contains(at("2026-12-07T05:00:00Z")));
        let wrapping = Window::parse("Sat-Mon 00:00-06:00").unwrap();
        assert!(wrapping.contains(at("2026-12-07T05:00:00Z")), "Monday is in Sat-Mon");
    }

    #[test]
    fn bad_windows_are_refused() {
        for bad in ["", "Mon-Fri", "Mon-Fri 2-5", "Someday 02:00-05:00", "Mon 25:00-26:00", "Mon 02:00-02:00", "a b c"]
        {
            assert!(Window::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
