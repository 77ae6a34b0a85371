//! Where saga rows live: a small trait, the SQL store (SQLite or PostgreSQL, the state
//! database) and an in-memory store beside it whose write log tests cut to simulate a crash.
//!
//! Every write names the state it expects the row to be in (its status and its last update
//! time): a write that finds the row moved on is refused, so two processes resuming one saga
//! cannot both act, and an illegal transition (a finished saga running again) never lands. A
//! daemon's writes also carry its leader epoch, and are refused once a newer leader took over.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use super::{SagaError, Subject};
use crate::state::{Db, Fenced, fenced, on_pool};

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Acting: `step` is about to act, or acting.
    Running,
    /// Undoing: `step` is about to be undone, or being undone.
    Unwinding,
    /// Every step acted.
    Done,
    /// Every step taken was undone.
    RolledBack,
    /// An undo failed: a person must look.
    Stuck,
}

impl Status {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Unwinding => "unwinding",
            Self::Done => "done",
            Self::RolledBack => "rolled_back",
            Self::Stuck => "stuck",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => Self::Running,
            "unwinding" => Self::Unwinding,
            "done" => Self::Done,
            "rolled_back" => Self::RolledBack,
            "stuck" => Self::Stuck,
            _ => return None,
        })
    }

    /// Whether a saga may move from `self` to `next`: forward while running, to unwinding, and
    /// from unwinding only further back; a finished saga never moves again.
    pub fn may_become(self, next: Self) -> bool {
        match self {
            Self::Running => matches!(next, Self::Running | Self::Unwinding | Self::Done),
            Self::Unwinding => matches!(next, Self::Unwinding | Self::RolledBack | Self::Stuck),
            Self::Done | Self::RolledBack | Self::Stuck => false,
        }
    }

    /// Whether the saga is still in flight.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Running | Self::Unwinding)
    }
}

/// One saga as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SagaRow {
    /// Its id (a UUID; for rotations, the idempotency token stores see).
    pub id: String,
    /// Its kind, e.g. `rotation.db_password`.
    pub kind: String,
    /// What it acts on: a secret or backup set.
    pub subject: Subject,
    /// The step acting or being undone.
    pub step: String,
    /// Where it stands.
    pub status: Status,
    /// Kind-specific facts, never a secret.
    pub data: serde_json::Value,
    /// The step that failed, once it unwinds.
    pub failed_step: Option<String>,
    /// Why it unwound, if it did.
    pub error: Option<String>,
    /// When it started.
    pub started_at: String,
    /// When its row last changed: with `status`, the state a write expects to find.
    pub updated_at: String,
    /// The time the saga waits for at its step, when it waits (RFC 3339): recorded so that the
    /// daemon resumes waits that came due and no saga another process is running.
    pub waiting_until: Option<String>,
}

impl SagaRow {
    /// The saga's data as its kind records it.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, SagaError> {
        T::deserialize(&self.data).map_err(|err| SagaError::Data { id: self.id.clone(), reason: err.to_string() })
    }
}

/// A place saga rows are kept. Writes are durable when they return.
pub trait SagaStore: Send + Sync {
    /// Records `saga`, new and running, unless another saga of its subject is in flight: then
    /// nothing is written and that one is returned.
    fn insert<'a>(&'a self, saga: &'a SagaRow) -> BoxFuture<'a, Result<Option<SagaRow>, SagaError>>;

    /// Replaces the stored row of `saga` (step, status, data, error, update time) with `saga`,
    /// only if the stored row is still at `expected` (status and update time).
    fn update<'a>(&'a self, saga: &'a SagaRow, expected: &'a Expected) -> BoxFuture<'a, Result<(), SagaError>>;

    /// Every saga still running or unwinding, oldest first.
    fn in_flight(&self) -> BoxFuture<'_, Result<Vec<SagaRow>, SagaError>>;

    /// Whether the fence this store's writes carry still holds (a leader's epoch, a work run's
    /// claim): asked before a step acts again after a transient failure, so that a process
    /// woken after another took its saga over repeats no effect. Unfenced stores always hold.
    fn fence_holds(&self) -> BoxFuture<'_, Result<(), SagaError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The state a row must be in for an update to apply.
#[derive(Debug, Clone)]
pub struct Expected {
    /// Its status.
    pub status: Status,
    /// Its last update time.
    pub updated_at: String,
}

fn decode<'r, R>(row: &'r R) -> Result<SagaRow, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let unknown =
        |what: &str, value: &str| sqlx::Error::Decode(format!("saga {what} {value:?} is unknown to this vigil").into());
    let data: String = row.try_get(5)?;
    let subject: String = row.try_get(2)?;
    let status: String = row.try_get(4)?;
    Ok(SagaRow {
        id: row.try_get(0)?,
        kind: row.try_get(1)?,
        subject: Subject::parse(&subject).ok_or_else(|| unknown("subject", &subject))?,
        step: row.try_get(3)?,
        status: Status::parse(&status).ok_or_else(|| unknown("status", &status))?,
        data: serde_json::from_str(&data).map_err(|err| sqlx::Error::Decode(err.into()))?,
        error: row.try_get(6)?,
        started_at: row.try_get(7)?,
        updated_at: row.try_get(8)?,
        failed_step: row.try_get(9)?,
        waiting_until: row.try_get(10)?,
    })
}

/// A fenced write's outcome as a saga error: refused when a newer daemon leads.
fn fenced_out<T>(written: Result<T, Fenced>) -> Result<T, SagaError> {
    written.map_err(|fenced| SagaError::State(fenced.into()))
}

fn conflict(saga: &SagaRow, expected: &Expected) -> SagaError {
    SagaError::Moved { id: saga.id.clone(), expected: expected.status.as_str() }
}

impl SagaStore for Db {
    fn fence_holds(&self) -> BoxFuture<'_, Result<(), SagaError>> {
        async move { self.check_fence().await.map_err(SagaError::State) }.boxed()
    }

    fn insert<'a>(&'a self, saga: &'a SagaRow) -> BoxFuture<'a, Result<Option<SagaRow>, SagaError>> {
        async move {
            // Only this subject's row is read: the partial unique index refuses a second one
            // anyway, and a look first turns that refusal into the saga to name.
            const IN_FLIGHT: &str = "SELECT id, kind, subject, step, status, data, error, started_at, updated_at, failed_step, waiting_until \
                                     FROM sagas WHERE subject = $1 AND status IN ('running', 'unwinding')";
            let subject = saga.subject.to_string();
            let other = on_pool!(self, pool => match sqlx::query(IN_FLIGHT).bind(&subject).fetch_optional(pool).await? {
                Some(row) => Some(decode(&row)?),
                None => None,
            });
            if other.is_some() {
                return Ok(other);
            }
            const SQL: &str = "INSERT INTO sagas (id, kind, subject, step, status, data, error, started_at, updated_at, failed_step, waiting_until) \
                               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
            macro_rules! insert {
                ($conn:expr) => {
                    sqlx::query(SQL)
                        .bind(&saga.id)
                        .bind(&saga.kind)
                        .bind(&subject)
                        .bind(&saga.step)
                        .bind(saga.status.as_str())
                        .bind(saga.data.to_string())
                        .bind(&saga.error)
                        .bind(&saga.started_at)
                        .bind(&saga.updated_at)
                        .bind(&saga.failed_step)
                        .bind(&saga.waiting_until)
                        .execute($conn)
                        .await
                        .map(drop)?
                };
            }
            match self.guard() {
                None => on_pool!(self, pool => insert!(pool)),
                Some(guard) => fenced!(self, Some(guard), tx => insert!(&mut *tx)).and_then(fenced_out)?,
            }
            Ok(None)
        }
        .boxed()
    }

    fn update<'a>(&'a self, saga: &'a SagaRow, expected: &'a Expected) -> BoxFuture<'a, Result<(), SagaError>> {
        async move {
            const SQL: &str = "UPDATE sagas SET step = $1, status = $2, data = $3, error = $4, updated_at = $5, failed_step = $6, \
                               waiting_until = $7 WHERE id = $8 AND status = $9 AND updated_at = $10";
            macro_rules! update {
                ($conn:expr) => {
                    sqlx::query(SQL)
                        .bind(&saga.step)
                        .bind(saga.status.as_str())
                        .bind(saga.data.to_string())
                        .bind(&saga.error)
                        .bind(&saga.updated_at)
                        .bind(&saga.failed_step)
                        .bind(&saga.waiting_until)
                        .bind(&saga.id)
                        .bind(expected.status.as_str())
                        .bind(&expected.updated_at)
                        .execute($conn)
                        .await?
                        .rows_affected()
                };
            }
            let changed = match self.guard() {
                None => on_pool!(self, pool => update!(pool)),
                Some(guard) => fenced!(self, Some(guard), tx => update!(&mut *tx)).and_then(fenced_out)?,
            };
            if changed == 1 { Ok(()) } else { Err(conflict(saga, expected)) }
        }
        .boxed()
    }

    fn in_flight(&self) -> BoxFuture<'_, Result<Vec<SagaRow>, SagaError>> {
        async move {
            const SQL: &str = "SELECT id, kind, subject, step, status, data, error, started_at, updated_at, failed_step, waiting_until \
                               FROM sagas WHERE status IN ('running', 'unwinding') ORDER BY started_at";
            let rows = on_pool!(self, pool => sqlx::query(SQL).fetch_all(pool).await?.iter().map(decode).collect::<Result<Vec<_>, _>>()?);
            Ok(rows)
        }
        .boxed()
    }
}

/// Saga rows in memory, with every write kept in order: the log tests cut to simulate a crash
/// after any event ([`MemoryStore::replayed`]).
#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: Mutex<Vec<SagaRow>>,
    log: Mutex<Vec<SagaRow>>,
}

impl MemoryStore {
    /// Every write so far, each as the row it wrote, oldest first.
    pub fn log(&self) -> Vec<SagaRow> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A store holding what the first `events` writes of `log` left: the state a process that
    /// crashed right after them would find.
    pub fn replayed(log: &[SagaRow], events: usize) -> Self {
        let store = Self::default();
        for row in &log[..events] {
            store.write(row.clone());
        }
        store
    }

    fn write(&self, row: SagaRow) {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        match rows.iter_mut().find(|r| r.id == row.id) {
            Some(stored) => *stored = row.clone(),
            None => rows.push(row.clone()),
        }
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(row);
    }
}

impl SagaStore for MemoryStore {
    fn insert<'a>(&'a self, saga: &'a SagaRow) -> BoxFuture<'a, Result<Option<SagaRow>, SagaError>> {
        async move {
            let other = self
                .rows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|r| r.subject == saga.subject && r.status.in_flight())
                .cloned();
            if other.is_some() {
                return Ok(other);
            }
            self.write(saga.clone());
            Ok(None)
        }
        .boxed()
    }

    fn update<'a>(&'a self, saga: &'a SagaRow, expected: &'a Expected) -> BoxFuture<'a, Result<(), SagaError>> {
        async move {
            let current = self.rows.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|r| r.id == saga.id).cloned();
            match current {
                Some(row) if row.status == expected.status && row.updated_at == expected.updated_at => {
                    self.write(saga.clone());
                    Ok(())
                }
                _ => Err(conflict(saga, expected)),
            }
        }
        .boxed()
    }

    fn in_flight(&self) -> BoxFuture<'_, Result<Vec<SagaRow>, SagaError>> {
        async move {
            let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
            Ok(rows.iter().filter(|r| r.status.in_flight()).cloned().collect())
        }
        .boxed()
    }
}

/// Every saga still running or unwinding in the state database, oldest first.
pub async fn in_flight(db: &Db) -> Result<Vec<SagaRow>, SagaError> {
    SagaStore::in_flight(db).await
}

/// The sagas waiting at a step whose time has come by `now`, oldest first, and the earliest
/// time a saga still waits for: what the daemon resumes, and when it looks again. A saga
/// another process is running waits for nothing (its wait is cleared when it moves), so it is
/// never among them.
pub async fn waits(db: &Db, now: DateTime<Utc>) -> Result<(Vec<SagaRow>, Option<DateTime<Utc>>), SagaError> {
    const SQL: &str = "SELECT id, kind, subject, step, status, data, error, started_at, updated_at, failed_step, waiting_until \
                       FROM sagas WHERE status = 'running' AND waiting_until IS NOT NULL ORDER BY started_at";
    let rows = on_pool!(db, pool => sqlx::query(SQL).fetch_all(pool).await?.iter().map(decode).collect::<Result<Vec<_>, _>>()?);
    let (mut due, mut next) = (Vec::new(), None::<DateTime<Utc>>);
    for row in rows {
        // An unreadable time is due at once: the saga's own step decides whether to wait.
        let until =
            row.waiting_until.as_deref().and_then(|at| DateTime::parse_from_rfc3339(at).ok()).map(|at| at.to_utc());
        match until {
            Some(until) if until > now => next = Some(next.map_or(until, |n| n.min(until))),
            _ => due.push(row),
        }
    }
    Ok((due, next))
}

/// The newest saga of `kind` on `subject`, whatever its status: what `vigil drill list` shows
/// for each drill.
pub async fn newest(db: &Db, kind: &str, subject: &Subject) -> Result<Option<SagaRow>, SagaError> {
    const SQL: &str = "SELECT id, kind, subject, step, status, data, error, started_at, updated_at, failed_step, waiting_until \
                       FROM sagas WHERE kind = $1 AND subject = $2 ORDER BY started_at DESC, id DESC LIMIT 1";
    Ok(on_pool!(db, pool => match sqlx::query(SQL).bind(kind).bind(subject.to_string()).fetch_optional(pool).await? {
        Some(row) => Some(decode(&row)?),
        None => None,
    }))
}

/// The saga `id`, if the state database has it.
pub async fn get(db: &Db, id: &str) -> Result<Option<SagaRow>, SagaError> {
    const SQL: &str = "SELECT id, kind, subject, step, status, data, error, started_at, updated_at, failed_step, waiting_until \
                       FROM sagas WHERE id = $1";
    Ok(on_pool!(db, pool => match sqlx::query(SQL).bind(id).fetch_optional(pool).await? {
        Some(row) => Some(decode(&row)?),
        None => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::Status::*;

    #[test]
    fn finished_sagas_never_move_and_unwinding_never_runs_again() {
        assert!(Running.may_become(Running) && Running.may_become(Unwinding) && Running.may_become(Done));
        assert!(!Running.may_become(RolledBack) && !Running.may_become(Stuck));
        assert!(Unwinding.may_become(Unwinding) && Unwinding.may_become(RolledBack) && Unwinding.may_become(Stuck));
        assert!(!Unwinding.may_become(Running) && !Unwinding.may_become(Done));
        for done in [Done, RolledBack, Stuck] {
            for next in [Running, Unwinding, Done, RolledBack, Stuck] {
                assert!(!done.may_become(next), "{done:?} -> {next:?}");
            }
        }
    }

    #[test]
    fn every_status_reads_back_and_an_unknown_one_is_refused() {
        for status in [Running, Unwinding, Done, RolledBack, Stuck] {
            assert_eq!(super::Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(super::Status::parse("paused"), None);
    }
}
