//! What each record vigil writes says happened: one enum, with every wire string in this file.
//!
//! The ledger itself stores any dotted kind (operators append `manual.*` records, and a ledger
//! may hold kinds a newer vigil wrote), so records read back carry the kind as text; what vigil
//! writes comes from [`Kind`].

/// The part of vigil a saga belongs to, which prefixes its records' kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Credential rotation.
    Rotation,
    /// Backups.
    Backup,
    /// Restore drills.
    Drill,
}

/// A kind of record vigil writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The first record, announcing the first signing key.
    Genesis,
    /// The announcement of a new signing key.
    KeyRollover,
    /// A saga started.
    SagaStarted(Area),
    /// A saga step's intent or outcome (act or undo).
    SagaStep(Area),
    /// A saga finished: every step acted.
    SagaFinished(Area),
    /// A saga failed and every step taken was undone.
    SagaRolledBack(Area),
    /// A current credential was checked against its target.
    RotationCheck,
    /// A `--check --watch` period ended, with its failures.
    RotationWatch,
    /// A backup was written.
    BackupWritten,
    /// A backup was read back and checked.
    BackupVerified,
    /// A backup was fetched for a restore.
    BackupFetched,
    /// A backup was deleted by retention.
    BackupPruned,
    /// An RDS snapshot became available.
    SnapshotAvailable,
    /// An RDS snapshot was copied to another region.
    SnapshotCopied,
    /// A daemon took the lead (or, on SQLite, started) with a new epoch.
    DaemonLeading,
    /// A daemon stopped scheduling: shut down, or leadership lost.
    DaemonStopped,
    /// A daemon reloaded its configuration, or refused a new one.
    DaemonReload,
    /// An alert started, ended or happened, and where it was delivered.
    AlertSent,
    /// A compliance report was exported: its period, range and the hash of its bundle's manifest.
    ReportExported,
}

impl Kind {
    /// The dotted name stored in the ledger.
    pub const fn as_str(self) -> &'static str {
        use Area::{Backup, Drill, Rotation};
        match self {
            Self::Genesis => "evidence.genesis",
            Self::KeyRollover => "evidence.key_rollover",
            Self::SagaStarted(Rotation) => "rotation.started",
            Self::SagaStarted(Backup) => "backup.started",
            Self::SagaStarted(Drill) => "drill.started",
            Self::SagaStep(Rotation) => "rotation.step",
            Self::SagaStep(Backup) => "backup.step",
            Self::SagaStep(Drill) => "drill.step",
            Self::SagaFinished(Rotation) => "rotation.finished",
            Self::SagaFinished(Backup) => "backup.finished",
            Self::SagaFinished(Drill) => "drill.finished",
            Self::SagaRolledBack(Rotation) => "rotation.rolled_back",
            Self::SagaRolledBack(Backup) => "backup.rolled_back",
            Self::SagaRolledBack(Drill) => "drill.rolled_back",
            Self::RotationCheck => "rotation.check",
            Self::RotationWatch => "rotation.watch",
            Self::BackupWritten => "backup.written",
            Self::BackupVerified => "backup.verified",
            Self::BackupFetched => "backup.fetched",
            Self::BackupPruned => "backup.pruned",
            Self::SnapshotAvailable => "backup.snapshot_available",
            Self::SnapshotCopied => "backup.snapshot_copied",
            Self::DaemonLeading => "daemon.leading",
            Self::DaemonStopped => "daemon.stopped",
            Self::DaemonReload => "daemon.reload",
            Self::AlertSent => "alert.sent",
            Self::ReportExported => "report.exported",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Kind> for String {
    fn from(kind: Kind) -> Self {
        kind.as_str().to_owned()
    }
}

/// Whether operators may append records of `kind` by hand: `manual.` and a name, never a kind
/// vigil writes itself.
pub fn is_manual(kind: &str) -> bool {
    kind.strip_prefix("manual.").is_some_and(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_kinds_carry_their_area_and_no_two_kinds_share_a_name() {
        use Area::*;
        let all = [
            Kind::Genesis,
            Kind::KeyRollover,
            Kind::SagaStarted(Rotation),
            Kind::SagaStarted(Backup),
            Kind::SagaStep(Rotation),
            Kind::SagaStep(Backup),
            Kind::SagaFinished(Rotation),
            Kind::SagaFinished(Backup),
            Kind::SagaRolledBack(Rotation),
            Kind::SagaRolledBack(Backup),
            Kind::SagaStarted(Drill),
            Kind::SagaStep(Drill),
            Kind::SagaFinished(Drill),
            Kind::SagaRolledBack(Drill),
            Kind::RotationCheck,
            Kind::RotationWatch,
            Kind::BackupWritten,
            Kind::BackupVerified,
            Kind::BackupFetched,
            Kind::BackupPruned,
            Kind::SnapshotAvailable,
            Kind::SnapshotCopied,
            Kind::DaemonLeading,
            Kind::DaemonStopped,
            Kind::DaemonReload,
            Kind::AlertSent,
            Kind::ReportExported,
        ];
        let names: std::collections::BTreeSet<_> = all.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), all.len());
        assert!(all.iter().all(|k| !is_manual(k.as_str())), "no kind of vigil's passes for a manual one");
        assert!(is_manual("manual.restore_test") && !is_manual("manual.") && !is_manual("rotation.step"));
    }
}
