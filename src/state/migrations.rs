//! Embedded, versioned schema migrations, one SQL file per backend and version.

use sqlx::Row as _;

use super::{Db, StateError};

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
    match db {
        Db::Sqlite(pool) => {
            // BEGIN IMMEDIATE takes the write lock first, so two processes migrate one at a time.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            apply_in!(tx, sqlite);
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_MIGRATION_LOCK).execute(&mut *tx).await?;
            apply_in!(tx, postgres);
        }
    }
    Ok(())
}
