//! The evidence ledger on both backends: tamper detection, proofs checked by independent
//! implementations, key rollover, concurrent appenders, and the `vigil evidence` commands.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::DateTime;
use vigil::clock::{Clock, ManualClock};
use vigil::evidence::{
    self, EvidenceError, GENESIS, KEY_ROLLOVER, Ledger, LedgerKey, NewRecord, NoteVerifier, Outcome, Problem, Record,
    RecordFilter, Trust, merkle,
};
use vigil::secret::SecretRef;
use vigil::state::StateStore as EvidenceStore;
use vigil::state::{Db, Pool};

use crate::support::{Services, vigil};

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().to_utc()))
}

/// A fresh store: a SQLite file in a temp folder, or a new database on the private PostgreSQL.
struct Store {
    dir: tempfile::TempDir,
    config: EvidenceStore,
}

impl Store {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = EvidenceStore::Sqlite { path: dir.path().join("data/evidence.db") };
        Self { dir, config }
    }

    async fn postgres() -> Self {
        use sqlx::Connection as _;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let services = Services::load();
        let pg = &services.postgres;
        let name =
            format!("evidence_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let options = pg.pg_options();
        let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The password reaches vigil by reference, as configuration gives it.
        let password_file = dir.path().join("pg-password");
        std::fs::write(&password_file, &pg.password).unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = EvidenceStore::Postgres {
            url: format!("postgres://{}@{}:{}/{name}", pg.user, pg.host, pg.port),
            password: Some(SecretRef::File { path: password_file }),
            tls: pg.tls(),
        };
        Self { dir, config }
    }

    async fn open(&self) -> Db {
        Db::open(&self.config).await.unwrap()
    }

    /// A `vigil.toml` pointing at this store, for running the real binary.
    fn write_config(&self) -> PathBuf {
        let evidence = match &self.config {
            EvidenceStore::Sqlite { path } => format!("url = \"sqlite://{}\"", path.display()),
            EvidenceStore::Postgres { url, password: Some(SecretRef::File { path }), tls } => {
                let ca = tls.ca_file.as_ref().expect("the services' CA");
                format!(
                    "url = \"{url}\"\npassword = {{ file = \"{}\" }}\ntls = {{ mode = \"verify-full\", ca_file = \"{}\" }}",
                    path.display(),
                    ca.display()
                )
            }
            other => panic!("unexpected store {other:?}"),
        };
        let config = self.dir.path().join("vigil.toml");
        std::fs::create_dir_all(self.dir.path().join("schedules")).unwrap();
        std::fs::write(self.dir.path().join("schedules/none.toml"), "").unwrap();
        std::fs::write(
            &config,
            format!(
                "[controller]\ndata_dir = \"data\"\n\n[evidence]\n{evidence}\nsigning_key = \"{}\"\n",
                self.dir.path().join("data/evidence.key").display()
            ),
        )
        .unwrap();
        config
    }
}

fn note(kind: &str, subject: &str, n: u32) -> NewRecord {
    NewRecord {
        kind: kind.into(),
        subject: subject.into(),
        outcome: Outcome::Succeeded,
        details: serde_json::json!({ "n": n }),
    }
}

/// Genesis and checkpoints at 1, 10, 19, 28, 37, then three records beyond the last: 40 in all.
async fn build(db: Db, key: LedgerKey) -> Ledger {
    let ledger = Ledger::open(db, key, clock()).await.unwrap();
    for batch in 0..4u32 {
        ledger.append_batch((0..9).map(|i| note("test.step", "orders-app", batch * 9 + i)).collect()).await.unwrap();
        ledger.checkpoint().await.unwrap();
    }
    for i in 0..3 {
        ledger.append(note("test.step", "tail", i)).await.unwrap();
    }
    ledger
}

async fn exec(db: &Db, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db.pool() {
        Pool::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        Pool::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
    }
    .unwrap();
}

async fn insert(db: &Db, record: &Record) {
    const SQL: &str = "INSERT INTO evidence_records (seq, time, kind, subject, actor_host, actor_pid, actor_version, outcome, details, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    macro_rules! run {
        ($pool:expr) => {
            sqlx::query(SQL)
                .bind(record.seq as i64)
                .bind(&record.time)
                .bind(&record.kind)
                .bind(&record.subject)
                .bind(&record.actor.host)
                .bind(i64::from(record.actor.pid))
                .bind(&record.actor.version)
                .bind(&record.outcome)
                .bind(&record.details)
                .bind(record.prev_hash.to_vec())
                .bind(record.hash.to_vec())
                .execute($pool)
                .await
                .map(drop)
        };
    }
    match db.pool() {
        Pool::Sqlite(pool) => run!(pool),
        Pool::Postgres(pool) => run!(pool),
    }
    .unwrap();
}

async fn set_note(db: &Db, size: u64, note: &str) {
    let sql = sqlx::AssertSqlSafe(format!("UPDATE evidence_checkpoints SET note = $1 WHERE size = {size}"));
    match db.pool() {
        Pool::Sqlite(pool) => sqlx::query(sql).bind(note).execute(pool).await.map(drop),
        Pool::Postgres(pool) => sqlx::query(sql).bind(note).execute(pool).await.map(drop),
    }
    .unwrap();
}

async fn all_records(db: &Db) -> Vec<Record> {
    evidence::list(db, &RecordFilter { limit: 1 << 40, ..RecordFilter::default() }).await.unwrap()
}

async fn note_of(db: &Db, size: u64) -> String {
    evidence::checkpoints(db).await.unwrap().into_iter().find(|c| c.size == size).unwrap().note
}

#[track_caller]
fn expect_problem(problem: Option<Problem>, seq: u64, says: &str) {
    let problem = problem.expect("tampering went unnoticed");
    assert_eq!(problem.seq, seq, "{}", problem.what);
    assert!(problem.what.contains(says), "{:?} does not say {says:?}", problem.what);
}

/// Every tampering is caught, and the report names the first record that cannot be trusted.
async fn tamper_suite(make: impl AsyncFn() -> Store) {
    // Untouched, it verifies, pinned or trusted on first use.
    let store = make().await;
    let key = LedgerKey::generate("vigil/tamper");
    let pinned = Trust::Pinned(Box::new(key.verifier()));
    let ledger = build(store.open().await, key).await;
    for trust in [pinned, Trust::Genesis] {
        let report = evidence::verify(ledger.db(), trust).await.unwrap();
        assert!(report.problem.is_none(), "{:?}", report.problem);
        assert_eq!((report.records, report.newest_checkpoint, report.beyond_checkpoint), (40, Some(37), 3));
    }

    type Tamper = for<'a> fn(&'a Db, &'a LedgerKey) -> std::pin::Pin<Box<dyn Future<Output = ()> + 'a>>;
    let cases: Vec<(&str, Tamper, u64, &str)> = vec![
        (
            "edit a field",
            |db, _| Box::pin(exec(db, "UPDATE evidence_records SET subject = 'forged' WHERE seq = 15")),
            15,
            "contents do not match",
        ),
        (
            "delete a record",
            |db, _| Box::pin(exec(db, "DELETE FROM evidence_records WHERE seq = 15")),
            15,
            "record 15 is missing",
        ),
        (
            "reorder two",
            |db, _| {
                Box::pin(async move {
                    exec(db, "UPDATE evidence_records SET seq = -15 WHERE seq = 15").await;
                    exec(db, "UPDATE evidence_records SET seq = 15 WHERE seq = 16").await;
                    exec(db, "UPDATE evidence_records SET seq = 16 WHERE seq = -15").await;
                })
            },
            15,
            "contents do not match",
        ),
        (
            "insert a forged record, re-chaining everything after it",
            |db, _| {
                Box::pin(async move {
                    let mut records = all_records(db).await;
                    let mut forged = records[13].clone();
                    forged.subject = "forged".into();
                    records.insert(14, forged);
                    exec(db, "DELETE FROM evidence_records WHERE seq >= 15").await;
                    for i in 14..records.len() {
                        records[i].seq = i as u64 + 1;
                        records[i].prev_hash = records[i - 1].hash;
                        records[i].hash = records[i].compute_hash();
                        insert(db, &records[i]).await;
                    }
                })
            },
            11,
            "a record in 11..=19 was changed, inserted or removed",
        ),
        (
            "insert a forged record at the tail without its link",
            |db, _| {
                Box::pin(async move {
                    let mut forged = all_records(db).await.pop().unwrap();
                    forged.seq = 41;
                    forged.hash = forged.compute_hash();
                    insert(db, &forged).await;
                })
            },
            41,
            "does not link to record 40",
        ),
        (
            "truncate the tail",
            |db, _| Box::pin(exec(db, "DELETE FROM evidence_records WHERE seq > 30")),
            31,
            "records 31..=37 were removed",
        ),
        (
            "replace a checkpoint's signature",
            |db, _| {
                Box::pin(async move {
                    let at_19 = note_of(db, 19).await;
                    let at_28 = note_of(db, 28).await;
                    let signature = |note: &str| note.rsplit_once(' ').unwrap().1.to_owned();
                    set_note(db, 19, &at_19.replace(&signature(&at_19), &signature(&at_28))).await;
                })
            },
            11,
            "not vouched for",
        ),
        (
            "sign a checkpoint with another key",
            |db, _| {
                Box::pin(async move {
                    let body = note_of(db, 19).await.split("\n\n").next().unwrap().to_owned() + "\n";
                    set_note(db, 19, &LedgerKey::generate("vigil/tamper").sign_note(&body)).await;
                })
            },
            11,
            "not vouched for",
        ),
        (
            "a checkpoint whose root does not match the records",
            |db, key| {
                Box::pin(async move {
                    let checkpoint = evidence::Checkpoint { origin: "vigil/tamper".into(), size: 19, root: [9; 32] };
                    set_note(db, 19, &key.sign_note(&checkpoint.body())).await;
                })
            },
            11,
            "do not hash to",
        ),
    ];
    for (name, tamper, seq, says) in cases {
        let store = make().await;
        let key = LedgerKey::generate("vigil/tamper");
        let verifier = key.verifier();
        let db = store.open().await;
        // The ledger is built with a copy of the key; the original signs the forgeries.
        let copy_path = store.dir.path().join("key-copy");
        key.save(&copy_path).unwrap();
        let ledger = build(db.clone(), LedgerKey::load(&copy_path).unwrap()).await;
        tamper(&db, &key).await;
        let report = evidence::verify(ledger.db(), Trust::Pinned(Box::new(verifier))).await.unwrap();
        let problem = report.problem.clone();
        assert!(problem.is_some(), "{name}: went unnoticed");
        let problem = problem.unwrap();
        assert!(
            problem.seq == seq && problem.what.contains(says),
            "{name}: got record {} {:?}, expected record {seq} saying {says:?}",
            problem.seq,
            problem.what
        );
        db.close().await;
    }
}

#[tokio::test]
async fn tampering_is_caught_on_sqlite() {
    tamper_suite(async || Store::sqlite()).await;
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn tampering_is_caught_on_postgres() {
    tamper_suite(async || Store::postgres().await).await;
}

/// Proofs and checkpoints are checked by independent implementations: Go's `sumdb/tlog`
/// algorithms as ported in `tlog_tiles`, and the C2SP `signed_note` crate.
async fn independent_verifiers(store: Store) {
    let key = LedgerKey::generate("vigil/independent");
    let vkey = key.verifier().vkey();
    let ledger = Ledger::open(store.open().await, key, clock()).await.unwrap();
    ledger.append_batch((1..300).map(|i| note("test.step", "many", i)).collect()).await.unwrap();
    let checkpoint = ledger.checkpoint().await.unwrap();
    assert_eq!(checkpoint.size, 300);

    let verifier = signed_note::StandardVerifier::new(&vkey).unwrap();
    let parsed = signed_note::Note::from_bytes(checkpoint.note.as_bytes()).unwrap();
    let (verified, _) = parsed.verify(&signed_note::VerifierList::new(vec![Box::new(verifier)])).unwrap();
    assert_eq!(verified.len(), 1);
    let body = evidence::Checkpoint::parse_body(std::str::from_utf8(parsed.text()).unwrap()).unwrap();

    let records = all_records(ledger.db()).await;
    let leaves: Vec<merkle::Hash> = records.iter().map(Record::leaf_hash).collect();
    assert_eq!(merkle::root(&leaves), body.root);
    let th = tlog_tiles::tlog::Hash(body.root);
    for seq in (1..=300).step_by(7).chain([300]) {
        let proof = evidence::prove(ledger.db(), seq, Some(300)).await.unwrap();
        let p: Vec<_> = proof.proof.iter().map(|h| tlog_tiles::tlog::Hash(*h)).collect();
        tlog_tiles::tlog::check_record(&p, 300, th, seq - 1, tlog_tiles::tlog::Hash(proof.leaf_hash))
            .unwrap_or_else(|err| panic!("tlog rejects the inclusion proof of {seq}: {err:?}"));
    }
    for old in [1u64, 2, 3, 7, 64, 100, 255, 256, 299] {
        let proof = evidence::consistency(ledger.db(), old, 300).await.unwrap();
        let p: Vec<_> = proof.iter().map(|h| tlog_tiles::tlog::Hash(*h)).collect();
        let old_root = tlog_tiles::tlog::Hash(merkle::root(&leaves[..old as usize]));
        tlog_tiles::tlog::check_tree(&p, 300, th, old, old_root)
            .unwrap_or_else(|err| panic!("tlog rejects the consistency proof {old}->300: {err:?}"));
    }
}

#[tokio::test]
async fn independent_verifiers_accept_proofs_and_checkpoints_on_sqlite() {
    independent_verifiers(Store::sqlite()).await;
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn independent_verifiers_accept_proofs_and_checkpoints_on_postgres() {
    independent_verifiers(Store::postgres().await).await;
}

async fn rollover(store: Store) {
    let first = LedgerKey::generate("vigil/roll");
    let first_verifier = first.verifier();
    let old_path = store.dir.path().join("old-key");
    first.save(&old_path).unwrap();
    let mut ledger = Ledger::open(store.open().await, first, clock()).await.unwrap();
    ledger.append(note("test.step", "before", 1)).await.unwrap();
    let second = LedgerKey::generate("vigil/roll");
    let second_verifier = second.verifier();
    ledger.rollover(second).await.unwrap();
    ledger.append(note("test.step", "after", 2)).await.unwrap();
    ledger.checkpoint().await.unwrap();

    let report = evidence::verify(ledger.db(), Trust::Pinned(Box::new(first_verifier.clone()))).await.unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
    assert_eq!(report.keys.len(), 2);
    assert_eq!(report.newest_checkpoint, Some(4));

    // Only the first key is a root of trust: pinning the second fails at the genesis checkpoint.
    let report = evidence::verify(ledger.db(), Trust::Pinned(Box::new(second_verifier))).await.unwrap();
    expect_problem(report.problem, 1, "not vouched for");

    // After the rollover the old key is retired: a checkpoint it signs later is refused.
    ledger.append(note("test.step", "late", 3)).await.unwrap();
    let old = LedgerKey::load(&old_path).unwrap();
    let records = all_records(ledger.db()).await;
    let leaves: Vec<_> = records.iter().map(Record::leaf_hash).collect();
    let body = evidence::Checkpoint { origin: "vigil/roll".into(), size: 5, root: merkle::root(&leaves) }.body();
    let forged = old.sign_note(&body);
    const SQL: &str = "INSERT INTO evidence_checkpoints (size, root_hash, key_name, key_id, signed_at, note) VALUES (5, $1, 'vigil/roll', '0', '', $2)";
    match ledger.db().pool() {
        Pool::Sqlite(pool) => sqlx::query(SQL).bind(vec![0u8]).bind(forged).execute(pool).await.map(drop),
        Pool::Postgres(pool) => sqlx::query(SQL).bind(vec![0u8]).bind(forged).execute(pool).await.map(drop),
    }
    .unwrap();
    let report = evidence::verify(ledger.db(), Trust::Pinned(Box::new(first_verifier))).await.unwrap();
    expect_problem(report.problem, 5, "not vouched for");
}

#[tokio::test]
async fn a_rollover_is_followed_from_the_first_pinned_key_only_on_sqlite() {
    rollover(Store::sqlite()).await;
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_rollover_is_followed_from_the_first_pinned_key_only_on_postgres() {
    rollover(Store::postgres().await).await;
}

async fn minute_checkpoints(store: Store) {
    let clock = clock();
    let ledger = Ledger::open(store.open().await, LedgerKey::generate("vigil/clock"), clock.clone()).await.unwrap();
    let count = async || evidence::checkpoints(ledger.db()).await.unwrap().len();
    assert_eq!(count().await, 1, "the genesis checkpoint");
    clock.advance(chrono::Duration::seconds(30));
    ledger.append(note("test.step", "a", 1)).await.unwrap();
    assert_eq!(count().await, 1, "30 s after the last checkpoint: none due");
    clock.advance(chrono::Duration::seconds(31));
    ledger.append(note("test.step", "a", 2)).await.unwrap();
    assert_eq!(count().await, 2, "61 s after the last checkpoint: one signed");
    let newest = evidence::checkpoints(ledger.db()).await.unwrap().pop().unwrap();
    assert_eq!((newest.size, newest.signed_at.as_str()), (3, "2026-11-24T10:01:01.000000Z"));
    assert_eq!(clock.now().to_rfc3339(), "2026-11-24T10:01:01+00:00");
}

#[tokio::test]
async fn appends_are_checkpointed_at_least_once_a_minute_on_sqlite() {
    minute_checkpoints(Store::sqlite()).await;
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn appends_are_checkpointed_at_least_once_a_minute_on_postgres() {
    minute_checkpoints(Store::postgres().await).await;
}

/// Many tasks appending through one ledger at once never fork the chain.
async fn concurrent_tasks(store: Store) {
    let ledger = Arc::new(Ledger::open(store.open().await, LedgerKey::generate("vigil/tasks"), clock()).await.unwrap());
    let mut tasks = Vec::new();
    for task in 0..8u32 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                ledger.append(note("test.step", &format!("task-{task}"), i)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    ledger.checkpoint().await.unwrap();
    let report = evidence::verify(ledger.db(), Trust::Genesis).await.unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
    assert_eq!(report.records, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_never_fork_the_chain_on_sqlite() {
    concurrent_tasks(Store::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs services: cargo xtask test"]
async fn concurrent_appends_never_fork_the_chain_on_postgres() {
    concurrent_tasks(Store::postgres().await).await;
}

/// Two `vigil` processes appending to one store at once take turns.
fn two_processes(store: &Store) {
    let config = store.write_config();
    let dir = store.dir.path().to_owned();
    vigil(&dir, &["--config", config.to_str().unwrap(), "evidence", "pubkey"]).assert_code(0);
    let run = |who: &'static str| {
        let (dir, config) = (dir.clone(), config.clone());
        std::thread::spawn(move || {
            for i in 0..20 {
                let n = i.to_string();
                vigil(
                    &dir,
                    &[
                        "-q",
                        "--config",
                        config.to_str().unwrap(),
                        "evidence",
                        "append",
                        "--kind",
                        "manual.test",
                        "--subject",
                        who,
                        "--detail",
                        &format!("n={n}"),
                    ],
                )
                .assert_code(0);
            }
        })
    };
    let (a, b) = (run("process-a"), run("process-b"));
    a.join().unwrap();
    b.join().unwrap();
    let verify = vigil(&dir, &["--config", config.to_str().unwrap(), "--output", "json", "evidence", "verify"]);
    verify.assert_code(0);
    let report = verify.json();
    assert_eq!(report["records"], 41, "{report}");
    assert_eq!(report["beyond_checkpoint"], 0, "{report}");
}

#[test]
fn two_processes_appending_never_fork_the_chain_on_sqlite() {
    two_processes(&Store::sqlite());
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn two_processes_appending_never_fork_the_chain_on_postgres() {
    let store = Store::postgres().await;
    tokio::task::spawn_blocking(move || two_processes(&store)).await.unwrap();
}

#[test]
fn the_commands_report_sign_prove_and_name_the_first_bad_record() {
    let store = Store::sqlite();
    let config = store.write_config();
    let dir = store.dir.path();
    let args = |rest: &[&str]| -> Vec<String> {
        ["--config", config.to_str().unwrap()].iter().chain(rest).map(ToString::to_string).collect()
    };
    let run = |rest: &[&str]| {
        let args = args(rest);
        vigil(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let vkey = run(&["evidence", "pubkey", "--vkey"]);
    vkey.assert_code(0);
    let vkey = vkey.stdout().trim().to_owned();
    NoteVerifier::parse(&vkey).unwrap();
    let key_mode = std::fs::metadata(dir.join("data/evidence.key")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);

    run(&["evidence", "append", "--kind", "manual.restore_test", "--subject", "orders", "--detail", "minutes=12"])
        .assert_code(0);
    let refused = run(&["evidence", "append", "--kind", "rotation.step", "--subject", "orders"]);
    refused.assert_code(1);
    assert!(refused.stderr().contains("manual."), "{}", refused.stderr());

    let checkpoint = run(&["evidence", "checkpoint"]);
    checkpoint.assert_code(0);
    let verifier = signed_note::StandardVerifier::new(&vkey).unwrap();
    let parsed = signed_note::Note::from_bytes(checkpoint.stdout().as_bytes()).unwrap();
    parsed
        .verify(&signed_note::VerifierList::new(vec![Box::new(verifier)]))
        .expect("an independent verifier accepts `vigil evidence checkpoint`");

    let listed = run(&["--output", "json", "evidence", "list", "--kind", "manual.restore_test"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["details"], r#"{"minutes":"12"}"#);
    let shown = run(&["--output", "json", "evidence", "show", "1"]).json();
    assert_eq!(shown["kind"], GENESIS);
    let proof = run(&["--output", "json", "evidence", "prove", "2"]).json();
    assert_eq!(proof["index"], 1);

    let verified = run(&["evidence", "verify", "--vkey", &vkey]);
    verified.assert_code(0);
    assert!(verified.stdout().contains("ok: every record and checkpoint verifies"), "{}", verified.stdout());

    // Tamper with the stored record and verification fails, naming it.
    let status = std::process::Command::new("sqlite3")
        .arg(dir.join("data/evidence.db"))
        .arg("UPDATE evidence_records SET details = '{\"minutes\":\"2\"}' WHERE seq = 2")
        .status();
    if status.is_err() {
        // No sqlite3 shell here: tamper through sqlx instead.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let db = Db::open(&EvidenceStore::Sqlite { path: dir.join("data/evidence.db") }).await.unwrap();
            exec(&db, "UPDATE evidence_records SET details = '{\"minutes\":\"2\"}' WHERE seq = 2").await;
            db.close().await;
        });
    }
    let failed = run(&["evidence", "verify", "--vkey", &vkey]);
    failed.assert_code(1);
    assert!(failed.stderr().contains("evidence verification failed at record 2"), "{}", failed.stderr());
    let json = run(&["--output", "json", "evidence", "verify", "--vkey", &vkey]);
    json.assert_code(1);
    assert_eq!(json.json()["problem"]["seq"], 2);
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let store = Store::sqlite();
    let config = store.write_config();
    let dir = store.dir.path();
    vigil(dir, &["--config", config.to_str().unwrap(), "evidence", "pubkey"]).assert_code(0);
    let key = dir.join("data/evidence.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let run = vigil(dir, &["--config", config.to_str().unwrap(), "evidence", "checkpoint"]);
    run.assert_code(1);
    assert!(
        run.stderr().contains("readable by group or others") && run.stderr().contains("chmod 600"),
        "{}",
        run.stderr()
    );
}

#[test]
fn an_interrupted_rollover_is_finished_on_the_next_open() {
    let store = Store::sqlite();
    let config = store.write_config();
    let dir = store.dir.path();
    let cfg = config.to_str().unwrap();
    let first = vigil(dir, &["--config", cfg, "evidence", "pubkey", "--vkey"]);
    first.assert_code(0);
    let first_vkey = first.stdout().trim().to_owned();
    let key_path = dir.join("data/evidence.key");
    let name = NoteVerifier::parse(&first_vkey).unwrap().name().to_owned();

    // A rollover that died after announcing the new key, before any checkpoint covered it.
    let next = LedgerKey::generate(&name);
    let next_vkey = next.verifier().vkey();
    next.save(&pending(&key_path)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Db::open(&EvidenceStore::Sqlite { path: dir.join("data/evidence.db") }).await.unwrap();
        let ledger = Ledger::open(db.clone(), LedgerKey::load(&key_path).unwrap(), clock()).await.unwrap();
        ledger.append(evidence::rollover_record(&LedgerKey::load(&key_path).unwrap(), &next.verifier())).await.unwrap();
        db.close().await;
    });

    vigil(dir, &["--config", cfg, "evidence", "checkpoint"]).assert_code(0);
    assert!(!pending(&key_path).exists());
    let now = vigil(dir, &["--config", cfg, "evidence", "pubkey", "--vkey"]);
    assert_eq!(now.stdout().trim(), next_vkey);
    let report = vigil(dir, &["--config", cfg, "--output", "json", "evidence", "verify", "--vkey", &first_vkey]);
    report.assert_code(0);
    assert_eq!(report.json()["keys"].as_array().unwrap().len(), 2);

    // A pending key the ledger never announced is dropped.
    LedgerKey::generate(&name).save(&pending(&key_path)).unwrap();
    vigil(dir, &["--config", cfg, "evidence", "checkpoint"]).assert_code(0);
    assert!(!pending(&key_path).exists());
    assert_eq!(vigil(dir, &["--config", cfg, "evidence", "pubkey", "--vkey"]).stdout().trim(), next_vkey);
}

fn pending(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.next", key.display()))
}

/// A head row a database writer edited never reaches the signing key: a size of 2^62 over 40
/// records (with a frontier that fits it) is refused, and so is a last hash that is not the
/// newest record's.
#[tokio::test]
async fn a_checkpoint_is_never_signed_over_an_edited_head_row() {
    let store = Store::sqlite();
    let ledger = build(store.open().await, LedgerKey::generate("vigil/head")).await;
    let db = ledger.db().clone();
    let before = evidence::checkpoints(&db).await.unwrap().len();
    let huge: u64 = 1 << 62;
    let frontier = format!("{huge:016x}{}", "00".repeat(32));
    exec(&db, &format!("UPDATE evidence_head SET size = {huge}, frontier = X'{frontier}' WHERE id = 1")).await;
    let err = ledger.checkpoint().await.unwrap_err().to_string();
    assert!(err.contains(&format!("says {huge} records, but 40 are stored")), "{err}");
    assert!(err.contains("vigil evidence verify"), "{err}");
    assert_eq!(evidence::checkpoints(&db).await.unwrap().len(), before, "nothing was signed");

    let store = Store::sqlite();
    let ledger = build(store.open().await, LedgerKey::generate("vigil/head")).await;
    let db = ledger.db().clone();
    exec(&db, &format!("UPDATE evidence_head SET last_hash = X'{}' WHERE id = 1", "11".repeat(32))).await;
    let err = ledger.checkpoint().await.unwrap_err().to_string();
    assert!(err.contains("last hash is not record 40's hash"), "{err}");
}

/// Before signing, every record since the newest checkpoint vigil signed is re-verified and
/// the head row rebuilt from them; a record edited or removed below the newest one, a head whose
/// frontier was replaced, or a forged checkpoint row offered as the starting point, are each
/// refused and nothing is signed. A ledger whose checkpoints predate stored frontiers is
/// re-verified from its genesis record.
#[tokio::test]
async fn a_checkpoint_re_verifies_every_record_since_the_last_signed_one() {
    // Records 1..=37 are under the checkpoint of size 37; 38..=40 are not yet.
    async fn refused(tamper: &str, expected: &str) {
        let store = Store::sqlite();
        let ledger = build(store.open().await, LedgerKey::generate("vigil/chain")).await;
        let db = ledger.db().clone();
        exec(&db, tamper).await;
        let before = evidence::checkpoints(&db).await.unwrap().len();
        let err = ledger.checkpoint().await.unwrap_err().to_string();
        assert!(err.contains(expected), "{tamper}: {err}");
        assert_eq!(evidence::checkpoints(&db).await.unwrap().len(), before, "{tamper}: nothing was signed");
    }
    let edit = |seq: u32| format!("UPDATE evidence_records SET details = '{{\"edited\":true}}' WHERE seq = {seq}");
    refused(&edit(38), "record 38's contents do not match its stored hash").await;
    refused("DELETE FROM evidence_records WHERE seq = 39", "record 39 is missing").await;
    // Byte 21 is inside a random hash: it is set to a value it does not already have (a fixed
    // X'00' left one run in 256 untampered).
    refused(
        "UPDATE evidence_head SET frontier = substr(frontier, 1, 20) \
         || CASE WHEN substr(frontier, 21, 1) = X'00' THEN X'01' ELSE X'00' END \
         || substr(frontier, 22) WHERE id = 1",
        "the head row's Merkle frontier is not the one records 1..=40 hash to",
    )
    .await;
    // A checkpoint row nobody signed is no starting point: record 38 is still checked.
    let forged = format!(
        "INSERT INTO evidence_checkpoints (size, root_hash, key_name, key_id, signed_at, note, frontier) \
         SELECT 40, root_hash, key_name, key_id, signed_at, 'vigil/chain\n40\nAAAA\n', frontier FROM evidence_checkpoints WHERE size = 37; {}",
        edit(38)
    );
    refused(&forged, "record 38's contents do not match its stored hash").await;
    // Checkpoints from before frontiers were stored: the next one re-verifies from record 1.
    refused(&format!("UPDATE evidence_checkpoints SET frontier = NULL; {}", edit(5)), "record 5's contents").await;

    // Untouched, the next checkpoint signs all 40, and the one after starts from it.
    let store = Store::sqlite();
    let ledger = build(store.open().await, LedgerKey::generate("vigil/chain")).await;
    assert_eq!(ledger.checkpoint().await.unwrap().size, 40);
    exec(ledger.db(), &edit(20)).await;
    assert_eq!(ledger.checkpoint().await.unwrap().size, 40, "records under a signed checkpoint are verify's to check");
    let report = evidence::verify(ledger.db(), evidence::Trust::Genesis).await.unwrap();
    assert!(report.problem.unwrap().what.contains("record 20"), "and verify finds the edit");
}

/// `evidence prove` allocates for the records it reads, not for the size a stored checkpoint
/// claims: a checkpoint edited to 2^59 records is an error, not an allocation failure.
#[tokio::test]
async fn a_proof_against_an_edited_checkpoint_size_is_an_error_not_a_crash() {
    let store = Store::sqlite();
    let ledger = build(store.open().await, LedgerKey::generate("vigil/prove")).await;
    let db = ledger.db().clone();
    let huge: u64 = 1 << 59;
    exec(&db, &format!("UPDATE evidence_checkpoints SET size = {huge} WHERE size = 37")).await;
    let err = evidence::prove(&db, 5, Some(huge)).await.unwrap_err();
    assert!(matches!(err, EvidenceError::Incomplete { readable: 40, .. }), "{err}");
}

/// `evidence.trusted_vkey` pins the key `vigil evidence verify` trusts: a ledger signed end to
/// end by the configured key passes without it (as the output says), and fails when another
/// key is pinned.
#[test]
fn a_configured_trusted_vkey_pins_verification() {
    let store = Store::sqlite();
    let config = store.write_config();
    let dir = store.dir.path();
    let run = |config: &Path, rest: &[&str]| {
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend_from_slice(rest);
        vigil(dir, &args)
    };
    run(&config, &["evidence", "append", "--kind", "manual.note", "--subject", "x"]).assert_code(0);
    let trusted = LedgerKey::generate("vigil/elsewhere").verifier().vkey();
    let configured = run(&config, &["evidence", "verify"]);
    configured.assert_code(0);
    assert!(configured.stdout().contains("the configured signing key vouches for it"), "{}", configured.stdout());
    let pinned = dir.join("pinned.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&pinned, text.replace("[evidence]\n", &format!("[evidence]\ntrusted_vkey = \"{trusted}\"\n")))
        .unwrap();
    let refused = run(&pinned, &["evidence", "verify"]);
    refused.assert_code(1);
    assert!(refused.stderr().contains("evidence verification failed"), "{}", refused.stderr());
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, text.replace("[evidence]\n", "[evidence]\ntrusted_vkey = \"not a key\"\n")).unwrap();
    let check = run(&broken, &["config", "check"]);
    check.assert_code(1);
    assert!(check.stderr().contains("evidence.trusted_vkey: not a verifier key"), "{}", check.stderr());
}

/// Without a pinned key, `vigil evidence verify` trusts the configured signing key, never the
/// key a database's genesis record names: a ledger made and signed throughout by another key
/// (all of it consistent) is refused. After
/// a rollover the configured (new) key vouches for the old key's checkpoints.
#[test]
fn verify_without_a_pinned_key_trusts_the_configured_key_not_the_genesis_record() {
    let store = Store::sqlite();
    let config = store.write_config();
    let dir = store.dir.path();
    let cfg = config.to_str().unwrap();
    let key_path = dir.join("data/evidence.key");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The database was made, and signed throughout, by a key that is not the configured one.
    rt.block_on(async {
        let db = store.open().await;
        build(db.clone(), LedgerKey::generate("vigil/impostor")).await.checkpoint().await.unwrap();
        db.close().await;
    });
    LedgerKey::generate("vigil/configured").save(&key_path).unwrap();
    let refused = vigil(dir, &["--config", cfg, "evidence", "verify"]);
    assert_eq!(refused.code(), 1, "{}", refused.all_output());
    assert!(
        refused.stderr().contains("genesis record announces key vigil/impostor+")
            && refused.stderr().contains("no checkpoint signed by the configured signing key vigil/configured+"),
        "{}",
        refused.stderr()
    );

    // The configured key's own ledger verifies, after a rollover too.
    let store = Store::sqlite();
    let config = store.write_config();
    let dir = store.dir.path();
    let cfg = config.to_str().unwrap();
    vigil(dir, &["--config", cfg, "evidence", "append", "--kind", "manual.note", "--subject", "x"]).assert_code(0);
    vigil(dir, &["--config", cfg, "evidence", "rollover-key"]).assert_code(0);
    let verified = vigil(dir, &["--config", cfg, "--output", "json", "evidence", "verify"]);
    verified.assert_code(0);
    assert_eq!(verified.json()["keys"].as_array().unwrap().len(), 2, "{}", verified.stdout());
    // Without a key file, nothing is trusted.
    std::fs::remove_file(dir.join("data/evidence.key")).unwrap();
    let keyless = vigil(dir, &["--config", cfg, "evidence", "verify"]);
    assert_eq!(keyless.code(), 1, "{}", keyless.all_output());
    assert!(keyless.stderr().contains("give --vkey or --vkey-file"), "{}", keyless.stderr());
}

/// A rollover record a database writer inserted (its hashes right, so vigil's next checkpoint
/// covers it) enrols no key: only a key the retiring key endorsed is trusted.
#[tokio::test]
async fn a_rollover_record_without_the_old_keys_endorsement_enrols_nothing() {
    let store = Store::sqlite();
    let key = LedgerKey::generate("vigil/enrol");
    let pinned = key.verifier();
    let ledger = build(store.open().await, key).await;
    let intruder = LedgerKey::generate("vigil/enrol");
    ledger
        .append(NewRecord {
            kind: KEY_ROLLOVER.into(),
            subject: "vigil/enrol".into(),
            outcome: Outcome::Info,
            details: serde_json::json!({ "vkey": intruder.verifier().vkey() }),
        })
        .await
        .unwrap();
    ledger.checkpoint().await.unwrap();
    let report = evidence::verify(ledger.db(), Trust::Pinned(Box::new(pinned.clone()))).await.unwrap();
    expect_problem(report.problem, 41, "which the key it replaces did not sign");
    // An endorsement by the intruder's own key is no better.
    let store = Store::sqlite();
    let key = LedgerKey::generate("vigil/enrol");
    let pinned = key.verifier();
    let ledger = build(store.open().await, key).await;
    ledger.append(evidence::rollover_record(&intruder, &LedgerKey::generate("vigil/enrol").verifier())).await.unwrap();
    ledger.checkpoint().await.unwrap();
    let report = evidence::verify(ledger.db(), Trust::Pinned(Box::new(pinned))).await.unwrap();
    expect_problem(report.problem, 41, "which the key it replaces did not sign");
}

/// Every checkpoint is also written to a witness outside the database, and `verify` names the
/// first disagreement: a checkpoint removed from the database, or one whose copy differs.
#[test]
fn the_checkpoint_witness_catches_checkpoints_rewritten_in_the_database() {
    let store = Store::sqlite();
    let config = store.write_config();
    let dir = store.dir.path();
    let witness = dir.join("witness");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "[evidence]\n",
            &format!("[evidence]\nwitness = {{ store = \"local\", path = \"{}\" }}\n", witness.display()),
        ),
    )
    .unwrap();
    let run = |rest: &[&str]| {
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend_from_slice(rest);
        vigil(dir, &args)
    };
    run(&["evidence", "append", "--kind", "manual.note", "--subject", "a"]).assert_code(0);
    run(&["evidence", "checkpoint"]).assert_code(0);
    run(&["evidence", "append", "--kind", "manual.note", "--subject", "b"]).assert_code(0);
    run(&["evidence", "checkpoint"]).assert_code(0);
    let notes: Vec<String> = std::fs::read_dir(witness.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(notes.iter().any(|n| n == "latest.note") && notes.len() >= 4, "{notes:?}");
    let ok = run(&["evidence", "verify"]);
    ok.assert_code(0);
    assert!(ok.stdout().contains("every checkpoint matches its copy outside the database"), "{}", ok.stdout());

    // Someone with the database removes the newest checkpoint (to hide what it covered).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = Db::open(&EvidenceStore::Sqlite { path: dir.join("data/evidence.db") }).await.unwrap();
        exec(&db, "DELETE FROM evidence_checkpoints WHERE size = (SELECT max(size) FROM evidence_checkpoints)").await;
        db.close().await;
    });
    let removed = run(&["evidence", "verify"]);
    removed.assert_code(1);
    assert!(
        removed.stderr().contains("is not in the database: checkpoints were removed or replaced"),
        "{}",
        removed.stderr()
    );

    // A witnessed copy that differs from the database's.
    let copy = std::fs::read_dir(witness.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "latest.note"))
        .min()
        .unwrap();
    std::fs::write(&copy, "not the note\n").unwrap();
    let differs = run(&["evidence", "verify"]);
    differs.assert_code(1);
    assert!(differs.stderr().contains("differs from its copy"), "{}", differs.stderr());
}
