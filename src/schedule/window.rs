//! Allowed windows for rotations: `Mon-Fri 02:00-05:00`, `Sat,Sun 00:00-06:00`, `01:00-04:00`
//! (every day), in UTC unless a time zone follows (`Mon-Fri 02:00-05:00 Europe/Berlin`: Berlin's
//! clock, summer and winter). A window whose end is before its start runs past midnight into
//! the next day (`Fri 22:00-02:00` opens Friday night and closes Saturday morning).

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone as _, Timelike, Utc};
use chrono_tz::Tz;

/// Days of the week and a time of day during which a job may start.
#[derive(Clone, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    days: [bool; 7],
    /// Minutes after midnight.
    start: u32,
    end: u32,
    /// Whose clock the days and times are on.
    zone: Tz,
    text: String,
}

/// Why a window was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "`{text}` is not a valid window ({reason}); write days and a time range, e.g. `Mon-Fri 02:00-05:00`, `Sat,Sun 00:00-06:00` or `01:00-04:00` for every day, in UTC unless a time zone follows: `Mon-Fri 02:00-05:00 Europe/Berlin`"
)]
pub struct WindowError {
    text: String,
    reason: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    /// Parses `[DAYS ]HH:MM-HH:MM[ ZONE]`, where DAYS is a comma-separated list of days or day
    /// ranges and ZONE an IANA time zone.
    pub fn parse(text: &str) -> Result<Self, WindowError> {
        let refuse = |reason: String| WindowError { text: text.to_owned(), reason };
        let mut parts: Vec<&str> = text.split_whitespace().collect();
        // A time range has a digit first; a zone never does.
        let zone = match parts.last() {
            Some(last) if parts.len() > 1 && !last.starts_with(|c: char| c.is_ascii_digit()) => {
                let zone = super::cron::parse_zone(last).map_err(refuse)?;
                parts.pop();
                zone
            }
            _ => Tz::UTC,
        };
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
        Ok(Self { days, start, end, zone, text: text.split_whitespace().collect::<Vec<_>>().join(" ") })
    }

    /// Whether a job may start at `at`.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let at = at.with_timezone(&self.zone);
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
        let today = at.with_timezone(&self.zone).date_naive();
        (0..=8)
            .filter_map(|day| {
                let date = today + Duration::days(day);
                let local = date.and_time(NaiveTime::MIN) + Duration::minutes(i64::from(self.start));
                // A start the clock skips (spring forward) opens when the clock reaches it.
                let open = self
                    .zone
                    .from_local_datetime(&local)
                    .earliest()
                    .or_else(|| self.zone.from_local_datetime(&(local + Duration::hours(1))).earliest())?;
                self.days[date.weekday().num_days_from_monday() as usize].then(|| open.to_utc())
            })
            .find(|open| *open >= at)
            // Parsing refuses a window with no day, so one of nine days opens it.
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

    /// A zone's window follows its clock: 02:00-05:00 in Berlin is 01:00-04:00 UTC in winter
    /// and 00:00-03:00 UTC in summer.
    #[test]
    fn a_window_in_a_time_zone_follows_its_clock() {
        let window = Window::parse("Mon-Fri 02:00-05:00 Europe/Berlin").unwrap();
        assert_eq!(window.to_string(), "Mon-Fri 02:00-05:00 Europe/Berlin");
        // 2026-01-05 and 2026-07-06 are Mondays.
        assert!(window.contains(at("2026-01-05T01:30:00Z")) && !window.contains(at("2026-01-05T04:30:00Z")));
        assert!(window.contains(at("2026-07-06T00:30:00Z")) && !window.contains(at("2026-07-06T03:30:00Z")));
        assert!(!window.contains(at("2026-01-05T00:30:00Z")), "Monday 01:30 in Berlin is before it opens");
        assert_eq!(window.next_open(at("2026-01-05T06:00:00Z")), at("2026-01-06T01:00:00Z"));
        assert_eq!(window.next_open(at("2026-07-10T06:00:00Z")), at("2026-07-13T00:00:00Z"), "Friday to Monday");
        // 02:30 is skipped in Berlin on Sunday 2026-03-29: the window opens when the clock gets there.
        let skipped = Window::parse("Sun 02:30-04:00 Europe/Berlin").unwrap();
        assert_eq!(skipped.next_open(at("2026-03-28T12:00:00Z")), at("2026-03-29T01:30:00Z"));
        assert!(Window::parse("Mon 02:00-05:00 Mars/Olympus").unwrap_err().to_string().contains("not a time zone"));
    }

    #[test]
    fn bad_windows_are_refused() {
        for bad in ["", "Mon-Fri", "Mon-Fri 2-5", "Someday 02:00-05:00", "Mon 25:00-26:00", "Mon 02:00-02:00", "a b c"]
        {
            assert!(Window::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
