//! The daemon's rows in the state store: each job's next run (`daemon_jobs`), and the leader's
//! epoch (`daemon_leader`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::Row as _;

use crate::state::{Db, Fenced, StateError, fenced, on_pool};

/// One persisted job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobRow {
    /// When it runs next.
    pub next_run: DateTime<Utc>,
    /// When it last ran.
    pub last_run: Option<String>,
    /// How that ended, in one line.
    pub last_outcome: Option<String>,
    /// The schedule `next_run` was computed from (none in rows from before it was kept).
    pub schedule: Option<String>,
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Every persisted job, by its name (`backup:orders`). A row whose time does not parse is left
/// out: the job is then planned as if new, from its own records.
pub async fn jobs(db: &Db) -> Result<BTreeMap<String, JobRow>, sqlx::Error> {
    const SQL: &str = "SELECT job, next_run, last_run, last_outcome, schedule FROM daemon_jobs";
    let rows = on_pool!(db, pool => {
        let mut out = BTreeMap::new();
        for row in sqlx::query(SQL).fetch_all(pool).await? {
            let next: String = row.try_get(1)?;
            if let Ok(next_run) = DateTime::parse_from_rfc3339(&next) {
                out.insert(
                    row.try_get::<String, _>(0)?,
                    JobRow {
                        next_run: next_run.to_utc(),
                        last_run: row.try_get(2)?,
                        last_outcome: row.try_get(3)?,
                        schedule: row.try_get(4)?,
                    },
                );
            }
        }
        out
    });
    Ok(rows)
}

/// Records a job's next run, and, when it just ran, when and how: job, next run, last run,
/// last outcome, update time, and the schedule the next run comes from (each but the first two
/// kept when NULL).
pub(super) const SAVE: &str = "INSERT INTO daemon_jobs (job, next_run, last_run, last_outcome, updated_at, schedule) VALUES ($1, $2, $3, $4, $5, $6) \
                               ON CONFLICT (job) DO UPDATE SET next_run = excluded.next_run, \
                               last_run = coalesce(excluded.last_run, daemon_jobs.last_run), \
                               last_outcome = coalesce(excluded.last_outcome, daemon_jobs.last_outcome), updated_at = excluded.updated_at, \
                               schedule = coalesce(excluded.schedule, daemon_jobs.schedule)";

/// Records `job`'s next run, and, when it just ran, when and how; with `schedule`, the schedule
/// that next run comes from.
pub async fn save(
    db: &Db,
    job: &str,
    next_run: DateTime<Utc>,
    ran: Option<(DateTime<Utc>, &str)>,
    schedule: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StateError> {
    let (last_run, outcome) = match ran {
        Some((at, outcome)) => (Some(stamp(at)), Some(outcome.to_owned())),
        None => (None, None),
    };
    // The leader's own write: refused, like its sagas and appends, once a newer one leads.
    let written: Result<Result<(), Fenced>, StateError> = fenced!(db, db.guard(), tx => sqlx::query(SAVE)
        .bind(job)
        .bind(stamp(next_run))
        .bind(last_run)
        .bind(outcome)
        .bind(stamp(now))
        .bind(schedule)
        .execute(&mut *tx)
        .await
        .map(drop)?);
    Ok(written??)
}

const NEXT_EPOCH: &str = "INSERT INTO daemon_leader (id, epoch, holder, since) VALUES (1, 1, $1, $2) \
                          ON CONFLICT (id) DO UPDATE SET epoch = daemon_leader.epoch + 1, holder = excluded.holder, \
                          since = excluded.since RETURNING epoch";

/// Takes the next epoch for `holder`, the one daemon of a SQLite store.
pub async fn next_epoch(db: &Db, holder: &str, now: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    on_pool!(db, pool => sqlx::query_scalar(NEXT_EPOCH).bind(holder).bind(stamp(now)).fetch_one(pool).await)
}

/// Takes the next epoch for `holder` on the connection that holds the leader's advisory lock:
/// the fencing token of a new leader.
pub async fn next_epoch_on(
    conn: &mut sqlx::PgConnection,
    holder: &str,
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(NEXT_EPOCH).bind(holder).bind(stamp(now)).fetch_one(conn).await
}

/// The newest epoch any leader took, and who took it.
pub async fn epoch(db: &Db) -> Result<Option<(i64, String)>, sqlx::Error> {
    const SQL: &str = "SELECT epoch, holder FROM daemon_leader WHERE id = 1";
    Ok(on_pool!(db, pool => match sqlx::query(SQL).fetch_optional(pool).await? {
        Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
        None => None,
    }))
}
