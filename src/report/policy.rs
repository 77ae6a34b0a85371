//! The declared policy a report measures against, taken from the configuration.

use crate::config::{BackupMethod, Plan};

use super::model::{BackupPolicy, DEFAULT_RPO_TARGET_SECS, DrillPolicy, Policy, SecretPolicy};

/// The policy `plan` declares: each secret's cadence, each set's RPO target (the tightest of
/// the drills restoring it), each drill's targets.
pub fn policy(plan: &Plan) -> Policy {
    let secrets = plan
        .secrets
        .iter()
        .map(|(name, spec)| SecretPolicy {
            name: name.clone(),
            kind: spec.kind.as_str().to_owned(),
            store: spec.store.as_str().to_owned(),
            strategy: spec.strategy.as_str().to_owned(),
            cadence_secs: spec.cadence.as_secs(),
        })
        .collect();
    let backup_sets = plan
        .backups
        .iter()
        .map(|(name, set)| {
            let r = set.retention;
            BackupPolicy {
                name: name.clone(),
                method: match set.method {
                    BackupMethod::Dump { .. } => "dump",
                    BackupMethod::PgBackRest(_) => "pgbackrest",
                    BackupMethod::RdsSnapshot { .. } => "rds_snapshot",
                }
                .to_owned(),
                schedule: set.schedule.to_string(),
                retention: format!(
                    "keep last {}, daily {}, weekly {}, monthly {}; the newest verified backup always kept",
                    r.keep_last, r.daily, r.weekly, r.monthly
                ),
                rpo_target_secs: plan
                    .drills
                    .values()
                    .filter(|drill| drill.backup == *name)
                    .map(|drill| drill.rpo.as_secs())
                    .min()
                    .unwrap_or(DEFAULT_RPO_TARGET_SECS),
            }
        })
        .collect();
    let drills = plan
        .drills
        .iter()
        .map(|(name, drill)| DrillPolicy {
            name: name.clone(),
            backup_set: drill.backup.clone(),
            schedule: drill.schedule.as_ref().map(ToString::to_string),
            rpo_target_secs: drill.rpo.as_secs(),
            rto_target_secs: drill.rto.as_secs(),
        })
        .collect();
    Policy { secrets, backup_sets, drills }
}
