//! The daemon's timetable: every job, when it runs next, and how that moves once it has run.
//!
//! Pure: the time is always passed in, so a test drives a simulated week through it without a
//! runtime or a sleep. The daemon persists each job's next run after it moves (`store.rs`), and
//! a restart reads it back: a job whose next run passed while no daemon ran is due **once**
//! (the next one is computed from now, not from the missed slot), and a clock set back finds
//! every next run still ahead, so nothing repeats.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

use crate::pgbackrest::BackupType;
use crate::schedule::{CronSchedule, Duration};

/// One thing the daemon does on a schedule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    /// Rotate a secret whose cadence ran out (inside its window).
    Rotate(String),
    /// Back up a set; a pgbackrest set's further schedules name their type.
    Backup { set: String, kind: Option<BackupType> },
    /// Run a drill.
    Drill(String),
    /// Write a pgbackrest set's heartbeat row.
    Heartbeat(String),
    /// Log in with every current credential (`vigil rotate --check`).
    Check,
    /// Resume sagas waiting at a step whose time has come (API-key retire, JWT promote and
    /// retire).
    Waits,
    /// Measure every backup set's recovery point against its drills' RPO targets.
    Watch,
    /// Verify the whole evidence ledger.
    Verify,
}

impl Job {
    /// What the job holds while it runs: the saga subject it acts on (`secret:NAME`,
    /// `backup:SET`, `drill:NAME`, so a set's full and incremental backups never run at once),
    /// else its own name. Two jobs holding one claim never run at once.
    pub fn claim(&self) -> String {
        match self {
            Self::Rotate(name) => format!("secret:{name}"),
            Self::Backup { set, .. } => format!("backup:{set}"),
            Self::Drill(name) => format!("drill:{name}"),
            Self::Heartbeat(_) | Self::Check | Self::Waits | Self::Watch | Self::Verify => self.to_string(),
        }
    }
}

impl Job {
    /// The job a name written by [`Display`](fmt::Display) names: the queued ones (backups,
    /// drills) are read back from the work queue.
    pub fn parse(name: &str) -> Option<Self> {
        let (kind, rest) = name.split_once(':').unwrap_or((name, ""));
        Some(match (kind, rest) {
            ("rotate", name) if !name.is_empty() => Self::Rotate(name.to_owned()),
            ("backup", rest) if !rest.is_empty() => match rest.split_once(':') {
                Some((set, kind)) => Self::Backup { set: set.to_owned(), kind: Some(kind.parse().ok()?) },
                None => Self::Backup { set: rest.to_owned(), kind: None },
            },
            ("drill", name) if !name.is_empty() => Self::Drill(name.to_owned()),
            ("heartbeat", name) if !name.is_empty() => Self::Heartbeat(name.to_owned()),
            ("check", "") => Self::Check,
            ("waits", "") => Self::Waits,
            ("watch", "") => Self::Watch,
            ("verify", "") => Self::Verify,
            _ => return None,
        })
    }

    /// Whether it is queued for any replica to run (backups, drills) rather than run by the
    /// leader itself.
    pub fn queued(&self) -> bool {
        matches!(self, Self::Backup { .. } | Self::Drill(_))
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rotate(name) => write!(f, "rotate:{name}"),
            Self::Backup { set, kind: None } => write!(f, "backup:{set}"),
            Self::Backup { set, kind: Some(kind) } => write!(f, "backup:{set}:{}", kind.as_str()),
            Self::Drill(name) => write!(f, "drill:{name}"),
            Self::Heartbeat(name) => write!(f, "heartbeat:{name}"),
            Self::Check => f.write_str("check"),
            Self::Waits => f.write_str("waits"),
            Self::Watch => f.write_str("watch"),
            Self::Verify => f.write_str("verify"),
        }
    }
}

/// What moves a job's next run once it has run.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// The next slot of a cron schedule after now, plus the job's jitter.
    Cron(Box<CronSchedule>),
    /// Now plus an interval.
    Every(Duration),
    /// Set from outside after every run: a rotation's next due time comes from its history and
    /// window, the waits' from the sagas.
    Given,
}

impl Trigger {
    /// What moves the job, as kept beside its next run: a changed schedule is noticed.
    pub fn describe(&self) -> Option<String> {
        match self {
            Self::Cron(cron) => Some(format!("cron {cron}")),
            Self::Every(interval) => Some(format!("every {interval}")),
            Self::Given => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    trigger: Trigger,
    next: DateTime<Utc>,
    jitter: chrono::Duration,
}

/// Every job and its next run.
#[derive(Debug, Default)]
pub struct Timetable {
    entries: BTreeMap<Job, Entry>,
}

impl Timetable {
    /// Adds `job`, due at `next`; its jitter is a fixed fraction of `jitter` chosen by its name,
    /// so that jobs due at one instant spread out the same way after every restart.
    pub fn add(&mut self, job: Job, trigger: Trigger, next: DateTime<Utc>, jitter: Duration) {
        let jitter = offset(&job, jitter);
        self.entries.insert(job, Entry { trigger, next, jitter });
    }

    /// When `job` runs first, for a job the timetable has never persisted: a cron job whose
    /// last run (by its own records: the newest backup, the last drill) was before the slot now
    /// passed is due now, and one that never ran is due now; otherwise its next slot.
    pub fn first_run(trigger: &Trigger, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
        let Some(last) = last_run else { return now };
        let next = match trigger {
            Trigger::Cron(cron) => cron.next_after(last),
            Trigger::Every(interval) => last.checked_add_signed(interval.to_chrono()),
            Trigger::Given => Some(now),
        };
        next.map_or(now, |next| next.max(now))
    }

    /// The jobs due at `now`, soonest first.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<Job> {
        let mut due: Vec<(&Job, &Entry)> = self.entries.iter().filter(|(_, e)| e.next <= now).collect();
        due.sort_by_key(|(job, e)| (e.next, (*job).clone()));
        due.into_iter().map(|(job, _)| job.clone()).collect()
    }

    /// `job` ran (or was attempted) at `now`: its next run moves past `now`, once, whatever
    /// number of slots were missed.
    pub fn ran(&mut self, job: &Job, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let entry = self.entries.get_mut(job)?;
        entry.next = match &entry.trigger {
            Trigger::Cron(cron) => match cron.next_after(now) {
                Some(slot) => {
                    // Never so much jitter that a run slides past the slot after it.
                    let gap = cron.next_after(slot).map_or(entry.jitter, |after| (after - slot) / 2);
                    slot + entry.jitter.min(gap)
                }
                None => DateTime::<Utc>::MAX_UTC,
            },
            Trigger::Every(interval) => {
                now.checked_add_signed(interval.to_chrono()).unwrap_or(DateTime::<Utc>::MAX_UTC)
            }
            Trigger::Given => entry.next.max(now),
        };
        Some(entry.next)
    }

    /// Sets `job`'s next run (a rotation's due time, the next saga wait).
    pub fn set_next(&mut self, job: &Job, next: DateTime<Utc>) {
        if let Some(entry) = self.entries.get_mut(job) {
            entry.next = next;
        }
    }

    /// The offset `job` runs at past its time.
    pub fn jitter(&self, job: &Job) -> chrono::Duration {
        self.entries.get(job).map_or_else(chrono::Duration::zero, |e| e.jitter)
    }

    /// When `job` runs next.
    pub fn next(&self, job: &Job) -> Option<DateTime<Utc>> {
        self.entries.get(job).map(|e| e.next)
    }

    /// The soonest next run of any job.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.entries.values().map(|e| e.next).min()
    }

    /// Every job and its next run.
    pub fn jobs(&self) -> impl Iterator<Item = (&Job, DateTime<Utc>)> {
        self.entries.iter().map(|(job, e)| (job, e.next))
    }
}

/// A job's share of `jitter`: FNV-1a of its name, so it is the same in every process.
fn offset(job: &Job, jitter: Duration) -> chrono::Duration {
    let max = jitter.as_secs();
    if max == 0 {
        return chrono::Duration::zero();
    }
    let hash = job
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    chrono::Duration::seconds(i64::try_from(hash % (max + 1)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn cron(s: &str) -> Trigger {
        Trigger::Cron(Box::new(CronSchedule::parse(s).unwrap()))
    }

    /// Drives `table` from `from` to `to` as the daemon's loop does (wake at the soonest next
    /// run, run what is due, move it on) and returns every (job, time) run.
    fn drive(table: &mut Timetable, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(Job, DateTime<Utc>)> {
        let mut fired = Vec::new();
        let mut now = from;
        while let Some(wake) = table.next_wake() {
            now = now.max(wake);
            if now > to {
                break;
            }
            for job in table.due(now) {
                fired.push((job.clone(), now));
                table.ran(&job, now);
            }
        }
        fired
    }

    #[test]
    fn a_simulated_week_fires_every_cron_slot_exactly_once() {
        let start = at("2026-11-30T00:00:00Z");
        let end = start + chrono::Duration::days(7);
        let schedules =
            [("backup", "0 3 * * *"), ("drill", "0 */6 * * *"), ("often", "*/15 * * * *"), ("weekly", "0 4 * * SUN")];
        let mut table = Timetable::default();
        for (name, schedule) in schedules {
            let job = Job::Drill(name.into());
            let trigger = cron(schedule);
            let Trigger::Cron(c) = &trigger else { unreachable!() };
            let first = c.next_after(start).unwrap();
            table.add(job, trigger, first, Duration::from_secs(90));
        }
        let fired = drive(&mut table, start, end);
        for (name, schedule) in schedules {
            let c = CronSchedule::parse(schedule).unwrap();
            let mut slots = Vec::new();
            let mut t = start;
            while let Some(next) = c.next_after(t).filter(|n| *n <= end - chrono::Duration::minutes(2)) {
                slots.push(next);
                t = next;
            }
            let runs: Vec<DateTime<Utc>> =
                fired.iter().filter(|(job, _)| *job == Job::Drill(name.into())).map(|(_, at)| *at).collect();
            // Each run belongs to exactly one slot: at or after it, before the next.
            let mut matched = BTreeSet::new();
            for run in &runs {
                let slot = slots.iter().rev().find(|slot| *slot <= run).copied();
                assert!(slot.is_some_and(|s| matched.insert(s)), "{name}: run at {run} matches no slot of its own");
            }
            assert_eq!(matched.len(), slots.len(), "{name}: {} runs for {} slots", runs.len(), slots.len());
        }
        assert!(fired.len() > 7 * 96, "the 15-minute job alone fires 672 times: {}", fired.len());
    }

    #[test]
    fn a_slot_missed_while_down_runs_once_and_a_clock_set_back_repeats_nothing() {
        let mut table = Timetable::default();
        let job = Job::Backup { set: "orders".into(), kind: None };
        table.add(job.clone(), cron("0 3 * * *"), at("2026-11-30T03:00:00Z"), Duration::from_secs(0));
        // Down for three days: three slots passed, one run.
        let back = at("2026-12-03T10:00:00Z");
        assert_eq!(table.due(back), vec![job.clone()]);
        table.ran(&job, back);
        assert!(table.due(back).is_empty());
        assert_eq!(table.next(&job), Some(at("2026-12-04T03:00:00Z")));
        // The clock jumps back a day: the next run is still ahead; nothing repeats.
        assert!(table.due(at("2026-12-02T10:00:00Z")).is_empty());
        // And forward a week: once.
        let later = at("2026-12-11T12:00:00Z");
        assert_eq!(table.due(later), vec![job.clone()]);
        table.ran(&job, later);
        assert_eq!(table.next(&job), Some(at("2026-12-12T03:00:00Z")));
    }

    #[test]
    fn a_job_never_persisted_is_due_when_its_own_last_run_missed_a_slot() {
        let now = at("2026-11-30T10:00:00Z");
        let daily = cron("0 3 * * *");
        assert_eq!(Timetable::first_run(&daily, None, now), now, "never ran: now");
        assert_eq!(Timetable::first_run(&daily, Some(at("2026-11-29T03:00:05Z")), now), now, "missed 30 Nov 03:00");
        assert_eq!(
            Timetable::first_run(&daily, Some(at("2026-11-30T03:00:05Z")), now),
            at("2026-12-01T03:00:00Z"),
            "ran in today's slot"
        );
        let minute = Trigger::Every(Duration::from_secs(60));
        assert_eq!(Timetable::first_run(&minute, Some(at("2026-11-30T09:59:30Z")), now), at("2026-11-30T10:00:30Z"));
    }

    #[test]
    fn jitter_is_fixed_per_job_and_within_bounds() {
        let jitter = Duration::from_secs(30);
        let a = offset(&Job::Rotate("orders-app".into()), jitter);
        assert_eq!(a, offset(&Job::Rotate("orders-app".into()), jitter));
        let spread: BTreeSet<i64> =
            (0..50).map(|i| offset(&Job::Rotate(format!("s{i}")), jitter).num_seconds()).collect();
        assert!(spread.iter().all(|s| (0..=30).contains(s)));
        assert!(spread.len() > 10, "50 jobs spread over {} offsets", spread.len());
        assert_eq!(offset(&Job::Check, Duration::from_secs(0)), chrono::Duration::zero());
    }
}
