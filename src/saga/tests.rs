//! The executor under plain `cargo test`, in the style of Oxide's steno: a toy saga whose steps
//! change a small in-memory world, run on the in-memory saga store and a ledger in a temporary
//! SQLite file. Failures are injected at every step (unwind order), every act and undo is
//! repeated on purpose (idempotence), and a crash is simulated by cutting the saga store's
//! write log after each event and resuming from what is left.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::*;
use crate::clock::{ManualClock, SystemClock};
use crate::evidence::{Ledger, LedgerKey};
use crate::state::{Db, StateStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toy {
    Reserve,
    Charge,
    Ship,
}

impl Step for Toy {
    const ALL: &'static [Self] = &[Self::Reserve, Self::Charge, Self::Ship];

    fn name(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Charge => "charge",
            Self::Ship => "ship",
        }
    }
}

/// What the toy saga records: the last step that acted.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ToyData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<String>,
}

/// What the toy saga's steps do: each act puts its step in `world`, each undo takes it out.
/// Both are idempotent, as the [`SagaDef`] contract asks; `calls` records the order they ran.
#[derive(Default)]
struct ToyDef {
    world: Mutex<BTreeSet<&'static str>>,
    calls: Mutex<Vec<String>>,
    fail_at: Option<Toy>,
    fail_undo_at: Option<Toy>,
    /// Cancelled while this step acts, as Ctrl-C arriving mid-step would.
    cancel_during: Option<(Toy, CancellationToken)>,
    /// Fails this step transiently every time: a step that would retry until told to stop.
    flaky: Option<Toy>,
    /// Runs every act and undo twice, as steno's `RepeatInjected` does: the contract says a
    /// repeat leaves the same state.
    repeat: bool,
    /// What the saga's result says when it ran to its end (a drill that failed a check).
    finished_as: Option<Outcome>,
}

impl ToyDef {
    fn failing_at(step: Toy) -> Self {
        Self { fail_at: Some(step), ..Self::default() }
    }

    fn world(&self) -> Vec<&'static str> {
        self.world.lock().unwrap().iter().copied().collect()
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl SagaDef for ToyDef {
    type Step = Toy;
    type Data = ToyData;
    const KIND: &'static str = "rotation.toy";
    const AREA: crate::evidence::Area = crate::evidence::Area::Rotation;
    const RESUME: &'static str = "vigil rotate --resume";

    async fn act(&self, _: &SagaRow, _: &ToyData, step: Toy) -> Result<Option<ToyData>, StepError> {
        for _ in 0..if self.repeat { 2 } else { 1 } {
            self.calls.lock().unwrap().push(format!("act {}", step.name()));
            self.world.lock().unwrap().insert(step.name());
        }
        if let Some((during, token)) = &self.cancel_during
            && *during == step
        {
            token.cancel();
        }
        if self.fail_at == Some(step) {
            return Err(StepError::Failed(format!("{} refused", step.name())));
        }
        if self.flaky == Some(step) {
            return Err(StepError::Transient(format!("{} is busy", step.name())));
        }
        Ok(Some(ToyData { last: Some(step.name().to_owned()) }))
    }

    fn finished_outcome(&self, _: &ToyData) -> Outcome {
        self.finished_as.unwrap_or(Outcome::Succeeded)
    }

    async fn undo(&self, _: &SagaRow, _: &ToyData, step: Toy) -> Result<(), StepError> {
        for _ in 0..if self.repeat { 2 } else { 1 } {
            self.calls.lock().unwrap().push(format!("undo {}", step.name()));
            if self.fail_undo_at == Some(step) {
                return Err(StepError::Failed(format!("cannot undo {}", step.name())));
            }
            self.world.lock().unwrap().remove(step.name());
        }
        Ok(())
    }
}

/// A ledger in a temporary SQLite file, and the folder that holds it.
async fn ledger() -> (Ledger, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&StateStore::Sqlite { path: dir.path().join("state.db") }).await.unwrap();
    let ledger = Ledger::open(db, LedgerKey::generate("test"), Arc::new(SystemClock)).await.unwrap();
    (ledger, dir)
}

/// A token nobody cancels.
static NEVER: std::sync::LazyLock<CancellationToken> = std::sync::LazyLock::new(CancellationToken::new);

fn executor<'a>(store: &'a dyn SagaStore, ledger: &'a Ledger) -> Executor<'a> {
    let retry = RetryPolicy { attempts: 2, base: Duration::from_millis(1), cap: Duration::from_millis(1) };
    Executor { store, ledger, clock: &SystemClock, retry, cancel: &NEVER }
}

fn secret(name: &str) -> Subject {
    Subject::Secret(name.to_owned())
}

#[tokio::test]
async fn a_saga_runs_every_step_in_order_and_records_each() {
    let (ledger, _dir) = ledger().await;
    let (store, def) = (MemoryStore::default(), ToyDef::default());
    let (row, ended) =
        executor(&store, &ledger).start(&def, "s1", &secret("orders"), ToyData::default()).await.unwrap();
    assert_eq!(ended, Ended::Done);
    assert_eq!((row.status, row.step.as_str()), (Status::Done, "ship"));
    assert_eq!(def.calls(), ["act reserve", "act charge", "act ship"]);
    assert_eq!(row.data, serde_json::json!({ "last": "ship" }), "step data is recorded");
    let steps: Vec<_> = store.log().iter().map(|r| (r.step.clone(), r.status)).collect();
    assert_eq!(
        steps.first().unwrap(),
        &("reserve".to_owned(), Status::Running),
        "the first intent is written before acting"
    );
    assert!(store.in_flight().await.unwrap().is_empty());
}

/// A saga that ran to its end but whose result failed (a drill that failed a check) says so in
/// its `finished` record's outcome, so a ledger filtered on failures finds it.
#[tokio::test]
async fn a_finished_saga_whose_result_failed_is_recorded_as_failed() {
    let (ledger, _dir) = ledger().await;
    let store = MemoryStore::default();
    for (subject, finished_as, outcome) in [("good", None, "succeeded"), ("bad", Some(Outcome::Failed), "failed")] {
        let def = ToyDef { finished_as, ..ToyDef::default() };
        let (_, ended) =
            executor(&store, &ledger).start(&def, subject, &secret(subject), ToyData::default()).await.unwrap();
        assert_eq!(ended, Ended::Done, "the saga itself completed");
        let filter = crate::evidence::RecordFilter {
            kind: Some("rotation.finished".into()),
            subject: Some(subject.into()),
            limit: 10,
            ..Default::default()
        };
        let finished = crate::evidence::list(ledger.db(), &filter).await.unwrap();
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].outcome, outcome, "{subject}");
    }
}

#[tokio::test]
async fn a_failure_at_any_step_undoes_it_and_every_step_before_newest_first() {
    let (ledger, _dir) = ledger().await;
    for (n, failing) in Toy::ALL.iter().copied().enumerate() {
        let (store, def) = (MemoryStore::default(), ToyDef::failing_at(failing));
        let (row, ended) = executor(&store, &ledger)
            .start(&def, &format!("f{n}"), &secret("orders"), ToyData::default())
            .await
            .unwrap();
        assert!(matches!(&ended, Ended::RolledBack { step, .. } if step == failing.name()), "{ended:?}");
        assert_eq!(row.status, Status::RolledBack);
        let mut expected: Vec<String> = Toy::ALL[..=n].iter().map(|s| format!("act {}", s.name())).collect();
        expected.extend(Toy::ALL[..=n].iter().rev().map(|s| format!("undo {}", s.name())));
        assert_eq!(def.calls(), expected, "failing at {failing:?}");
        assert!(def.world().is_empty(), "every step taken was undone: {:?}", def.world());
    }
}

#[tokio::test]
async fn a_failed_undo_leaves_the_saga_stuck_at_that_step() {
    let (ledger, _dir) = ledger().await;
    let def = ToyDef { fail_at: Some(Toy::Ship), fail_undo_at: Some(Toy::Charge), ..ToyDef::default() };
    let store = MemoryStore::default();
    let (row, ended) =
        executor(&store, &ledger).start(&def, "stuck", &secret("orders"), ToyData::default()).await.unwrap();
    assert!(matches!(&ended, Ended::Stuck { step, .. } if step == "charge"), "{ended:?}");
    assert_eq!((row.status, row.step.as_str()), (Status::Stuck, "charge"));
    assert_eq!(def.world(), ["charge", "reserve"], "nothing before the failed undo was undone");
}

#[tokio::test]
async fn repeating_every_act_and_undo_ends_the_same() {
    let (ledger, _dir) = ledger().await;
    for fail_at in [None, Some(Toy::Reserve), Some(Toy::Charge), Some(Toy::Ship)] {
        let once = ToyDef { fail_at, ..ToyDef::default() };
        let twice = ToyDef { fail_at, repeat: true, ..ToyDef::default() };
        let (a, b) = (MemoryStore::default(), MemoryStore::default());
        let (_, ended_once) =
            executor(&a, &ledger).start(&once, "once", &secret("a"), ToyData::default()).await.unwrap();
        let (_, ended_twice) =
            executor(&b, &ledger).start(&twice, "twice", &secret("b"), ToyData::default()).await.unwrap();
        assert_eq!(ended_once, ended_twice, "failing at {fail_at:?}");
        assert_eq!(once.world(), twice.world(), "failing at {fail_at:?}");
    }
}

/// Runs the toy saga once to record its write log, then for every prefix of that log resumes
/// from what a crash right after it would leave, with the world as the steps up to it left it
/// (a step whose intent is recorded may or may not have acted: both are tried).
#[tokio::test]
async fn a_crash_after_any_event_resumes_to_the_same_end() {
    let (reference_ledger, _dir) = ledger().await;
    for fail_at in [None, Some(Toy::Charge), Some(Toy::Ship)] {
        let full = MemoryStore::default();
        let reference = ToyDef { fail_at, ..ToyDef::default() };
        let (_, want) = executor(&full, &reference_ledger)
            .start(&reference, "r", &secret("orders"), ToyData::default())
            .await
            .unwrap();
        let log = full.log();
        for events in 1..log.len() {
            let cut = &log[events - 1];
            if !cut.status.in_flight() {
                continue;
            }
            for acted in [false, true] {
                // The ledger of the crashed process, without the reference run's records: the
                // replay's own are what its resumption may find.
                let (ledger, _replay_dir) = ledger().await;
                let store = MemoryStore::replayed(&log, events);
                let def = ToyDef { fail_at, ..ToyDef::default() };
                // The world as the crashed process left it. Running at a step: every step before
                // it acted, and it may have. Unwinding at a step: every later step is undone
                // already, every earlier one not yet, and it may have been.
                let index = Toy::ALL.iter().position(|s| s.name() == cut.step).unwrap();
                for step in &Toy::ALL[..index + usize::from(acted)] {
                    def.world.lock().unwrap().insert(step.name());
                }
                let resumed = store.in_flight().await.unwrap().pop().expect("the cut log leaves the saga in flight");
                let (row, ended) = executor(&store, &ledger).run(&def, resumed).await.unwrap();
                assert_eq!(
                    ended,
                    want,
                    "crash after event {events} of {} ({:?} at {})",
                    log.len(),
                    cut.status,
                    cut.step
                );
                assert_eq!(def.world(), reference.world(), "crash after event {events}, acted={acted}");
                assert!(!row.status.in_flight());
            }
        }
    }
}

/// The end of a saga is recorded before its row says so: a crash between the two leaves a
/// saga whose resumption finds the end in the ledger and only marks the row, acting on nothing
/// again and recording nothing twice.
#[tokio::test]
async fn a_saga_whose_end_is_recorded_is_marked_ended_without_acting_again() {
    for fail_at in [None, Some(Toy::Ship)] {
        let (ledger, _dir) = ledger().await;
        let full = MemoryStore::default();
        let reference = ToyDef { fail_at, ..ToyDef::default() };
        let (_, want) =
            executor(&full, &ledger).start(&reference, "e", &secret("orders"), ToyData::default()).await.unwrap();
        let log = full.log();
        // The row as it was just before its last write (done, or rolled back).
        let store = MemoryStore::replayed(&log, log.len() - 1);
        let resumed = store.in_flight().await.unwrap().pop().expect("in flight before its last write");
        let records = crate::evidence::size(ledger.db()).await.unwrap();
        let def = ToyDef { fail_at, ..ToyDef::default() };
        let (row, ended) = executor(&store, &ledger).run(&def, resumed).await.unwrap();
        assert_eq!(ended, want);
        assert!(!row.status.in_flight(), "{row:?}");
        assert!(def.calls.lock().unwrap().is_empty(), "nothing acted again: {:?}", def.calls.lock().unwrap());
        assert_eq!(crate::evidence::size(ledger.db()).await.unwrap(), records, "nothing recorded twice");
    }
}

#[tokio::test]
async fn a_secret_and_a_backup_set_of_one_name_do_not_block_each_other() {
    let (ledger, dir) = ledger().await;
    // On the SQL store, where the one-in-flight index lives.
    let db = Db::open(&StateStore::Sqlite { path: dir.path().join("state.db") }).await.unwrap();
    let clock = ManualClock::new(chrono::Utc::now());
    let waiting = WaitingDef;
    let executor =
        Executor { store: &db, ledger: &ledger, clock: &clock, retry: RetryPolicy::default(), cancel: &NEVER };
    let (_, ended) = executor.start(&waiting, "w1", &secret("orders"), ToyData::default()).await.unwrap();
    assert!(matches!(ended, Ended::Waiting { .. }), "the secret's saga stays in flight: {ended:?}");
    let backup = ToyDef::default();
    let (_, ended) =
        executor.start(&backup, "b1", &Subject::Backup("orders".into()), ToyData::default()).await.unwrap();
    assert_eq!(ended, Ended::Done, "the backup set of the same name runs");
    let refused = executor.start(&waiting, "w2", &secret("orders"), ToyData::default()).await.unwrap_err();
    assert!(matches!(refused, SagaError::InFlight { .. }), "{refused}");
    assert!(refused.to_string().starts_with("orders already has a rotation.waiting in flight (w1)"), "{refused}");
}

#[tokio::test]
async fn a_row_moved_on_by_another_process_stops_this_one() {
    let (ledger, _dir) = ledger().await;
    let store = MemoryStore::default();
    let def = ToyDef::default();
    let (_, _) =
        executor(&store, &ledger).start(&WaitingDef, "w", &secret("orders"), ToyData::default()).await.unwrap();
    let stale = store.in_flight().await.unwrap().pop().unwrap();
    let mut moved = stale.clone();
    moved.updated_at = "2999-01-01T00:00:00.000000Z".into();
    store.update(&moved, &Expected { status: stale.status, updated_at: stale.updated_at.clone() }).await.unwrap();
    let err = executor(&store, &ledger).run(&def, stale).await.unwrap_err();
    assert!(matches!(err, SagaError::Moved { .. }), "{err}");
    assert!(def.calls().is_empty(), "nothing acted on a stale row");
}

/// One step that waits a day: a saga that stays in flight.
struct WaitingDef;

impl SagaDef for WaitingDef {
    type Step = Toy;
    type Data = ToyData;
    const KIND: &'static str = "rotation.waiting";
    const AREA: crate::evidence::Area = crate::evidence::Area::Rotation;
    const RESUME: &'static str = "vigil rotate --resume";

    async fn act(&self, _: &SagaRow, _: &ToyData, _: Toy) -> Result<Option<ToyData>, StepError> {
        Ok(None)
    }

    fn not_before(&self, _: &ToyData, _: Toy) -> Option<chrono::DateTime<chrono::Utc>> {
        Some(chrono::Utc::now() + chrono::Duration::days(1))
    }

    async fn undo(&self, _: &SagaRow, _: &ToyData, _: Toy) -> Result<(), StepError> {
        Ok(())
    }
}

#[tokio::test]
async fn data_a_kind_cannot_read_is_an_error_not_a_guess() {
    let (ledger, _dir) = ledger().await;
    let store = MemoryStore::default();
    let def = ToyDef::default();
    executor(&store, &ledger).start(&WaitingDef, "w", &secret("orders"), ToyData::default()).await.unwrap();
    let mut row = store.in_flight().await.unwrap().pop().unwrap();
    row.data = serde_json::json!({ "last": 5 });
    let err = executor(&store, &ledger).run(&def, row).await.unwrap_err();
    assert!(matches!(err, SagaError::Data { .. }), "{err}");
    assert!(def.calls().is_empty(), "nothing acted on data it could not read");
}

#[tokio::test]
async fn cancelled_mid_step_the_step_finishes_and_is_recorded_and_no_other_starts() {
    let (ledger, _dir) = ledger().await;
    let store = MemoryStore::default();
    let cancel = CancellationToken::new();
    let def = ToyDef { cancel_during: Some((Toy::Charge, cancel.clone())), ..ToyDef::default() };
    let executor = Executor { cancel: &cancel, ..executor(&store, &ledger) };
    let err = executor.start(&def, "c", &secret("orders"), ToyData::default()).await.unwrap_err();
    assert!(
        matches!(&err, SagaError::Cancelled { step, resume, .. } if step == "ship" && *resume == "vigil rotate --resume"),
        "{err}"
    );
    assert_eq!(def.calls(), ["act reserve", "act charge"], "charge finished; ship never started");
    let row = store.in_flight().await.unwrap().pop().expect("the saga stays in flight");
    assert_eq!((row.status, row.step.as_str()), (Status::Running, "charge"));
    assert_eq!(row.data, serde_json::json!({ "last": "charge" }), "charge's outcome is recorded");
    // The next run resumes: charge again (idempotent), then ship.
    let resumed = ToyDef::default();
    let (row, ended) = executor_resumed(&store, &ledger, &resumed, row).await;
    assert_eq!(ended, Ended::Done);
    assert_eq!(resumed.calls(), ["act charge", "act ship"]);
    assert_eq!(row.status, Status::Done);
}

async fn executor_resumed(store: &MemoryStore, ledger: &Ledger, def: &ToyDef, row: SagaRow) -> (SagaRow, Ended) {
    executor(store, ledger).run(def, row).await.unwrap()
}

#[tokio::test]
async fn cancelled_while_waiting_to_retry_the_saga_stays_at_the_step() {
    let (ledger, _dir) = ledger().await;
    let store = MemoryStore::default();
    let cancel = CancellationToken::new();
    let def = ToyDef { flaky: Some(Toy::Charge), ..ToyDef::default() };
    // Backoffs of up to an hour: only cancellation ends this run.
    let retry = RetryPolicy { attempts: 10, base: Duration::from_secs(3600), cap: Duration::from_secs(3600) };
    let executor = Executor { cancel: &cancel, retry, ..executor(&store, &ledger) };
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stopper.cancel();
    });
    let started = std::time::Instant::now();
    let err = executor.start(&def, "r", &secret("orders"), ToyData::default()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "the retry wait ended at cancellation");
    assert!(matches!(&err, SagaError::Cancelled { step, .. } if step == "charge"), "{err}");
    let row = store.in_flight().await.unwrap().pop().expect("the saga stays in flight");
    assert_eq!((row.status, row.step.as_str()), (Status::Running, "charge"), "not unwound");
    assert!(!def.calls().iter().any(|c| c.starts_with("undo")), "{:?}", def.calls());
}

/// Resumes toy sagas with the executor, as rotation and backups resume theirs.
struct ToyResumer<'a> {
    store: &'a MemoryStore,
    ledger: &'a Ledger,
    def: ToyDef,
}

impl Resume for ToyResumer<'_> {
    fn resume(&self, saga: SagaRow) -> futures_util::future::BoxFuture<'_, Result<Ended, String>> {
        use futures_util::FutureExt as _;
        async move {
            let (_, ended) = executor(self.store, self.ledger).run(&self.def, saga).await.map_err(|e| e.to_string())?;
            Ok(ended)
        }
        .boxed()
    }
}

/// A kind whose resumption fails: its service is down.
struct Broken;

impl Resume for Broken {
    fn resume(&self, _: SagaRow) -> futures_util::future::BoxFuture<'_, Result<Ended, String>> {
        use futures_util::FutureExt as _;
        async { Err("the key service is unreachable".to_owned()) }.boxed()
    }
}

fn in_flight_row(id: &str, kind: &str, subject: Subject, at: &str) -> SagaRow {
    SagaRow {
        id: id.into(),
        kind: kind.into(),
        subject,
        step: "charge".into(),
        status: Status::Running,
        data: serde_json::json!({}),
        failed_step: None,
        error: None,
        started_at: at.into(),
        updated_at: at.into(),
        waiting_until: None,
    }
}

#[tokio::test]
async fn resume_all_resumes_every_kind_and_one_failure_stops_no_other() {
    let (ledger, _dir) = ledger().await;
    let store = MemoryStore::default();
    for row in [
        in_flight_row("a", "rotation.toy", secret("orders"), "2026-01-01T00:00:01.000000Z"),
        in_flight_row("b", "backup.broken", Subject::Backup("orders".into()), "2026-01-01T00:00:02.000000Z"),
        in_flight_row("c", "drill.unheard_of", Subject::Backup("billing".into()), "2026-01-01T00:00:03.000000Z"),
        in_flight_row("d", "rotation.toy", secret("billing"), "2026-01-01T00:00:04.000000Z"),
    ] {
        assert!(store.insert(&row).await.unwrap().is_none());
    }
    let toys = ToyResumer { store: &store, ledger: &ledger, def: ToyDef::default() };
    let mut registry = Registry::default();
    registry.register("rotation.toy", &toys);
    registry.register("backup.broken", &Broken);
    let resumed = registry.resume_all(&store, &NEVER).await.unwrap();
    let outcomes: Vec<(&str, Result<&Ended, &str>)> =
        resumed.iter().map(|r| (r.id.as_str(), r.outcome.as_ref().map_err(String::as_str))).collect();
    assert_eq!(outcomes[0], ("a", Ok(&Ended::Done)));
    assert_eq!(outcomes[1], ("b", Err("the key service is unreachable")));
    assert!(matches!(outcomes[2], ("c", Err(why)) if why.contains("drill.unheard_of")), "{outcomes:?}");
    assert_eq!(outcomes[3], ("d", Ok(&Ended::Done)), "a failure before it stopped nothing");
    let left: Vec<String> = store.in_flight().await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(left, ["b", "c"], "what could not be resumed stays in flight, untouched");
}
