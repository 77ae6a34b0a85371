//! Human durations as written in configuration: `30d`, `15m`, `1h30m`, `2w`.

use std::fmt;
use std::str::FromStr;

/// A whole number of seconds, written and shown in the units operators use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    seconds: u64,
}

/// Why a duration did not parse. The message lists what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text was empty.
    #[error("empty duration; write a number and a unit, e.g. `30d`, `15m` or `1h30m`")]
    Empty,
    /// A number had no unit after it, or a unit no number before it.
    #[error("`{0}` is not a duration; write a number and a unit (s, m, h, d, w), e.g. `30d` or `1h30m`")]
    Malformed(String),
    /// An unknown unit.
    #[error("unknown unit `{unit}` in `{text}`; units are s, m, h, d and w")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit that was not recognised.
        unit: String,
    },
    /// Zero time, which no cadence or window can use.
    #[error("`{0}` is zero; a duration must be positive")]
    Zero(String),
    /// Longer than any schedule needs, and than date arithmetic can take.
    #[error("`{0}` is longer than 100 years; no cadence, window or retention needs more")]
    Overflow(String),
}

/// The longest duration accepted: 100 years of 365.25 days. Bounded so that adding it to any
/// stored time stays far inside what date arithmetic can represent.
const MAX_SECONDS: u64 = 36_525 * 86_400;

const UNITS: [(char, u64); 5] = [('w', 7 * 86_400), ('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

impl Duration {
    /// A duration of `seconds`; zero is allowed here for arithmetic but never parsed from config.
    pub const fn from_secs(seconds: u64) -> Self {
        Self { seconds }
    }

    /// Whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.seconds
    }

    /// The same span as a `chrono::Duration`, for date arithmetic (saturating: a duration
    /// built with `from_secs` may exceed what parsing accepts).
    pub fn to_chrono(self) -> chrono::Duration {
        i64::try_from(self.seconds).ok().and_then(chrono::Duration::try_seconds).unwrap_or(chrono::Duration::MAX)
    }

    /// The same span as a `std::time::Duration`, for timers.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(DurationError::Empty);
        }
        if text.contains(char::is_whitespace) {
            return Err(DurationError::Malformed(text.to_owned()));
        }
        let mut seconds: u64 = 0;
        let mut digits = String::new();
        for ch in text.chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
                continue;
            }
            if digits.is_empty() {
                return Err(DurationError::Malformed(text.to_owned()));
            }
            let Some((_, unit_secs)) = UNITS.iter().find(|(unit, _)| *unit == ch) else {
                return Err(DurationError::UnknownUnit { text: text.to_owned(), unit: ch.to_string() });
            };
            let overflow = || DurationError::Overflow(text.to_owned());
            let count: u64 = digits.parse().map_err(|_| overflow())?;
            seconds = count.checked_mul(*unit_secs).and_then(|part| seconds.checked_add(part)).ok_or_else(overflow)?;
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(DurationError::Malformed(text.to_owned()));
        }
        if seconds == 0 {
            return Err(DurationError::Zero(text.to_owned()));
        }
        if seconds > MAX_SECONDS {
            return Err(DurationError::Overflow(text.to_owned()));
        }
        Ok(Self { seconds })
    }
}

impl fmt::Display for Duration {
    /// The shortest form in days and smaller units, so `90m` shows as `1h30m` and `2w` as
    /// `14d` (weeks are accepted but not shown: `30d` reads better than `4w2d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.seconds == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.seconds;
        for (unit, unit_secs) in UNITS.into_iter().skip(1) {
            if rest >= unit_secs {
                write!(f, "{}{unit}", rest / unit_secs)?;
                rest %= unit_secs;
            }
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> Result<u64, DurationError> {
        text.parse::<Duration>().map(Duration::as_secs)
    }

    #[test]
    fn parses_the_units_operators_write() {
        assert_eq!(secs("30d"), Ok(30 * 86_400));
        assert_eq!(secs("15m"), Ok(900));
        assert_eq!(secs("1h30m"), Ok(5_400));
        assert_eq!(secs("2w"), Ok(14 * 86_400));
        assert_eq!(secs("45s"), Ok(45));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        assert_eq!(secs(""), Err(DurationError::Empty));
        assert!(matches!(secs("30"), Err(DurationError::Malformed(_))));
        assert!(matches!(secs("d30"), Err(DurationError::Malformed(_))));
        assert!(matches!(secs("30 days"), Err(DurationError::Malformed(_))));
        assert!(matches!(secs("30x"), Err(DurationError::UnknownUnit { .. })));
        assert!(matches!(secs("3y"), Err(DurationError::UnknownUnit { .. })));
        assert!(matches!(secs("0d"), Err(DurationError::Zero(_))));
        assert!(matches!(secs("99999999999999999999w"), Err(DurationError::Overflow(_))));
        // Each of these once panicked a command: `status` on the first, the parser on the second.
        for too_long in ["3000000000w", "9300000000000000s", "36526d"] {
            assert!(matches!(secs(too_long), Err(DurationError::Overflow(_))), "{too_long}");
        }
        assert_eq!("36525d".parse::<Duration>().unwrap().to_chrono().num_days(), 36_525);
        assert_eq!(Duration::from_secs(u64::MAX).to_chrono(), chrono::Duration::MAX);
    }

    #[test]
    fn shows_in_days_and_smaller_units() {
        for (text, shown) in [("90m", "1h30m"), ("2w", "14d"), ("30d", "30d"), ("3600s", "1h"), ("1d1s", "1d1s")] {
            assert_eq!(text.parse::<Duration>().unwrap().to_string(), shown);
        }
    }
}
