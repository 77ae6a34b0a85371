//! Embedded, versioned schema migrations, one SQL file per backend and version.

use sqlx::Row as _;

use super::{Db, Pool, StateError};

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Every migration, oldest first. Applied migrations are never edited: changes are new versions.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "evidence ledger",
        sqlite: include_str!("migrations/0001_evidence.sqlite.sql"),
        postgres: include_str!("migrations/0001_evidence.postgres.sql"),
    },
    Migration {
        version: 2,
        name: "sagas and secret status",
        sqlite: include_str!("migrations/0002_sagas.sqlite.sql"),
        postgres: include_str!("migrations/0002_sagas.postgres.sql"),
    },
    Migration {
        version: 3,
        name: "backup catalog",
        sqlite: include_str!("migrations/0003_backups.sqlite.sql"),
        postgres: include_str!("migrations/0003_backups.postgres.sql"),
    },
    Migration {
        version: 4,
        name: "namespaced saga subjects",
        sqlite: include_str!("migrations/0004_subjects.sqlite.sql"),
        postgres: include_str!("migrations/0004_subjects.postgres.sql"),
    },
    Migration {
        version: 5,
        name: "checkpoint frontiers",
        sqlite: include_str!("migrations/0005_checkpoint_frontiers.sqlite.sql"),
        postgres: include_str!("migrations/0005_checkpoint_frontiers.postgres.sql"),
    },
    Migration {
        version: 6,
        name: "daemon timetable and leader",
        sqlite: include_str!("migrations/0006_daemon.sqlite.sql"),
        postgres: include_str!("migrations/0006_daemon.postgres.sql"),
    },
    Migration {
        version: 7,
        name: "daemon work queue",
        sqlite: include_str!("migrations/0007_daemon_work.sqlite.sql"),
        postgres: include_str!("migrations/0007_daemon_work.postgres.sql"),
    },
    Migration {
        version: 8,
        name: "alerts firing",
        sqlite: include_str!("migrations/0008_alerts.sqlite.sql"),
        postgres: include_str!("migrations/0008_alerts.postgres.sql"),
    },
    Migration {
        version: 9,
        name: "daemon job schedules",
        sqlite: include_str!("migrations/0009_daemon_job_schedules.sqlite.sql"),
        postgres: include_str!("migrations/0009_daemon_job_schedules.postgres.sql"),
    },
];

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS vigil_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)";

/// A lock id for PostgreSQL's advisory lock: "vigil" in ASCII.
const PG_MIGRATION_LOCK: i64 = 0x0076_6967_696c;

/// Applies every migration the database lacks, in one transaction taken under a lock.
pub(super) async fn apply(db: &Db) -> Result<(), StateError> {
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    macro_rules! apply_in {
        ($tx:ident, $sql:ident) => {{
            sqlx::query(CREATE_TABLE).execute(&mut *$tx).await?;
            let found: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM vigil_migrations")
                .fetch_one(&mut *$tx)
                .await?
                .try_get(0)?;
            if found > known {
                return Err(StateError::TooNew { found, known });
            }
            for migration in MIGRATIONS.iter().filter(|m| m.version > found) {
                sqlx::raw_sql(migration.$sql).execute(&mut *$tx).await.map_err(|source| StateError::Migrate {
                    version: migration.version,
                    name: migration.name,
                    source,
                })?;
                sqlx::query("INSERT INTO vigil_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                    .bind(migration.version)
                    .bind(migration.name)
                    .bind(chrono::Utc::now().to_rfc3339())
                    .execute(&mut *$tx)
                    .await?;
            }
            $tx.commit().await?;
        }};
    }
    match db.pool() {
        Pool::Sqlite(pool) => {
            // BEGIN IMMEDIATE takes the write lock first, so two processes migrate one at a time.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            apply_in!(tx, sqlite);
        }
        Pool::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_MIGRATION_LOCK).execute(&mut *tx).await?;
            apply_in!(tx, postgres);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateStore;

    /// A database as vigil left it at schema 3 (bare saga subjects, the `attempts` column), with
    /// a rotation and a backup of one name in flight and a secret's status: opening it with this
    /// vigil namespaces every subject and keeps every row.
    #[tokio::test]
    async fn subjects_from_before_namespaces_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
            let pool = sqlx::sqlite::SqlitePool::connect_with(options).await.unwrap();
            sqlx::query(CREATE_TABLE).execute(&pool).await.unwrap();
            for migration in &MIGRATIONS[..3] {
                sqlx::raw_sql(migration.sqlite).execute(&pool).await.unwrap();
                sqlx::query("INSERT INTO vigil_migrations (version, name, applied_at) VALUES ($1, $2, 'then')")
                    .bind(migration.version)
                    .bind(migration.name)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            sqlx::raw_sql(
                "INSERT INTO sagas (id, kind, subject, step, status, data, attempts, error, started_at, updated_at) VALUES \
                 ('r', 'rotation.db_password', 'orders', 'set', 'running', '{}', 0, NULL, 't1', 't1'), \
                 ('b', 'backup.dump', 'orders2', 'write', 'running', '{}', 0, NULL, 't2', 't2'); \
                 INSERT INTO secret_status (subject, last_rotated, updated_at) VALUES ('orders', 't0', 't0');",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let db = crate::state::Db::open(&StateStore::Sqlite { path }).await.unwrap();
        let crate::state::Pool::Sqlite(pool) = db.pool() else { panic!("a file path opens an SQLite store") };
        let subjects: Vec<String> =
            sqlx::query_scalar("SELECT subject FROM sagas ORDER BY id").fetch_all(pool).await.unwrap();
        assert_eq!(subjects, ["backup:orders2", "secret:orders"]);
        let status: Vec<String> =
            sqlx::query_scalar("SELECT subject FROM secret_status").fetch_all(pool).await.unwrap();
        assert_eq!(status, ["secret:orders"]);
        let failed: Vec<Option<String>> =
            sqlx::query_scalar("SELECT failed_step FROM sagas ORDER BY id").fetch_all(pool).await.unwrap();
        assert_eq!(failed, [None, None], "the new column is there, empty for the old rows");
    }
}
