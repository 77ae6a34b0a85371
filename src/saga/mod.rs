//! Linear sagas: a fixed sequence of steps, each with an action and an undo, whose position is
//! written to the state store (and the evidence ledger) before the step acts.
//!
//! A crash at any instant leaves a row saying which step was about to act or be undone; `resume`
//! repeats that step, which is safe because every action and undo is idempotent (a contract on
//! [`SagaDef`]). A step that fails for good unwinds the saga: the steps taken so far are undone
//! in reverse, the failed one included. Transient failures retry within the step, with
//! exponential backoff and full jitter, up to a bound; then the saga unwinds too.

mod registry;
mod store;

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub use registry::{Registry, Resume, Resumed};
pub use store::{Expected, MemoryStore, SagaRow, SagaStore, Status, get, in_flight, newest, waits};

use crate::clock::Clock;
use crate::evidence::{Area, EvidenceError, Kind, Ledger, NewRecord, Outcome};
use crate::state::StateError;

/// What a saga acts on, namespaced by what sort of thing it is: names are unique within a
/// section of the configuration only, so a secret and a backup set may share one, and must not
/// block each other (at most one saga is in flight per subject). Stored as `secret:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A secret vigil rotates.
    Secret(String),
    /// A backup set.
    Backup(String),
    /// A restore drill.
    Drill(String),
}

impl Subject {
    /// The configured name, without its namespace: what evidence records and people see.
    pub fn name(&self) -> &str {
        match self {
            Self::Secret(name) | Self::Backup(name) | Self::Drill(name) => name,
        }
    }

    /// The namespace as stored before the name.
    fn namespace(&self) -> &'static str {
        match self {
            Self::Secret(_) => "secret",
            Self::Backup(_) => "backup",
            Self::Drill(_) => "drill",
        }
    }

    /// The subject stored as `namespace:name`, if the namespace is known.
    pub fn parse(stored: &str) -> Option<Self> {
        let (namespace, name) = stored.split_once(':')?;
        let name = name.to_owned();
        match namespace {
            "secret" => Some(Self::Secret(name)),
            "backup" => Some(Self::Backup(name)),
            "drill" => Some(Self::Drill(name)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.namespace(), self.name())
    }
}

impl Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A step of a saga kind: a fixed, ordered set of named values.
pub trait Step: Copy + Eq + Debug + Send + Sync + 'static {
    /// Every step, in the order they act.
    const ALL: &'static [Self];

    /// The name stored and shown.
    fn name(self) -> &'static str;

    /// The step of that name.
    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|step| step.name() == name)
    }
}

/// Why a step did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StepError {
    /// May pass: retried within the step.
    #[error("{0}")]
    Transient(String),
    /// Will not pass by retrying: the saga unwinds.
    #[error("{0}")]
    Failed(String),
    /// Cancelled while waiting to retry a transient failure: the saga stays at the step.
    #[error("cancelled while retrying: {0}")]
    Cancelled(String),
}

/// The state store failing within a step may pass: the executor needs it to go on anyway. A
/// write refused by its fence will not: this process no longer owns the saga.
impl From<StateError> for StepError {
    fn from(err: StateError) -> Self {
        match err {
            StateError::Fenced(_) => Self::Failed(err.to_string()),
            err => Self::Transient(err.to_string()),
        }
    }
}

/// One kind of saga: its steps, what each does, and how each is undone.
///
/// Contract: `act` and `undo` are idempotent. Either may run again after a crash at any point,
/// including after it completed; running it twice must leave the same state as running it once.
pub trait SagaDef: Send + Sync {
    /// Its steps.
    type Step: Step;

    /// What it records for its steps (never a secret): what it started with, and facts steps
    /// found for later ones. Stored as JSON in the saga's row and its evidence records.
    type Data: Serialize + DeserializeOwned + Send + Sync;

    /// The saga kind stored with each saga, e.g. `rotation.db_password`.
    const KIND: &'static str;

    /// The part of vigil it belongs to: the prefix of its evidence records' kinds.
    const AREA: Area;

    /// The command that finishes sagas of this kind left in flight, e.g. `vigil rotate --resume`:
    /// the hint when another is refused for the same subject.
    const RESUME: &'static str;

    /// Performs `step`. It may return new saga data (never a secret), recorded before the next
    /// step's intent, for facts later steps need (a previous key's id, a retire time).
    fn act(
        &self,
        saga: &SagaRow,
        data: &Self::Data,
        step: Self::Step,
    ) -> impl Future<Output = Result<Option<Self::Data>, StepError>> + Send;

    /// The earliest time `step` may act, if it must wait (a retire step waits out an overlap
    /// window). Until then the saga stays at that step, recorded and resumable.
    fn not_before(&self, data: &Self::Data, step: Self::Step) -> Option<chrono::DateTime<chrono::Utc>> {
        let _ = (data, step);
        None
    }

    /// How the saga's `finished` record says it turned out: succeeded, unless the saga's own
    /// result says otherwise (a drill that ran to its end and failed a check), so that a ledger
    /// filtered on failures finds it.
    fn finished_outcome(&self, data: &Self::Data) -> Outcome {
        let _ = data;
        Outcome::Succeeded
    }

    /// Reverses `step` (which may have acted in part, or not at all).
    fn undo(
        &self,
        saga: &SagaRow,
        data: &Self::Data,
        step: Self::Step,
    ) -> impl Future<Output = Result<(), StepError>> + Send;
}

/// How transient failures are retried within a step.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per step, the first included.
    pub attempts: u32,
    /// The first backoff; each next one doubles, up to `cap`, and a random part of it is waited.
    pub base: Duration,
    /// The longest backoff.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 5, base: Duration::from_millis(200), cap: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: full jitter over the capped exponential.
    fn backoff(&self, attempt: u32) -> Duration {
        use rand_core::RngCore as _;
        let ceiling = self.base.saturating_mul(1 << attempt.min(16)).min(self.cap);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(rand_core::OsRng.next_u64() % nanos)
    }
}

/// How a saga ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Ended {
    /// Every step acted.
    Done,
    /// A step failed and every step taken was undone.
    RolledBack {
        /// The step that failed.
        step: String,
        /// Why.
        reason: String,
    },
    /// A step is not due yet: the saga waits at it, and a later resume runs it when due.
    Waiting {
        /// The step waiting.
        step: String,
        /// When it becomes due (RFC 3339).
        until: String,
    },
    /// Undoing failed too: a person must look.
    Stuck {
        /// The step whose undo failed.
        step: String,
        /// Why.
        reason: String,
    },
}

/// Why the executor itself failed (not a step: those end the saga as [`Ended`]).
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The state store failed: the step was not run.
    #[error(transparent)]
    State(#[from] StateError),
    /// A query failed: the step was not run.
    #[error("saga state query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// The evidence could not be written: the step was not run.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// Another saga is in flight for the same subject.
    #[error("{} already has a {kind} in flight ({id}); `{resume}` finishes it", subject.name())]
    InFlight {
        /// The subject.
        subject: Subject,
        /// The kind.
        kind: String,
        /// The saga in flight.
        id: String,
        /// The command that finishes it.
        resume: &'static str,
    },
    /// The saga's row moved on under this process (another vigil process resumed it).
    #[error(
        "saga {id} is no longer {expected} as this process left it: another vigil process moved it on; `vigil status` shows where it stands"
    )]
    Moved {
        /// The saga.
        id: String,
        /// The status this process expected.
        expected: &'static str,
    },
    /// A transition the saga's state machine forbids, refused before it was written.
    #[error("saga {id} cannot go from {from:?} to {to:?}; this is a bug in vigil, please report it")]
    Illegal {
        /// The saga.
        id: String,
        /// Where it stands.
        from: Status,
        /// Where it was to go.
        to: Status,
    },
    /// Cancelled (Ctrl-C, SIGTERM): the step before finished and was recorded, and `step` did
    /// not start (or, cancelled while waiting to retry it, did not finish).
    #[error("stopped at {step} of saga {id}; `{resume}` carries it on")]
    Cancelled {
        /// The saga.
        id: String,
        /// The step it stopped at.
        step: String,
        /// The command that finishes it.
        resume: &'static str,
    },
    /// The stored data is not what this saga kind records.
    #[error("saga {id} records data this vigil cannot read ({reason}); it was written by another vigil version")]
    Data {
        /// The saga.
        id: String,
        /// What did not fit.
        reason: String,
    },
    /// The stored step name is not one of this saga kind's.
    #[error("saga {id} is at unknown step {step:?}; it was written by another vigil version")]
    UnknownStep {
        /// The saga.
        id: String,
        /// The step.
        step: String,
    },
}

/// Crashes the process at the named point when the `failpoints` feature is on and
/// `VIGIL_FAILPOINT` names it: how tests prove that a crash anywhere is survivable.
/// Release builds do not have the feature.
fn failpoint(kind: &str, when: &str, step: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("VIGIL_FAILPOINT").is_ok_and(|point| point == format!("{kind}:{when}:{step}")) {
        eprintln!("vigil: failpoint {kind}:{when}:{step}: aborting");
        std::process::abort();
    }
    let _ = (kind, when, step);
}

/// A transient failure injected into the first `N` attempts of a step when the `failpoints`
/// feature is on and `VIGIL_FAULT=kind:step:N`: how tests prove that retries and their limit
/// work against real services.
fn injected_fault(kind: &str, step: &str, attempt: u32) -> Option<StepError> {
    #[cfg(feature = "failpoints")]
    if let Ok(spec) = std::env::var("VIGIL_FAULT")
        && let Some((point, count)) = spec.rsplit_once(':')
        && point == format!("{kind}:{step}")
        && count.parse::<u32>().is_ok_and(|count| attempt < count)
    {
        return Some(StepError::Transient(format!("injected transient fault, attempt {}", attempt + 1)));
    }
    let _ = (kind, step, attempt);
    None
}

/// A pause at the start of a step's action when the `failpoints` feature is on and
/// `VIGIL_STEP_DELAY=kind:step:MILLISECONDS`: how tests signal a process while a step is in
/// flight.
async fn injected_delay(kind: &str, step: &str) {
    #[cfg(feature = "failpoints")]
    if let Ok(spec) = std::env::var("VIGIL_STEP_DELAY")
        && let Some((point, millis)) = spec.rsplit_once(':')
        && point == format!("{kind}:{step}")
        && let Ok(millis) = millis.parse::<u64>()
    {
        tracing::info!(step, millis, "failpoint: pausing inside the step");
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
    let _ = (kind, step);
}

/// Runs sagas, recording each step in the state store and the evidence ledger before it acts.
pub struct Executor<'a> {
    /// Where saga rows live.
    pub store: &'a dyn SagaStore,
    /// Where each step is recorded.
    pub ledger: &'a Ledger,
    /// The time recorded in rows.
    pub clock: &'a dyn Clock,
    /// How transient failures are retried.
    pub retry: RetryPolicy,
    /// Once cancelled, no step starts (the one in flight finishes and is recorded) and retries
    /// stop waiting: the saga stays in flight, to be resumed.
    pub cancel: &'a CancellationToken,
}

impl Executor<'_> {
    /// Starts a saga of `def`'s kind about `subject`, with `data` (never a secret), and runs it.
    pub async fn start<D: SagaDef>(
        &self,
        def: &D,
        id: &str,
        subject: &Subject,
        data: D::Data,
    ) -> Result<(SagaRow, Ended), SagaError> {
        // Cancelled before it began, a saga leaves no row behind.
        if self.cancel.is_cancelled() {
            let step = D::Step::ALL[0].name().to_owned();
            return Err(SagaError::Cancelled { id: id.to_owned(), step, resume: D::RESUME });
        }
        let data = serde_json::to_value(&data)
            .map_err(|err| SagaError::Data { id: id.to_owned(), reason: err.to_string() })?;
        let at = self.now();
        let saga = SagaRow {
            id: id.to_owned(),
            kind: D::KIND.to_owned(),
            subject: subject.clone(),
            step: D::Step::ALL[0].name().to_owned(),
            status: Status::Running,
            data,
            failed_step: None,
            error: None,
            started_at: at.clone(),
            updated_at: at,
            waiting_until: None,
        };
        if let Some(other) = self.store.insert(&saga).await? {
            return Err(SagaError::InFlight {
                subject: saga.subject,
                kind: other.kind,
                id: other.id,
                resume: D::RESUME,
            });
        }
        self.record::<D>(&saga, "saga", "started", Outcome::Started, serde_json::json!({ "saga": D::KIND })).await?;
        self.drive(def, saga).await
    }

    /// Resumes `saga` to its end. A saga whose end is already in the ledger (a crash came between
    /// recording it and marking the row) is only marked: nothing acts again.
    pub async fn run<D: SagaDef>(&self, def: &D, mut saga: SagaRow) -> Result<(SagaRow, Ended), SagaError> {
        if saga.status.in_flight()
            && let Some(ended) = self.recorded_end::<D>(&saga).await?
        {
            let (step, status) = match &ended {
                Ended::Done => (saga.step.clone(), Status::Done),
                _ => (D::Step::ALL[0].name().to_owned(), Status::RolledBack),
            };
            let error = saga.error.clone();
            self.set(&mut saga, &step, status, error.as_deref()).await?;
            return Ok((saga, ended));
        }
        self.drive(def, saga).await
    }

    /// The end the ledger records for `saga`, if it records one.
    async fn recorded_end<D: SagaDef>(&self, saga: &SagaRow) -> Result<Option<Ended>, SagaError> {
        for kind in [Kind::SagaFinished(D::AREA), Kind::SagaRolledBack(D::AREA)] {
            let filter = crate::evidence::RecordFilter {
                kind: Some(kind.into()),
                subject: Some(saga.subject.name().to_owned()),
                since: Some(saga.started_at.clone()),
                limit: 1_000,
            };
            for record in crate::evidence::list(self.ledger.db(), &filter).await? {
                let details: serde_json::Value = serde_json::from_str(&record.details).unwrap_or_default();
                if details["saga"] != saga.id.as_str() {
                    continue;
                }
                return Ok(Some(match kind {
                    Kind::SagaFinished(_) => Ended::Done,
                    _ => Ended::RolledBack {
                        step: details["detail"]["step"].as_str().unwrap_or(&saga.step).to_owned(),
                        reason: details["detail"]["error"].as_str().unwrap_or_default().to_owned(),
                    },
                }));
            }
        }
        Ok(None)
    }

    /// Runs `saga` from its recorded step to its end.
    async fn drive<D: SagaDef>(&self, def: &D, mut saga: SagaRow) -> Result<(SagaRow, Ended), SagaError> {
        let steps = D::Step::ALL;
        let position = |name: &str| {
            D::Step::parse(name)
                .and_then(|s| steps.iter().position(|x| *x == s))
                .ok_or_else(|| SagaError::UnknownStep { id: saga.id.clone(), step: name.to_owned() })
        };
        let mut index = position(&saga.step)?;
        let mut data: D::Data = saga.decode()?;
        if saga.status == Status::Running {
            loop {
                let step = steps[index];
                if let Some(until) = def.not_before(&data, step)
                    && self.clock.now() < until
                {
                    // Stored rounded up to the second, so whoever resumes it at that time finds
                    // it due rather than a fraction of a second early.
                    let stored = until
                        .checked_add_signed(chrono::Duration::milliseconds(999))
                        .unwrap_or(until)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    if saga.step != step.name() || saga.waiting_until.as_deref() != Some(stored.as_str()) {
                        self.wait(&mut saga, step.name(), stored).await?;
                    }
                    let until = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    return Ok((saga, Ended::Waiting { step: step.name().into(), until }));
                }
                self.stop_if_cancelled::<D>(&saga, step.name())?;
                self.set(&mut saga, step.name(), Status::Running, None).await?;
                self.record::<D>(&saga, step.name(), "act", Outcome::Started, serde_json::Value::Null).await?;
                failpoint(D::KIND, "before", step.name());
                let act = |attempt| {
                    let fault = injected_fault(D::KIND, step.name(), attempt);
                    let (saga, data) = (&saga, &data);
                    async move {
                        injected_delay(D::KIND, step.name()).await;
                        match fault {
                            Some(fault) => Err(fault),
                            None => def.act(saga, data, step).await,
                        }
                    }
                };
                match self.retrying(act).await {
                    Ok(found) => {
                        if let Some(found) = found {
                            let value = serde_json::to_value(&found)
                                .map_err(|err| SagaError::Data { id: saga.id.clone(), reason: err.to_string() })?;
                            self.set_data(&mut saga, value).await?;
                            data = found;
                        }
                        self.record::<D>(&saga, step.name(), "act", Outcome::Succeeded, serde_json::Value::Null)
                            .await?;
                        failpoint(D::KIND, "after", step.name());
                        index += 1;
                        if index == steps.len() {
                            // Recorded first: a crash before the row says done leaves a saga
                            // whose resumption finds its end in the ledger (`run`).
                            let outcome = def.finished_outcome(&data);
                            self.record::<D>(&saga, "saga", "finished", outcome, serde_json::Value::Null).await?;
                            self.set(&mut saga, step.name(), Status::Done, None).await?;
                            self.ledger.checkpoint().await?;
                            return Ok((saga, Ended::Done));
                        }
                    }
                    Err(StepError::Cancelled(reason)) => {
                        return Err(self.interrupted::<D>(&saga, step.name(), "act", reason).await?);
                    }
                    Err(err) => {
                        let reason = err.to_string();
                        self.record::<D>(
                            &saga,
                            step.name(),
                            "act",
                            Outcome::Failed,
                            serde_json::json!({ "error": reason }),
                        )
                        .await?;
                        self.set(&mut saga, step.name(), Status::Unwinding, Some(&reason)).await?;
                        break;
                    }
                }
            }
        }
        // Unwinding: undo the recorded step and every one before it, newest first.
        // Rows from before vigil kept the failed step have none: the step unwinding is the best
        // guess there.
        let failed_step = saga.failed_step.clone().unwrap_or_else(|| saga.step.clone());
        let reason = saga.error.clone().unwrap_or_default();
        loop {
            let step = steps[index];
            self.stop_if_cancelled::<D>(&saga, step.name())?;
            self.set(&mut saga, step.name(), Status::Unwinding, Some(&reason)).await?;
            self.record::<D>(&saga, step.name(), "undo", Outcome::Started, serde_json::Value::Null).await?;
            failpoint(D::KIND, "undo", step.name());
            match self.retrying(|_| def.undo(&saga, &data, step)).await {
                Ok(()) => {}
                Err(StepError::Cancelled(reason)) => {
                    return Err(self.interrupted::<D>(&saga, step.name(), "undo", reason).await?);
                }
                Err(err) => {
                    let why = format!("undoing {} failed: {err}", step.name());
                    self.record::<D>(&saga, step.name(), "undo", Outcome::Failed, serde_json::json!({ "error": why }))
                        .await?;
                    self.set(&mut saga, step.name(), Status::Stuck, Some(&why)).await?;
                    self.ledger.checkpoint().await?;
                    return Ok((saga, Ended::Stuck { step: step.name().into(), reason: why }));
                }
            }
            self.record::<D>(&saga, step.name(), "undo", Outcome::Succeeded, serde_json::Value::Null).await?;
            if index == 0 {
                break;
            }
            index -= 1;
        }
        self.record::<D>(
            &saga,
            "saga",
            "rolled_back",
            Outcome::Failed,
            serde_json::json!({ "step": failed_step, "error": reason }),
        )
        .await?;
        self.set(&mut saga, steps[0].name(), Status::RolledBack, Some(&reason)).await?;
        self.ledger.checkpoint().await?;
        Ok((saga, Ended::RolledBack { step: failed_step, reason }))
    }

    /// Refuses to start `step` once cancelled, leaving the saga where its row says.
    fn stop_if_cancelled<D: SagaDef>(&self, saga: &SagaRow, step: &str) -> Result<(), SagaError> {
        if self.cancel.is_cancelled() {
            tracing::warn!(saga = %saga.id, step, "stopping before this step; it resumes on the next run");
            return Err(SagaError::Cancelled { id: saga.id.clone(), step: step.to_owned(), resume: D::RESUME });
        }
        Ok(())
    }

    /// Records that `step`'s `phase` was cut short by cancellation while it waited to retry
    /// (a fact, not a failure: the saga stays at the step), and the error that stops the run.
    async fn interrupted<D: SagaDef>(
        &self,
        saga: &SagaRow,
        step: &str,
        phase: &str,
        reason: String,
    ) -> Result<SagaError, SagaError> {
        let detail = serde_json::json!({ "interrupted": reason });
        self.record::<D>(saga, step, phase, Outcome::Info, detail).await?;
        Ok(SagaError::Cancelled { id: saga.id.clone(), step: step.to_owned(), resume: D::RESUME })
    }

    fn now(&self) -> String {
        self.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    /// Moves `saga` to `step` and `status`, durably, before the caller acts on it; refused if
    /// the state machine forbids it or the stored row is no longer where this process left it.
    async fn set(&self, saga: &mut SagaRow, step: &str, status: Status, error: Option<&str>) -> Result<(), SagaError> {
        if !saga.status.may_become(status) {
            return Err(SagaError::Illegal { id: saga.id.clone(), from: saga.status, to: status });
        }
        let expected = Expected { status: saga.status, updated_at: saga.updated_at.clone() };
        let failed_step = match (saga.status, status) {
            (Status::Running, Status::Unwinding) => Some(step.to_owned()),
            _ => saga.failed_step.clone(),
        };
        let next = SagaRow {
            step: step.to_owned(),
            status,
            failed_step,
            error: error.map(str::to_owned),
            updated_at: self.now(),
            // A saga that moves waits for nothing.
            waiting_until: None,
            ..saga.clone()
        };
        self.store.update(&next, &expected).await?;
        *saga = next;
        Ok(())
    }

    /// Records that `saga` waits at `step` until `until` (RFC 3339), durably.
    async fn wait(&self, saga: &mut SagaRow, step: &str, until: String) -> Result<(), SagaError> {
        let expected = Expected { status: saga.status, updated_at: saga.updated_at.clone() };
        let next =
            SagaRow { step: step.to_owned(), waiting_until: Some(until), updated_at: self.now(), ..saga.clone() };
        self.store.update(&next, &expected).await?;
        *saga = next;
        Ok(())
    }

    /// Replaces `saga`'s data (facts a step found for later steps), durably.
    async fn set_data(&self, saga: &mut SagaRow, data: serde_json::Value) -> Result<(), SagaError> {
        let expected = Expected { status: saga.status, updated_at: saga.updated_at.clone() };
        let next = SagaRow { data, updated_at: self.now(), ..saga.clone() };
        self.store.update(&next, &expected).await?;
        *saga = next;
        Ok(())
    }

    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, StepError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let mut tries = 0;
        loop {
            match attempt(tries).await {
                Err(StepError::Transient(reason)) => {
                    tries += 1;
                    if tries >= self.retry.attempts {
                        return Err(StepError::Failed(format!("still failing after {tries} attempts: {reason}")));
                    }
                    tracing::warn!(attempt = tries, %reason, "transient failure; retrying");
                    // A cancelled run does not wait to retry: the step stays recorded as in
                    // flight, and the next run repeats it.
                    tokio::select! {
                        () = tokio::time::sleep(self.retry.backoff(tries)) => {}
                        () = self.cancel.cancelled() => return Err(StepError::Cancelled(reason)),
                    }
                    // Refused by the fence (the saga taken over while this process waited or
                    // slept): the step is no longer this process's to repeat.
                    if let Err(SagaError::State(StateError::Fenced(fenced))) = self.store.fence_holds().await {
                        return Err(StepError::Failed(fenced.to_string()));
                    }
                }
                other => return other,
            }
        }
    }

    async fn record<D: SagaDef>(
        &self,
        saga: &SagaRow,
        step: &str,
        phase: &str,
        outcome: Outcome,
        extra: serde_json::Value,
    ) -> Result<(), SagaError> {
        let mut details = serde_json::json!({ "saga": saga.id, "step": step, "phase": phase, "data": saga.data });
        if !extra.is_null() {
            details["detail"] = extra;
        }
        let kind = match (step, phase) {
            ("saga", "started") => Kind::SagaStarted(D::AREA),
            ("saga", "finished") => Kind::SagaFinished(D::AREA),
            ("saga", _) => Kind::SagaRolledBack(D::AREA),
            _ => Kind::SagaStep(D::AREA),
        };
        self.ledger
            .append(NewRecord { kind: kind.into(), subject: saga.subject.name().to_owned(), outcome, details })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
