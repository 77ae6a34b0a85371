//! Alerts: conditions a person must hear of (a rotation failed, a backup failed, a recovery point
//! older than its RPO target, …), sent to webhooks once when they start and once when they clear.
//!
//! A condition firing is a row in `alerts`, keyed by kind and subject, so that it is sent once
//! however many jobs and replicas see it, and resolved once by whichever sees it clear. Each
//! notice is delivered to every webhook with retries, and then recorded in the ledger
//! (`alert.sent`) with where it was delivered. Summaries are made from vigil's own outcomes,
//! which never carry a secret value; webhook URLs are never shown.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::Row as _;
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::evidence::{Kind, Ledger, NewRecord, Outcome};
use crate::state::{Db, Fenced, StateError, fenced, on_pool};
use crate::webhooks::{self, Format};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A rotation rolled back or was refused.
    RotationFailed,
    /// A secret's last rotation did not complete and needs a person (`vigil status`).
    NeedsAttention,
    /// A secret is a day or more past its rotation's due time.
    Overdue,
    /// A secret's current credential no longer logs in (changed out of band).
    CredentialCheckFailed,
    /// A backup, or its verification, failed.
    BackupFailed,
    /// A set's newest recovery point is older than the RPO target of a drill restoring it.
    RpoExceeded,
    /// A drill failed: a check, a target, or the restore.
    DrillFailed,
    /// The evidence ledger no longer verifies.
    EvidenceVerificationFailed,
    /// A leader lost the lead without stepping down (killed, paused, partitioned): an event,
    /// sent once by the leader that took over.
    LeadershipLost,
}

impl AlertKind {
    /// The name stored and sent.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RotationFailed => "rotation_failed",
            Self::NeedsAttention => "needs_attention",
            Self::Overdue => "overdue",
            Self::CredentialCheckFailed => "credential_check_failed",
            Self::BackupFailed => "backup_failed",
            Self::RpoExceeded => "rpo_exceeded",
            Self::DrillFailed => "drill_failed",
            Self::EvidenceVerificationFailed => "evidence_verification_failed",
            Self::LeadershipLost => "leadership_lost",
        }
    }

    /// A few words for people.
    pub const fn title(self) -> &'static str {
        match self {
            Self::RotationFailed => "rotation failed",
            Self::NeedsAttention => "rotation needs attention",
            Self::Overdue => "rotation overdue",
            Self::CredentialCheckFailed => "current credential does not log in",
            Self::BackupFailed => "backup failed",
            Self::RpoExceeded => "RPO exposure above target",
            Self::DrillFailed => "drill failed",
            Self::EvidenceVerificationFailed => "evidence ledger does not verify",
            Self::LeadershipLost => "leadership lost",
        }
    }
}

/// Whether a notice starts an alert, ends one, or is an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The condition started.
    Firing,
    /// The condition cleared.
    Resolved,
    /// Something happened once (nothing to resolve).
    Event,
}

/// One message about an alert: the generic JSON body, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// `firing`, `resolved` or `event`.
    pub status: Status,
    /// What it is about.
    pub kind: AlertKind,
    /// What it concerns: `secret:NAME`, `backup:SET`, `drill:NAME`, `evidence`, `daemon`.
    pub subject: String,
    /// What happened, in one line.
    pub summary: String,
    /// When the condition started.
    pub since: String,
    /// When this notice was made.
    pub at: String,
}

impl Notice {
    /// The body for a webhook of `format`.
    pub fn body(&self, format: Format) -> serde_json::Value {
        match format {
            Format::Json => {
                let mut body = serde_json::to_value(self).unwrap_or_default();
                body["source"] = "vigil".into();
                body["title"] = self.kind.title().into();
                body
            }
            Format::Slack => {
                let text = match self.status {
                    Status::Firing => {
                        format!(":red_circle: vigil: {} ({}): {}", self.kind.title(), self.subject, self.summary)
                    }
                    Status::Resolved => {
                        format!(
                            ":large_green_circle: vigil: resolved: {} ({}), firing since {}",
                            self.kind.title(),
                            self.subject,
                            self.since
                        )
                    }
                    Status::Event => {
                        format!(":warning: vigil: {} ({}): {}", self.kind.title(), self.subject, self.summary)
                    }
                };
                serde_json::json!({ "text": text })
            }
        }
    }
}

/// Raises and clears alerts; what it raises goes to an [`Outbox`].
#[derive(Clone)]
pub struct Alerts {
    db: Db,
    clock: Arc<dyn Clock>,
    queue: mpsc::UnboundedSender<Notice>,
}

/// The notices raised, waiting for delivery.
pub struct Outbox {
    queue: mpsc::UnboundedReceiver<Notice>,
}

impl Outbox {
    /// The next notice; `None` once every [`Alerts`] handle is gone.
    pub async fn next(&mut self) -> Option<Notice> {
        self.queue.recv().await
    }

    /// A notice already waiting, if any.
    pub fn try_next(&mut self) -> Option<Notice> {
        self.queue.try_recv().ok()
    }
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Alerts {
    /// Alerts kept in `db`, and the outbox their notices go to.
    pub fn new(db: Db, clock: Arc<dyn Clock>) -> (Self, Outbox) {
        let (queue, receiver) = mpsc::unbounded_channel();
        (Self { db, clock, queue }, Outbox { queue: receiver })
    }

    /// Fires `kind` on `subject` unless it fires already (then nothing is sent).
    pub async fn raise(&self, kind: AlertKind, subject: &str, summary: &str) -> Result<(), StateError> {
        const SQL: &str = "INSERT INTO alerts (kind, subject, since, summary) VALUES ($1, $2, $3, $4) \
                           ON CONFLICT (kind, subject) DO NOTHING";
        let now = stamp(self.clock.now());
        let written: Result<Result<u64, Fenced>, StateError> = fenced!(self.db, self.db.guard(), tx => sqlx::query(SQL)
            .bind(kind.as_str())
            .bind(subject)
            .bind(&now)
            .bind(summary)
            .execute(&mut *tx)
            .await?
            .rows_affected());
        let new = written??;
        if new == 1 {
            tracing::warn!(alert = kind.as_str(), subject, summary, "alert firing");
            self.send(Status::Firing, kind, subject, summary.to_owned(), now.clone(), now);
        }
        Ok(())
    }

    /// Resolves `kind` on `subject` if it fires.
    pub async fn clear(&self, kind: AlertKind, subject: &str) -> Result<(), StateError> {
        const SQL: &str = "DELETE FROM alerts WHERE kind = $1 AND subject = $2 RETURNING since, summary";
        let written: Result<Result<_, Fenced>, StateError> = fenced!(self.db, self.db.guard(), tx => {
            match sqlx::query(SQL).bind(kind.as_str()).bind(subject).fetch_optional(&mut *tx).await? {
                Some(row) => Some((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?)),
                None => None,
            }
        });
        let ended = written??;
        if let Some((since, summary)) = ended {
            tracing::info!(alert = kind.as_str(), subject, "alert resolved");
            self.send(Status::Resolved, kind, subject, summary, since, stamp(self.clock.now()));
        }
        Ok(())
    }

    /// These alerts written through `db` (a claimed run's handle): refused, and nothing sent,
    /// once the run's claim is lost, so a replica that was paused while another took its run
    /// over raises no alert for the run it no longer owns.
    pub fn through(&self, db: Db) -> Self {
        Self { db, ..self.clone() }
    }

    /// Raises `kind` on `subject` when `problem` says what is wrong, and clears it otherwise.
    pub async fn settle(&self, kind: AlertKind, subject: &str, problem: Option<&str>) {
        let settled = match problem {
            Some(summary) => self.raise(kind, subject, summary).await,
            None => self.clear(kind, subject).await,
        };
        if let Err(err) = settled {
            tracing::error!(%err, alert = kind.as_str(), subject, "cannot record the alert's state; it is looked at again when the job next runs");
        }
    }

    /// Sends an event: something that happened once, with nothing to resolve.
    pub fn event(&self, kind: AlertKind, subject: &str, summary: &str) {
        let now = stamp(self.clock.now());
        tracing::warn!(alert = kind.as_str(), subject, summary, "alert");
        self.send(Status::Event, kind, subject, summary.to_owned(), now.clone(), now);
    }

    fn send(&self, status: Status, kind: AlertKind, subject: &str, summary: String, since: String, at: String) {
        let notice = Notice { status, kind, subject: subject.to_owned(), summary, since, at };
        // The outbox lives as long as the daemon; a notice raised as it stops is dropped, and
        // the alert's row still says it fires.
        let _ = self.queue.send(notice);
    }
}

/// One alert firing.
#[derive(Debug, Clone, Serialize)]
pub struct Firing {
    /// What it is about.
    pub kind: String,
    /// What it concerns.
    pub subject: String,
    /// Since when.
    pub since: String,
    /// What happened.
    pub summary: String,
}

/// Every alert firing, by kind and subject.
pub async fn firing(db: &Db) -> Result<Vec<Firing>, sqlx::Error> {
    const SQL: &str = "SELECT kind, subject, since, summary FROM alerts ORDER BY kind, subject";
    Ok(on_pool!(db, pool => {
        let mut out = Vec::new();
        for row in sqlx::query(SQL).fetch_all(pool).await? {
            out.push(Firing { kind: row.try_get(0)?, subject: row.try_get(1)?, since: row.try_get(2)?, summary: row.try_get(3)? });
        }
        out
    }))
}

/// How a notice reached one webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The webhook's name.
    pub webhook: String,
    /// Whether it accepted the notice.
    pub delivered: bool,
    /// Posts made.
    pub attempts: u32,
    /// The last error, if it was not delivered (never the URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How many times a notice is posted to a webhook that fails transiently, waiting 1 s, then
/// doubling, between posts.
const ATTEMPTS: u32 = 5;

/// Posts `notice` to each webhook whose URL resolved, retrying transient failures with
/// backoff; a URL that did not resolve is a failed delivery naming why.
pub async fn deliver(
    client: &reqwest::Client,
    webhooks: &[(webhooks::Settings, Result<SecretString, String>)],
    notice: &Notice,
) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    for (webhook, url) in webhooks {
        let mut delivery = Delivery { webhook: webhook.name.clone(), delivered: false, attempts: 0, error: None };
        match url {
            Err(why) => delivery.error = Some(format!("its URL could not be read: {why}")),
            Ok(url) => {
                let body = notice.body(webhook.format);
                let mut wait = std::time::Duration::from_secs(1);
                loop {
                    delivery.attempts += 1;
                    match webhooks::post(client, webhook, url, &body).await {
                        Ok(()) => {
                            delivery.delivered = true;
                            delivery.error = None;
                            break;
                        }
                        Err(err) => {
                            let transient = err.is_transient();
                            delivery.error = Some(err.to_string());
                            if !transient || delivery.attempts >= ATTEMPTS {
                                break;
                            }
                            tokio::time::sleep(wait).await;
                            wait *= 2;
                        }
                    }
                }
                if let Some(error) = &delivery.error {
                    tracing::error!(webhook = %webhook.name, attempts = delivery.attempts, %error, "an alert was not delivered");
                }
            }
        }
        deliveries.push(delivery);
    }
    deliveries
}

/// Records `notice` and where it was delivered in the ledger.
pub async fn record(
    ledger: &Ledger,
    notice: &Notice,
    deliveries: &[Delivery],
) -> Result<(), crate::evidence::EvidenceError> {
    let outcome = if deliveries.iter().all(|d| d.delivered) { Outcome::Succeeded } else { Outcome::Failed };
    let details = serde_json::json!({ "notice": notice, "deliveries": deliveries });
    ledger
        .append(NewRecord { kind: Kind::AlertSent.into(), subject: notice.subject.clone(), outcome, details })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::state::StateStore;

    /// A condition is sent once however often it is raised, resolved once when it clears, and
    /// raised again afterwards as a new alert; events are sent every time.
    #[tokio::test]
    async fn an_alert_fires_once_while_its_condition_lasts_and_resolves_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StateStore::Sqlite { path: dir.path().join("state.db") }).await.unwrap();
        let (alerts, mut outbox) = Alerts::new(db.clone(), Arc::new(SystemClock));
        for _ in 0..3 {
            alerts.settle(AlertKind::BackupFailed, "backup:orders", Some("the store was down")).await;
        }
        let firing = outbox.try_next().unwrap();
        assert_eq!(
            (firing.status, firing.kind, firing.subject.as_str()),
            (Status::Firing, AlertKind::BackupFailed, "backup:orders")
        );
        assert!(outbox.try_next().is_none(), "sent once");
        assert_eq!(super::firing(&db).await.unwrap().len(), 1);
        alerts.settle(AlertKind::BackupFailed, "backup:orders", None).await;
        alerts.settle(AlertKind::BackupFailed, "backup:orders", None).await;
        let resolved = outbox.try_next().unwrap();
        assert_eq!((resolved.status, resolved.summary.as_str()), (Status::Resolved, "the store was down"));
        assert_eq!(resolved.since, firing.since);
        assert!(outbox.try_next().is_none(), "resolved once");
        alerts.settle(AlertKind::BackupFailed, "backup:orders", Some("again")).await;
        assert_eq!(outbox.try_next().unwrap().status, Status::Firing);
        alerts.event(AlertKind::LeadershipLost, "daemon", "epoch 3 ended");
        alerts.event(AlertKind::LeadershipLost, "daemon", "epoch 4 ended");
        assert_eq!(outbox.try_next().unwrap().status, Status::Event);
        assert_eq!(outbox.try_next().unwrap().summary, "epoch 4 ended");
    }

    #[test]
    fn each_format_says_what_and_where() {
        let notice = Notice {
            status: Status::Firing,
            kind: AlertKind::RpoExceeded,
            subject: "backup:orders".into(),
            summary: "orders: recovery point 2h old, RPO target 15m".into(),
            since: "2026-11-30T08:00:00Z".into(),
            at: "2026-11-30T08:00:00Z".into(),
        };
        let json = notice.body(Format::Json);
        assert_eq!(json["kind"], "rpo_exceeded");
        assert_eq!(json["status"], "firing");
        assert_eq!(json["source"], "vigil");
        assert_eq!(json["title"], "RPO exposure above target");
        let slack = notice.body(Format::Slack);
        let text = slack["text"].as_str().unwrap();
        assert!(
            text.contains("RPO exposure above target") && text.contains("backup:orders") && text.contains("2h old")
        );
        assert_eq!(slack.as_object().unwrap().len(), 1, "Slack takes {{\"text\": …}}");
    }
}
