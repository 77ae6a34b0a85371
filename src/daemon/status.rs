//! What `vigil status` and the daemon's `/status` show: each secret against its cadence, and
//! each pgbackrest set's WAL archiving.

use serde::Serialize;

use crate::backup::BackupError;
use crate::backup::physical::{self, ArchiveHealth};
use crate::clock::Clock;
use crate::config::{BackupMethod, Plan};
use crate::rotation;
use crate::saga::SagaError;
use crate::state::Db;
use crate::stores::Stores;

/// Every secret's standing and every pgbackrest set's archive health.
#[derive(Debug, Serialize)]
pub struct Status {
    /// By secret name.
    pub secrets: Vec<SecretShown>,
    /// By pgbackrest set name.
    pub archives: Vec<ArchiveHealth>,
    /// Alerts firing, by kind and subject.
    pub alerts: Vec<crate::alerts::Firing>,
}

/// One secret's standing.
#[derive(Debug, Serialize)]
pub struct SecretShown {
    /// Its name.
    pub secret: String,
    /// Its kind.
    pub kind: &'static str,
    /// `store:path`.
    pub store: String,
    /// How it rotates.
    pub strategy: &'static str,
    /// When it last rotated.
    pub last_rotated: Option<String>,
    /// When it falls due.
    pub next_due: String,
    /// Seconds until it is due; negative when overdue (what `/metrics` exports).
    pub due_in_secs: i64,
    /// Whole days overdue.
    pub overdue_days: i64,
    /// The rotation in flight: id, step, status.
    pub in_flight: Option<String>,
    /// Why its last rotation needs a person.
    pub needs_attention: Option<String>,
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The state store.
    #[error(transparent)]
    State(#[from] SagaError),
    /// A backup set's archive.
    #[error(transparent)]
    Backup(#[from] BackupError),
}

/// The secrets' standing, read from the state store alone.
pub async fn secrets(plan: &Plan, db: &Db, clock: &dyn Clock) -> Result<Vec<SecretShown>, SagaError> {
    let now = clock.now();
    let states = rotation::states(plan, db, now).await?;
    let mut shown = Vec::new();
    for (name, state) in states {
        let spec = &plan.secrets[&name];
        shown.push(SecretShown {
            secret: name,
            kind: spec.kind.as_str(),
            store: format!("{}:{}", spec.store, spec.path),
            strategy: spec.strategy.as_str(),
            last_rotated: state.status.last_rotated,
            next_due: state.standing.next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            due_in_secs: (state.standing.next - now).num_seconds(),
            overdue_days: state.standing.overdue_days(),
            in_flight: state.in_flight.map(|s| {
                format!(
                    "{} at {} ({})",
                    s.id,
                    s.step,
                    serde_json::to_string(&s.status).unwrap_or_default().trim_matches('"')
                )
            }),
            needs_attention: state.status.needs_attention,
        });
    }
    Ok(shown)
}

/// The status the daemon serves: secrets and alerts from the state store, and the archives'
/// health as the RPO watch last measured it (`archives`), so that a request logs in nowhere.
pub async fn cached(
    plan: &Plan,
    db: &Db,
    clock: &dyn Clock,
    archives: Vec<ArchiveHealth>,
) -> Result<Status, StatusError> {
    let secrets = secrets(plan, db, clock).await?;
    let alerts = crate::alerts::firing(db).await.map_err(SagaError::from)?;
    Ok(Status { secrets, archives, alerts })
}

/// The whole status: secrets from the state store, archives from each source database and
/// pgBackRest repository.
pub async fn collect(plan: &Plan, db: &Db, stores: &Stores<'_>, clock: &dyn Clock) -> Result<Status, StatusError> {
    let secrets = secrets(plan, db, clock).await?;
    let mut archives = Vec::new();
    for (name, set) in &plan.backups {
        if matches!(set.method, BackupMethod::PgBackRest(_)) {
            archives.push(physical::archive_health(plan, stores, clock, name).await?);
        }
    }
    let alerts = crate::alerts::firing(db).await.map_err(SagaError::from)?;
    Ok(Status { secrets, archives, alerts })
}
