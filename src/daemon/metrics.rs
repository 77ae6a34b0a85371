//! The daemon's Prometheus metrics (`/metrics`), documented in `docs/metrics.md`.
//!
//! Counters and per-run gauges are set as jobs end; the gauges that describe standing state
//! (seconds until each secret is due, secrets needing attention, the ledger's size and the age
//! of its newest checkpoint) are refreshed from the state store at every scrape, so that they
//! agree with `vigil status` at that instant.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type Seconds = Gauge<f64, AtomicU64>;

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Rotations ended, by secret kind and outcome (`done`, `waiting`, `rolled_back`, `stuck`,
    /// `refused`).
    pub rotations: Family<Labels, Counter>,
    /// Seconds until each secret is due; negative when overdue.
    pub secret_due: Family<Labels, Seconds>,
    /// Secrets whose last rotation needs a person.
    pub needing_attention: Gauge,
    /// Backups ended, by set and outcome (`verified`, `failed`).
    pub backups: Family<Labels, Counter>,
    /// The last backup's size as stored, by set.
    pub backup_bytes: Family<Labels, Gauge>,
    /// The last backup's duration, by set.
    pub backup_duration: Family<Labels, Seconds>,
    /// Seconds since the recovery point of each set's newest verified backup (for pgbackrest
    /// sets, the WAL archive's exposure).
    pub recovery_point_age: Family<Labels, Seconds>,
    /// The tightest RPO target of the drills restoring each set.
    pub rpo_target: Family<Labels, Seconds>,
    /// Drills ended, by drill and outcome (`passed`, `failed`).
    pub drills: Family<Labels, Counter>,
    /// The last drill's RTO and RPO, by drill.
    pub drill_rto: Family<Labels, Seconds>,
    /// See `drill_rto`.
    pub drill_rpo: Family<Labels, Seconds>,
    /// Current credentials that did not log in at the last check.
    pub drifted: Gauge,
    /// Scheduled jobs that ended in failure, by job kind.
    pub job_failures: Family<Labels, Counter>,
    /// 1 while this daemon leads (schedules), 0 as a standby.
    pub leader: Gauge,
    /// The leader's epoch (fencing token).
    pub epoch: Gauge,
    /// Records appended to the evidence ledger since this daemon started.
    pub records_appended: Counter,
    /// Seconds since the newest signed checkpoint.
    pub checkpoint_age: Seconds,
    /// Configuration reloads, by outcome (`applied`, `refused`).
    pub reloads: Family<Labels, Counter>,
    /// 1 when the last reload (or the start) loaded its configuration, 0 when it was refused.
    pub config_ok: Gauge,
    /// Alerts firing, by kind (read from the state store at each scrape).
    pub alerts_firing: Family<Labels, Gauge>,
    /// Alert notices posted to webhooks, by outcome (`delivered`, `failed`).
    pub alerts_sent: Family<Labels, Counter>,
    /// The ledger's size when last seen, to turn it into the counter above.
    ledger_seen: AtomicU64,
}

impl Metrics {
    /// Every metric registered, the ledger seen at `ledger_size` records.
    pub fn new(ledger_size: u64) -> Self {
        let mut registry = Registry::with_prefix("vigil");
        let metrics = Self {
            rotations: Family::default(),
            secret_due: Family::default(),
            needing_attention: Gauge::default(),
            backups: Family::default(),
            backup_bytes: Family::default(),
            backup_duration: Family::default(),
            recovery_point_age: Family::default(),
            rpo_target: Family::default(),
            drills: Family::default(),
            drill_rto: Family::default(),
            drill_rpo: Family::default(),
            drifted: Gauge::default(),
            job_failures: Family::default(),
            leader: Gauge::default(),
            epoch: Gauge::default(),
            records_appended: Counter::default(),
            checkpoint_age: Seconds::default(),
            reloads: Family::default(),
            config_ok: Gauge::default(),
            alerts_firing: Family::default(),
            alerts_sent: Family::default(),
            ledger_seen: AtomicU64::new(ledger_size),
            registry: Registry::default(),
        };
        metrics.config_ok.set(1);
        let r = &mut registry;
        r.register("rotations", "Rotations ended, by secret kind and outcome", metrics.rotations.clone());
        r.register(
            "secret_due_seconds",
            "Seconds until each secret is due; negative when overdue",
            metrics.secret_due.clone(),
        );
        r.register(
            "secrets_needing_attention",
            "Secrets whose last rotation needs a person",
            metrics.needing_attention.clone(),
        );
        r.register("backups", "Backups ended, by set and outcome", metrics.backups.clone());
        r.register("backup_bytes", "The last backup's size as stored, by set", metrics.backup_bytes.clone());
        r.register("backup_duration_seconds", "The last backup's duration, by set", metrics.backup_duration.clone());
        r.register(
            "backup_recovery_point_age_seconds",
            "Seconds since the recovery point of the set's newest verified backup (pgbackrest: the WAL archive's exposure)",
            metrics.recovery_point_age.clone(),
        );
        r.register(
            "backup_rpo_target_seconds",
            "The tightest RPO target of the drills restoring the set",
            metrics.rpo_target.clone(),
        );
        r.register("drills", "Drills ended, by drill and outcome", metrics.drills.clone());
        r.register("drill_rto_seconds", "The last drill's measured RTO", metrics.drill_rto.clone());
        r.register("drill_rpo_seconds", "The last drill's measured RPO", metrics.drill_rpo.clone());
        r.register(
            "credentials_drifted",
            "Current credentials that did not log in at the last check",
            metrics.drifted.clone(),
        );
        r.register("job_failures", "Scheduled jobs that ended in failure, by job kind", metrics.job_failures.clone());
        r.register("leader", "1 while this daemon schedules work, 0 as a standby", metrics.leader.clone());
        r.register("leader_epoch", "The leader's epoch (fencing token)", metrics.epoch.clone());
        r.register(
            "evidence_records_appended",
            "Evidence records appended since this daemon started",
            metrics.records_appended.clone(),
        );
        r.register(
            "evidence_checkpoint_age_seconds",
            "Seconds since the newest signed checkpoint",
            metrics.checkpoint_age.clone(),
        );
        r.register("config_reloads", "Configuration reloads, by outcome", metrics.reloads.clone());
        r.register(
            "config_loaded",
            "1 when the configuration in use is the newest on disk, 0 after a refused reload",
            metrics.config_ok.clone(),
        );
        r.register("alerts_firing", "Alerts firing, by kind", metrics.alerts_firing.clone());
        r.register(
            "alert_notices",
            "Alert notices posted to webhooks, by outcome (after retries)",
            metrics.alerts_sent.clone(),
        );
        Self { registry, ..metrics }
    }

    /// The ledger holds `size` records now.
    pub fn ledger_size(&self, size: u64) {
        let seen = self.ledger_seen.swap(size, Ordering::Relaxed);
        self.records_appended.inc_by(size.saturating_sub(seen));
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// One label.
pub fn label(name: &'static str, value: &str) -> Labels {
    vec![(name, value.to_owned())]
}

/// Two labels.
pub fn labels(a: (&'static str, &str), b: (&'static str, &str)) -> Labels {
    vec![(a.0, a.1.to_owned()), (b.0, b.1.to_owned())]
}
