//! What a PostgreSQL server says about its WAL archiving, and the heartbeat row that dates a
//! restored copy: the source side of point-in-time recovery.

use serde::Serialize;
use sqlx::Connection as _;

use super::{Endpoint, EngineError};
use crate::secret::Credential;

/// The table the heartbeat is written to, in the target's database: one row per backup set.
pub const HEARTBEAT_TABLE: &str = "vigil_heartbeat";

/// `pg_stat_archiver` and the archive status folder, read on the source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchiverStatus {
    /// `archive_mode` (`on`, `always`, `off`).
    pub archive_mode: String,
    /// `archive_timeout`, in seconds (0: off).
    pub archive_timeout_secs: u64,
    /// Segments archived since the statistics were reset.
    pub archived_count: i64,
    /// The newest archived segment.
    pub last_archived_wal: Option<String>,
    /// When it was archived (RFC 3339).
    pub last_archived_at: Option<String>,
    /// Failed attempts since the statistics were reset.
    pub failed_count: i64,
    /// The segment of the newest failure.
    pub last_failed_wal: Option<String>,
    /// When it failed (RFC 3339).
    pub last_failed_at: Option<String>,
    /// Whether the newest attempt failed: archiving is broken now, not only once.
    pub failing: bool,
    /// Completed segments waiting to be archived (`.ready` in `pg_wal/archive_status`).
    pub waiting_segments: i64,
    /// How long the oldest of them has waited, in seconds: 0 when nothing waits.
    pub oldest_waiting_secs: f64,
    /// The server's clock (RFC 3339).
    pub now: String,
}

const TIME: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

async fn connect(endpoint: &Endpoint, credential: &Credential, what: &str) -> Result<sqlx::PgConnection, EngineError> {
    // Row security off: no policy of the database's roles is ever evaluated in these sessions;
    // a read a policy would filter fails instead.
    let options = super::postgres_options(endpoint, credential)
        .options([("row_security", "off")])
        .application_name("vigil-archive");
    sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(|err| EngineError::connecting(endpoint, what, &credential.username, err))
}

/// Reads the archiver's state. Needs `pg_monitor` (for `pg_ls_archive_statusdir`) or superuser.
pub async fn archiver_status(endpoint: &Endpoint, credential: &Credential) -> Result<ArchiverStatus, EngineError> {
    use sqlx::Row as _;
    let what = "read the archiver's status";
    let mut conn = connect(endpoint, credential, what).await?;
    let sql = format!(
        "SELECT current_setting('archive_mode'), \
           EXTRACT(EPOCH FROM current_setting('archive_timeout')::interval)::float8, \
           a.archived_count, a.last_archived_wal, to_char(a.last_archived_time AT TIME ZONE 'UTC', {TIME}), \
           a.failed_count, a.last_failed_wal, to_char(a.last_failed_time AT TIME ZONE 'UTC', {TIME}), \
           COALESCE(a.last_failed_time > a.last_archived_time OR (a.last_archived_time IS NULL AND a.last_failed_time IS NOT NULL), false), \
           (SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), \
           COALESCE((SELECT EXTRACT(EPOCH FROM now() - min(modification))::float8 FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), 0), \
           to_char(now() AT TIME ZONE 'UTC', {TIME}) \
         FROM pg_catalog.pg_stat_archiver a"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut conn)
        .await
        .map_err(|err| EngineError::from_sqlx(what, &credential.username, err))?;
    let get = |err| EngineError::from_sqlx(what, &credential.username, err);
    Ok(ArchiverStatus {
        archive_mode: row.try_get(0).map_err(get)?,
        archive_timeout_secs: row.try_get::<f64, _>(1).map_err(get)?.max(0.0) as u64,
        archived_count: row.try_get(2).map_err(get)?,
        last_archived_wal: row.try_get(3).map_err(get)?,
        last_archived_at: row.try_get(4).map_err(get)?,
        failed_count: row.try_get(5).map_err(get)?,
        last_failed_wal: row.try_get(6).map_err(get)?,
        last_failed_at: row.try_get(7).map_err(get)?,
        failing: row.try_get(8).map_err(get)?,
        waiting_segments: row.try_get(9).map_err(get)?,
        oldest_waiting_secs: row.try_get::<f64, _>(10).map_err(get)?.max(0.0),
        now: row.try_get(11).map_err(get)?,
    })
}

/// Writes `set`'s heartbeat row (creating the table on first use) and returns the time it
/// holds, by the server's clock (RFC 3339).
pub async fn beat(endpoint: &Endpoint, credential: &Credential, set: &str) -> Result<String, EngineError> {
    let what = "write the heartbeat";
    let mut conn = connect(endpoint, credential, what).await?;
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {HEARTBEAT_TABLE} (set_name text PRIMARY KEY, beat_at timestamptz NOT NULL)"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&mut conn)
        .await
        .map_err(|err| EngineError::from_sqlx(what, &credential.username, err))?;
    let upsert = format!(
        "INSERT INTO {HEARTBEAT_TABLE} (set_name, beat_at) VALUES ($1, clock_timestamp()) \
         ON CONFLICT (set_name) DO UPDATE SET beat_at = excluded.beat_at \
         RETURNING to_char(beat_at AT TIME ZONE 'UTC', {TIME})"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(upsert))
        .bind(set)
        .fetch_one(&mut conn)
        .await
        .map_err(|err| EngineError::from_sqlx(what, &credential.username, err))
}

/// `set`'s heartbeat in a (restored) database, if the table and the row exist.
pub async fn last_beat(endpoint: &Endpoint, credential: &Credential, set: &str) -> Result<Option<String>, EngineError> {
    let what = "read the heartbeat";
    let mut conn = connect(endpoint, credential, what).await?;
    let sql = format!("SELECT to_char(beat_at AT TIME ZONE 'UTC', {TIME}) FROM {HEARTBEAT_TABLE} WHERE set_name = $1");
    // A copy restored from before the first heartbeat has no table: no heartbeat, not an error.
    let exists: Option<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT to_regclass('{HEARTBEAT_TABLE}')::text")))
            .fetch_one(&mut conn)
            .await
            .map_err(|err| EngineError::from_sqlx(what, &credential.username, err))?;
    if exists.is_none() {
        return Ok(None);
    }
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(set)
        .fetch_optional(&mut conn)
        .await
        .map_err(|err| EngineError::from_sqlx(what, &credential.username, err))
}

/// The commit time of the last transaction recovery replayed (RFC 3339), on a restored server.
pub async fn last_replayed(endpoint: &Endpoint, credential: &Credential) -> Result<Option<String>, EngineError> {
    let what = "read the last replayed transaction";
    let mut conn = connect(endpoint, credential, what).await?;
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT pg_catalog.to_char(pg_catalog.pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', {TIME})"
    )))
    .fetch_one(&mut conn)
    .await
    .map_err(|err| EngineError::from_sqlx(what, &credential.username, err))
}

/// The name of the bootstrap superuser (the role of OID 10) of the server, which a restored
/// cluster's checks run as.
pub async fn bootstrap_superuser(endpoint: &Endpoint, credential: &Credential) -> Result<String, EngineError> {
    let what = "find the bootstrap superuser";
    let mut conn = connect(endpoint, credential, what).await?;
    sqlx::query_scalar("SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = 10")
        .fetch_one(&mut conn)
        .await
        .map_err(|err| EngineError::from_sqlx(what, &credential.username, err))
}
