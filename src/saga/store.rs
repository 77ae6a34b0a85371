//! Saga rows in the state store.

use super::{SagaError, Subject};
use crate::clock::Clock;
use crate::state::{Db, on_pool};

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
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Unwinding => "unwinding",
            Self::Done => "done",
            Self::RolledBack => "rolled_back",
            Self::Stuck => "stuck",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "running" => Self::Running,
            "unwinding" => Self::Unwinding,
            "done" => Self::Done,
            "rolled_back" => Self::RolledBack,
            _ => Self::Stuck,
        }
    }
}

/// One saga as stored.
#[derive(Debug, Clone, serde::Serialize)]
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
    /// Why it unwound, if it did.
    pub error: Option<String>,
    /// When it started.
    pub started_at: String,
    /// When its row last changed.
    pub updated_at: String,
}

fn decode<'r, R>(row: &'r R) -> Result<SagaRow, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let data: String = row.try_get(5)?;
    let subject: String = row.try_get(2)?;
    Ok(SagaRow {
        id: row.try_get(0)?,
        kind: row.try_get(1)?,
        subject: Subject::parse(&subject)
            .ok_or_else(|| sqlx::Error::Decode(format!("saga subject {subject:?} has no known namespace").into()))?,
        step: row.try_get(3)?,
        status: Status::parse(&row.try_get::<String, _>(4)?),
        data: serde_json::from_str(&data).map_err(|err| sqlx::Error::Decode(err.into()))?,
        error: row.try_get(6)?,
        started_at: row.try_get(7)?,
        updated_at: row.try_get(8)?,
    })
}

fn now(clock: &dyn Clock) -> String {
    clock.now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Records a new running saga; refused while another of the subject's is in flight.
pub(super) async fn insert(
    db: &Db,
    id: &str,
    kind: &str,
    subject: &Subject,
    step: &str,
    data: &serde_json::Value,
    clock: &dyn Clock,
) -> Result<SagaRow, SagaError> {
    if let Some(other) = in_flight(db).await?.into_iter().find(|s| s.subject == *subject) {
        return Err(SagaError::InFlight { subject: subject.clone(), kind: other.kind, id: other.id });
    }
    const SQL: &str = "INSERT INTO sagas (id, kind, subject, step, status, data, error, started_at, updated_at) \
                       VALUES ($1, $2, $3, $4, 'running', $5, NULL, $6, $6)";
    let at = now(clock);
    on_pool!(db, pool => sqlx::query(SQL).bind(id).bind(kind).bind(subject.to_string()).bind(step).bind(data.to_string()).bind(&at).execute(pool).await.map(drop))?;
    Ok(SagaRow {
        id: id.to_owned(),
        kind: kind.to_owned(),
        subject: subject.clone(),
        step: step.to_owned(),
        status: super::Status::Running,
        data: data.clone(),
        error: None,
        started_at: at.clone(),
        updated_at: at,
    })
}

/// Moves `saga` to `step` and `status`, durably, before the caller acts on it.
pub(super) async fn set(
    db: &Db,
    saga: &mut SagaRow,
    step: &str,
    status: Status,
    error: Option<&str>,
    clock: &dyn Clock,
) -> Result<(), SagaError> {
    const SQL: &str = "UPDATE sagas SET step = $1, status = $2, error = $3, updated_at = $4 WHERE id = $5";
    let at = now(clock);
    on_pool!(db, pool => sqlx::query(SQL).bind(step).bind(status.as_str()).bind(error).bind(&at).bind(&saga.id).execute(pool).await.map(drop))?;
    saga.step = step.to_owned();
    saga.status = status;
    saga.error = error.map(str::to_owned);
    saga.updated_at = at;
    Ok(())
}

/// Replaces `saga`'s data (facts a step found for later steps), durably.
pub(super) async fn set_data(
    db: &Db,
    saga: &mut SagaRow,
    data: serde_json::Value,
    clock: &dyn Clock,
) -> Result<(), SagaError> {
    const SQL: &str = "UPDATE sagas SET data = $1, updated_at = $2 WHERE id = $3";
    let at = now(clock);
    on_pool!(db, pool => sqlx::query(SQL).bind(data.to_string()).bind(&at).bind(&saga.id).execute(pool).await.map(drop))?;
    saga.data = data;
    saga.updated_at = at;
    Ok(())
}

/// Every saga still running or unwinding.
pub async fn in_flight(db: &Db) -> Result<Vec<SagaRow>, SagaError> {
    const SQL: &str = "SELECT id, kind, subject, step, status, data, error, started_at, updated_at \
                       FROM sagas WHERE status IN ('running', 'unwinding') ORDER BY started_at";
    let rows = on_pool!(db, pool => sqlx::query(SQL).fetch_all(pool).await?.iter().map(decode).collect::<Result<Vec<_>, _>>()?);
    Ok(rows)
}

/// The newest saga about `subject`, if any.
pub async fn load(db: &Db, subject: &Subject) -> Result<Option<SagaRow>, SagaError> {
    const SQL: &str = "SELECT id, kind, subject, step, status, data, error, started_at, updated_at \
                       FROM sagas WHERE subject = $1 ORDER BY started_at DESC LIMIT 1";
    Ok(on_pool!(db, pool => match sqlx::query(SQL).bind(subject.to_string()).fetch_optional(pool).await? {
        Some(row) => Some(decode(&row)?),
        None => None,
    }))
}
