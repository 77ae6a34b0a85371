//! Each secret's rotation status: last rotation, last flip, and what needs a person's attention.

use sqlx::Row as _;

use crate::clock::Clock;
use crate::saga::{SagaError, Subject};
use crate::state::{Db, on_pool};

/// A secret's status row.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StatusRow {
    /// When it last rotated (RFC 3339).
    pub last_rotated: Option<String>,
    /// The rotation that did it.
    pub last_rotation: Option<String>,
    /// When an alternating pair last flipped.
    pub last_flip: Option<String>,
    /// Why the last rotation did not complete, until one does.
    pub needs_attention: Option<String>,
}

impl StatusRow {
    /// When it last rotated, as a time.
    pub fn last_rotated_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let at = chrono::DateTime::parse_from_rfc3339(self.last_rotated.as_deref()?).ok()?;
        Some(at.with_timezone(&chrono::Utc))
    }
}

/// The row's key: the secret's saga subject, `secret:NAME`.
fn key(name: &str) -> String {
    Subject::Secret(name.to_owned()).to_string()
}

fn now(clock: &dyn Clock) -> String {
    clock.now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Records a completed rotation and clears any attention flag. Recording the same rotation
/// again (an overlap rotation is complete when its new credential becomes current, and again
/// when it retires the old one) keeps the first time, from which the next is due.
pub async fn rotated(db: &Db, name: &str, rotation: &str, flipped: bool, clock: &dyn Clock) -> Result<(), SagaError> {
    const SQL: &str = "INSERT INTO secret_status (subject, last_rotated, last_rotation, last_flip, needs_attention, updated_at) \
        VALUES ($1, $2, $3, $4, NULL, $2) ON CONFLICT (subject) DO UPDATE SET last_rotated = CASE WHEN secret_status.last_rotation = $3 \
        THEN secret_status.last_rotated ELSE $2 END, last_rotation = $3, \
        last_flip = COALESCE($4, secret_status.last_flip), needs_attention = NULL, updated_at = $2";
    let at = now(clock);
    let flip = flipped.then(|| at.clone());
    on_pool!(db, pool => sqlx::query(SQL).bind(key(name)).bind(&at).bind(rotation).bind(flip).execute(pool).await.map(drop))?;
    Ok(())
}

/// Flags a secret as needing attention, with the reason (never a secret value).
pub async fn needs_attention(db: &Db, name: &str, reason: &str, clock: &dyn Clock) -> Result<(), SagaError> {
    const SQL: &str = "INSERT INTO secret_status (subject, needs_attention, updated_at) VALUES ($1, $2, $3) \
        ON CONFLICT (subject) DO UPDATE SET needs_attention = $2, updated_at = $3";
    on_pool!(db, pool => sqlx::query(SQL).bind(key(name)).bind(reason).bind(now(clock)).execute(pool).await.map(drop))?;
    Ok(())
}

/// One secret's status (empty when it never rotated).
pub async fn load(db: &Db, name: &str) -> Result<StatusRow, SagaError> {
    const SQL: &str =
        "SELECT last_rotated, last_rotation, last_flip, needs_attention FROM secret_status WHERE subject = $1";
    Ok(on_pool!(db, pool => match sqlx::query(SQL).bind(key(name)).fetch_optional(pool).await? {
        Some(row) => StatusRow {
            last_rotated: row.try_get(0)?,
            last_rotation: row.try_get(1)?,
            last_flip: row.try_get(2)?,
            needs_attention: row.try_get(3)?,
        },
        None => StatusRow::default(),
    }))
}
