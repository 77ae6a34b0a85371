//! The backup catalog in the state store: every backup taken, where it is, and its state.

use crate::state::{Db, Fenced, StateError, fenced, on_pool};

/// A backup's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Being written.
    Writing,
    /// Written, not yet verified.
    Written,
    /// Read back and every check passed.
    Verified,
    /// Writing or verifying failed; what was written has been removed.
    Failed,
    /// Deleted by retention.
    Pruned,
}

impl Status {
    /// The name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Writing => "writing",
            Self::Written => "written",
            Self::Verified => "verified",
            Self::Failed => "failed",
            Self::Pruned => "pruned",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "writing" => Self::Writing,
            "written" => Self::Written,
            "verified" => Self::Verified,
            "pruned" => Self::Pruned,
            _ => Self::Failed,
        }
    }
}

/// One catalog row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// The backup id.
    pub id: String,
    /// The backup set.
    pub set: String,
    /// The target backed up.
    pub target: String,
    /// `dump`, `pgbackrest` or `rds_snapshot`.
    pub method: String,
    /// Its state.
    pub status: Status,
    /// Where it is: an object location, or an RDS snapshot identifier.
    pub location: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it was written.
    pub finished_at: Option<String>,
    /// When it last verified.
    pub verified_at: Option<String>,
    /// Its size as stored.
    pub bytes: Option<u64>,
    /// The manifest as recorded in evidence (canonical JSON).
    #[serde(skip)]
    pub manifest: Option<String>,
    /// SHA-256 of `manifest`.
    pub manifest_sha256: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// A pgBackRest backup's facts (label, type, times, sizes, WAL range), from its manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub physical: Option<serde_json::Value>,
}

const COLUMNS: &str = "id, set_name, target, method, status, location, started_at, finished_at, verified_at, bytes, \
    manifest, manifest_sha256, error";

fn entry<R>(row: &R) -> Result<Entry, sqlx::Error>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let method: String = row.try_get("method")?;
    let manifest: Option<String> = row.try_get("manifest")?;
    let physical =
        (method == "pgbackrest").then(|| manifest.as_deref().and_then(|m| serde_json::from_str(m).ok())).flatten();
    Ok(Entry {
        physical,
        id: row.try_get("id")?,
        set: row.try_get("set_name")?,
        target: row.try_get("target")?,
        method,
        status: Status::parse(&row.try_get::<String, _>("status")?),
        location: row.try_get("location")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        verified_at: row.try_get("verified_at")?,
        bytes: row.try_get::<Option<i64>, _>("bytes")?.and_then(|b| u64::try_from(b).ok()),
        manifest,
        manifest_sha256: row.try_get("manifest_sha256")?,
        error: row.try_get("error")?,
    })
}

/// A backup about to start: what the catalog knows of it before anything is written.
pub struct Started<'a> {
    /// The backup id.
    pub id: &'a str,
    /// The backup set.
    pub set: &'a str,
    /// The target backed up.
    pub target: &'a str,
    /// `dump` or `rds_snapshot`.
    pub method: &'a str,
    /// Where it will be.
    pub location: &'a str,
}

/// Records a backup that has started (again, when a crash made it start over).
pub async fn started(db: &Db, backup: &Started<'_>, now: &str) -> Result<(), StateError> {
    const SQL: &str = "INSERT INTO backups (id, set_name, target, method, status, location, started_at, updated_at) \
        VALUES ($1, $2, $3, $4, 'writing', $5, $6, $6) ON CONFLICT (id) DO UPDATE SET status = 'writing', \
        location = excluded.location, started_at = $6, updated_at = $6, error = NULL";
    let written = fenced!(db, db.guard(), tx => sqlx::query(SQL)
        .bind(backup.id)
        .bind(backup.set)
        .bind(backup.target)
        .bind(backup.method)
        .bind(backup.location)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map(drop)?);
    settled(written)
}

/// Records a backup written, with its manifest.
pub async fn written(
    db: &Db,
    id: &str,
    manifest: &str,
    manifest_sha256: &str,
    bytes: u64,
    now: &str,
) -> Result<(), StateError> {
    const SQL: &str = "UPDATE backups SET status = 'written', finished_at = $2, bytes = $3, manifest = $4, \
        manifest_sha256 = $5, updated_at = $2 WHERE id = $1";
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    let written = fenced!(db, db.guard(), tx => sqlx::query(SQL).bind(id).bind(now).bind(bytes).bind(manifest)
        .bind(manifest_sha256).execute(&mut *tx).await.map(drop)?);
    settled(written)
}

/// Records where a backup is, once known (a pgBackRest label is known after the backup).
pub async fn located(db: &Db, id: &str, location: &str) -> Result<(), StateError> {
    const SQL: &str = "UPDATE backups SET location = $2 WHERE id = $1";
    let written =
        fenced!(db, db.guard(), tx => sqlx::query(SQL).bind(id).bind(location).execute(&mut *tx).await.map(drop)?);
    settled(written)
}

/// Moves a backup to `status`, with the reason when it failed.
pub async fn set_status(db: &Db, id: &str, status: Status, error: Option<&str>, now: &str) -> Result<(), StateError> {
    const SQL: &str = "UPDATE backups SET status = $2, error = $3, updated_at = $4, \
        verified_at = CASE WHEN $2 = 'verified' THEN $4 ELSE verified_at END WHERE id = $1";
    let written = fenced!(db, db.guard(), tx => sqlx::query(SQL).bind(id).bind(status.as_str()).bind(error)
        .bind(now).execute(&mut *tx).await.map(drop)?);
    settled(written)
}

/// A catalog write through a fenced handle (a leader's, a claimed run's): refused, and nothing
/// written, once its fence no longer holds.
fn settled<T>(written: Result<Result<T, Fenced>, StateError>) -> Result<(), StateError> {
    written?.map(drop).map_err(StateError::from)
}

/// One backup, by id.
pub async fn get(db: &Db, id: &str) -> Result<Option<Entry>, StateError> {
    let sql = format!("SELECT {COLUMNS} FROM backups WHERE id = $1");
    Ok(on_pool!(db, pool => match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? {
        Some(row) => Some(entry(&row)?),
        None => None,
    }))
}

/// Every backup, newest first; of one set when `set` is given.
pub async fn list(db: &Db, set: Option<&str>) -> Result<Vec<Entry>, StateError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM backups WHERE (CAST($1 AS TEXT) IS NULL OR set_name = CAST($1 AS TEXT)) ORDER BY started_at DESC, id DESC"
    );
    Ok(on_pool!(db, pool => {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(set).fetch_all(pool).await?;
        rows.iter().map(entry).collect::<Result<Vec<_>, _>>()?
    }))
}
