//! What a PostgreSQL server says about its WAL archiving, and the heartbeat row that dates a
//! restored copy: the source side of point-in-time recovery.

use serde::Serialize;
use sqlx::Connection as _;

use super::{Endpoint, EngineError};
use crate::secret::Credential;

/// The schema vigil creates and owns in a target's database, for the heartbeat.
pub const HEARTBEAT_SCHEMA: &str = "vigil";
/// The table the heartbeat is written to, in the target's database: one row per backup set.
pub const HEARTBEAT_TABLE: &str = "vigil.heartbeat";
/// Where vigil wrote the heartbeat before it had a schema of its own (on the default
/// `search_path`, as the admin): read in restored copies, never written.
pub const LEGACY_HEARTBEAT_TABLE: &str = "public.vigil_heartbeat";

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

/// Writes `set`'s heartbeat row in [`HEARTBEAT_TABLE`] (creating the schema and the table on
/// first use) and returns the time it holds, by the server's clock (RFC 3339).
///
/// The schema and the table must be the connecting role's own, a plain table with no trigger
/// and no rule, checked under a lock that keeps a trigger from being added before the write:
/// the admin writes it, and a trigger or rule on it would run with the admin's privileges.
pub async fn beat(endpoint: &Endpoint, credential: &Credential, set: &str) -> Result<String, EngineError> {
    let what = "write the heartbeat";
    let failed = |err| EngineError::from_sqlx(what, &credential.username, err);
    let mut conn = connect(endpoint, credential, what).await?;
    // Created only when absent: CREATE SCHEMA asks for CREATE on the database even when the
    // schema exists, and an operator may have made it for an admin without that grant.
    let schema: Option<String> = sqlx::query_scalar("SELECT pg_catalog.to_regnamespace($1)::text")
        .bind(HEARTBEAT_SCHEMA)
        .fetch_one(&mut conn)
        .await
        .map_err(failed)?;
    let create_schema = match schema {
        None => format!("CREATE SCHEMA IF NOT EXISTS {HEARTBEAT_SCHEMA}; "),
        Some(_) => String::new(),
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{create_schema}CREATE TABLE IF NOT EXISTS {HEARTBEAT_TABLE} \
         (set_name pg_catalog.text PRIMARY KEY, beat_at pg_catalog.timestamptz NOT NULL)"
    )))
    .execute(&mut conn)
    .await
    .map_err(failed)?;
    let mut tx = conn.begin().await.map_err(failed)?;
    // Checked before the lock, which needs privileges on the table, and again after it:
    // SHARE ROW EXCLUSIVE conflicts with CREATE TRIGGER's lock, so none appears before commit.
    heartbeat_problem(&mut tx, credential).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("LOCK TABLE ONLY {HEARTBEAT_TABLE} IN SHARE ROW EXCLUSIVE MODE")))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    heartbeat_problem(&mut tx, credential).await?;
    let upsert = format!(
        "INSERT INTO {HEARTBEAT_TABLE} AS h (set_name, beat_at) VALUES ($1, pg_catalog.clock_timestamp()) \
         ON CONFLICT (set_name) DO UPDATE SET beat_at = excluded.beat_at \
         RETURNING pg_catalog.to_char(h.beat_at AT TIME ZONE 'UTC', {TIME})"
    );
    let at = sqlx::query_scalar(sqlx::AssertSqlSafe(upsert)).bind(set).fetch_one(&mut *tx).await.map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(at)
}

/// Refuses the heartbeat's schema and table unless they are fit for the admin to write.
async fn heartbeat_problem(conn: &mut sqlx::PgConnection, credential: &Credential) -> Result<(), EngineError> {
    let what = "write the heartbeat";
    let found: Option<Option<String>> = sqlx::query_scalar(HEARTBEAT_CHECK)
        .bind(HEARTBEAT_SCHEMA)
        .bind(HEARTBEAT_TABLE)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|err| EngineError::from_sqlx(what, &credential.username, err))?;
    let problem = match found {
        Some(None) => return Ok(()),
        Some(Some(problem)) => problem,
        None => format!("{HEARTBEAT_TABLE} is missing after being created"),
    };
    Err(EngineError::Refused {
        what: what.to_owned(),
        reason: format!(
            "{problem}; vigil writes only to a schema and table its admin owns: have schema {HEARTBEAT_SCHEMA} dropped (vigil keeps nothing else there) and beat again"
        ),
    })
}

/// What is wrong with the heartbeat's schema (`$1`) and table (`$2`) for the role writing it,
/// or NULL: each must be the current role's, and the table a plain one without triggers or
/// rules (a rule would rewrite the write; row security is ignored by the owner).
const HEARTBEAT_CHECK: &str = "\
    SELECT CASE \
      WHEN n.nspowner <> r.oid THEN pg_catalog.format('schema %I is owned by %s, not %s', n.nspname, pg_catalog.pg_get_userbyid(n.nspowner), r.rolname) \
      WHEN c.relkind <> 'r' THEN pg_catalog.format('%s is not a plain table', $2) \
      WHEN c.relowner <> r.oid THEN pg_catalog.format('%s is owned by %s, not %s', $2, pg_catalog.pg_get_userbyid(c.relowner), r.rolname) \
      WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid) THEN pg_catalog.format('%s has a trigger', $2) \
      WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w WHERE w.ev_class = c.oid) THEN pg_catalog.format('%s has a rule', $2) \
    END \
    FROM pg_catalog.pg_namespace n, pg_catalog.pg_class c, pg_catalog.pg_roles r \
    WHERE n.nspname = $1 AND c.oid = pg_catalog.to_regclass($2) AND r.rolname = current_user";

/// `set`'s heartbeat in a (restored) database and the table it was read from, if a table holds
/// a row for it: [`HEARTBEAT_TABLE`], else [`LEGACY_HEARTBEAT_TABLE`], where vigil wrote it
/// before, so a copy restored from a backup older than the upgrade is still dated. Read as a
/// role that can harm nothing (a drill's own), and only from plain tables: a view of that name
/// is not read at all.
pub async fn last_beat(
    endpoint: &Endpoint,
    credential: &Credential,
    set: &str,
) -> Result<Option<(String, &'static str)>, EngineError> {
    let what = "read the heartbeat";
    let failed = |err| EngineError::from_sqlx(what, &credential.username, err);
    let mut conn = connect(endpoint, credential, what).await?;
    for table in [HEARTBEAT_TABLE, LEGACY_HEARTBEAT_TABLE] {
        // A copy restored from before the first heartbeat has no table: no heartbeat, not an error.
        let plain: Option<bool> = sqlx::query_scalar(
            "SELECT c.relkind = 'r' FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
        )
        .bind(table)
        .fetch_optional(&mut conn)
        .await
        .map_err(failed)?;
        if plain != Some(true) {
            continue;
        }
        let sql =
            format!("SELECT pg_catalog.to_char(beat_at AT TIME ZONE 'UTC', {TIME}) FROM {table} WHERE set_name = $1");
        let beat: Option<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(set).fetch_optional(&mut conn).await.map_err(failed)?;
        if let Some(at) = beat {
            return Ok(Some((at, table)));
        }
    }
    Ok(None)
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
