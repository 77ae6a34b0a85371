//! Which backups a set keeps: the newest `keep_last`, and the newest of each of the last
//! `daily` days, `weekly` ISO weeks and `monthly` months that have a backup (the rules of
//! restic's and borg's `forget`). The newest verified backup is always kept.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike as _, Utc};

use crate::config::Retention;

/// A verified backup, as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The backup id.
    pub id: String,
    /// When it was taken.
    pub taken: DateTime<Utc>,
}

/// The ids of `backups` that `retention` keeps.
pub fn keep(retention: &Retention, backups: &[Candidate]) -> BTreeSet<String> {
    let mut newest_first: Vec<&Candidate> = backups.iter().collect();
    newest_first.sort_by(|a, b| b.taken.cmp(&a.taken).then_with(|| b.id.cmp(&a.id)));
    let mut kept: BTreeSet<String> =
        newest_first.iter().take(retention.keep_last.max(1) as usize).map(|c| c.id.clone()).collect();
    let mut bucketed = |count: u32, bucket: &dyn Fn(&DateTime<Utc>) -> (i32, u32)| {
        let mut seen = Vec::new();
        for candidate in &newest_first {
            let key = bucket(&candidate.taken);
            if !seen.contains(&key) {
                if seen.len() == count as usize {
                    break;
                }
                seen.push(key);
                kept.insert(candidate.id.clone());
            }
        }
    };
    bucketed(retention.daily, &|t| (t.year(), t.ordinal()));
    bucketed(retention.weekly, &|t| (t.iso_week().year(), t.iso_week().week()));
    bucketed(retention.monthly, &|t| (t.year(), t.month()));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn at(day: u32, hour: u32) -> Candidate {
        let taken = Utc.with_ymd_and_hms(2026, 1, 1, hour, 0, 0).unwrap() + chrono::Duration::days(i64::from(day));
        Candidate { id: format!("d{day:03}h{hour:02}"), taken }
    }

    #[test]
    fn keeps_the_newest_of_each_period_and_the_last_n() {
        // Two backups a day for 120 days.
        let backups: Vec<Candidate> = (0..120).flat_map(|d| [at(d, 1), at(d, 13)]).collect();
        let retention = Retention { keep_last: 3, daily: 7, weekly: 4, monthly: 3 };
        let kept = keep(&retention, &backups);
        // The last three, then the newest of each of the last 7 days (today's already in).
        for id in ["d119h13", "d119h01", "d118h13", "d117h13", "d113h13"] {
            assert!(kept.contains(id), "{id} not kept: {kept:?}");
        }
        assert!(!kept.contains("d117h01"));
        assert!(!kept.contains("d112h13"), "an eighth day kept: {kept:?}");
        // Monthly: the newest in each of the last three months (April, March, February 2026).
        assert!(kept.contains("d089h13"), "end of March kept: {kept:?}");
        assert!(kept.contains("d058h13"), "end of February kept: {kept:?}");
        assert!(!kept.contains("d030h13"), "end of January is a fourth month: {kept:?}");
        assert!(kept.len() < 20);
    }

    #[test]
    fn the_newest_backup_is_always_kept() {
        let retention = Retention { keep_last: 0, daily: 0, weekly: 0, monthly: 0 };
        let kept = keep(&retention, &[at(0, 1), at(5, 1)]);
        assert_eq!(kept.into_iter().collect::<Vec<_>>(), ["d005h01"]);
    }
}
