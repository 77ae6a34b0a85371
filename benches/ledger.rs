//! `cargo xtask bench ledger`: append throughput on SQLite and PostgreSQL, and the time to
//! verify a million records, each beside a baseline measured in the same run on the same store:
//! plain INSERTs of the same rows without hashing, and reading the rows without verifying.
//!
//! Targets: appends >= 5,000 records/s batched on SQLite; verify 1,000,000 records in <= 2 s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use sqlx::Row as _;
use vigil::clock::SystemClock;
use vigil::evidence::{self, Ledger, LedgerKey, NewRecord, Outcome, Trust};
use vigil::secret::SecretRef;
use vigil::state::StateStore as EvidenceStore;
use vigil::state::{Db, Pool};

const BATCH: usize = 1_000;

struct Args {
    append_records: usize,
    verify_records: usize,
}

fn args() -> Args {
    let mut args = Args { append_records: 100_000, verify_records: 1_000_000 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--append-records" => args.append_records = it.next().and_then(|n| n.parse().ok()).expect("a number"),
            "--verify-records" => args.verify_records = it.next().and_then(|n| n.parse().ok()).expect("a number"),
            // cargo bench passes --bench; nothing else is ours.
            _ => {}
        }
    }
    args
}

fn record(i: usize) -> NewRecord {
    NewRecord {
        kind: "rotation.step".into(),
        subject: format!("secret-{}", i % 1000),
        outcome: Outcome::Succeeded,
        details: serde_json::json!({ "step": "set", "attempt": 1, "rotation": format!("r-{i:08}"), "target": "orders-pg" }),
    }
}

/// Appends `n` records in batches through the ledger; records per second.
async fn ledger_append(db: &Db, key: LedgerKey, n: usize) -> f64 {
    let ledger = Ledger::open(db.clone(), key, Arc::new(SystemClock)).await.unwrap();
    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        ledger.append_batch(chunk.iter().map(|i| record(*i)).collect()).await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The same rows inserted into a plain table in the same batches, with no hashing, chain or
/// frontier: what the store alone costs.
async fn plain_insert(db: &Db, n: usize) -> f64 {
    const CREATE: &str = "CREATE TABLE bench_plain (seq BIGINT PRIMARY KEY, time TEXT, kind TEXT, subject TEXT, actor_host TEXT, actor_pid BIGINT, actor_version TEXT, outcome TEXT, details TEXT, prev_hash BYTEA, hash BYTEA)";
    const INSERT: &str = "INSERT INTO bench_plain VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    macro_rules! run {
        ($pool:expr, $begin:expr) => {{
            sqlx::query(CREATE).execute($pool).await.unwrap();
            let start = Instant::now();
            for chunk in (0..n).collect::<Vec<_>>().chunks(BATCH) {
                let mut tx = $begin.await.unwrap();
                for i in chunk {
                    let r = record(*i);
                    sqlx::query(INSERT)
                        .bind(*i as i64)
                        .bind("2026-11-24T10:00:00.000000Z")
                        .bind(r.kind)
                        .bind(r.subject)
                        .bind("bench-host")
                        .bind(4242i64)
                        .bind("0.1.0")
                        .bind("succeeded")
                        .bind(r.details.to_string())
                        .bind(vec![0u8; 32])
                        .bind(vec![0u8; 32])
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            n as f64 / start.elapsed().as_secs_f64()
        }};
    }
    match db.pool() {
        Pool::Sqlite(pool) => run!(pool, pool.begin_with("BEGIN IMMEDIATE")),
        Pool::Postgres(pool) => run!(pool, pool.begin()),
    }
}

/// Reads every record row without hashing or checking anything, through rusqlite as the
/// verifier does: the floor under verification.
fn read_only_rusqlite(path: &std::path::Path) -> (Duration, u64) {
    let start = Instant::now();
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT seq, time, kind, subject, actor_host, actor_pid, actor_version, outcome, details, prev_hash, hash FROM evidence_records ORDER BY seq")
        .unwrap();
    let mut rows = statement.query([]).unwrap();
    let mut count = 0u64;
    while let Some(row) = rows.next().unwrap() {
        let details = row.get_ref(8).unwrap().as_str().unwrap();
        let hash = row.get_ref(10).unwrap().as_blob().unwrap();
        count += u64::from(!details.is_empty() && hash.len() == 32);
    }
    (start.elapsed(), count)
}

/// The same read through sqlx, which vigil uses for everything else: why the verifier does not.
async fn read_only_sqlx(db: &Db) -> Duration {
    const SQL: &str = "SELECT seq, time, kind, subject, actor_host, actor_pid, actor_version, outcome, details, prev_hash, hash FROM evidence_records ORDER BY seq";
    macro_rules! run {
        ($pool:expr) => {{
            let start = Instant::now();
            let mut rows = sqlx::query(SQL).fetch($pool);
            while let Some(row) = rows.try_next().await.unwrap() {
                let _: String = row.try_get(8).unwrap();
                let _: Vec<u8> = row.try_get(10).unwrap();
            }
            start.elapsed()
        }};
    }
    match db.pool() {
        Pool::Sqlite(pool) => run!(pool),
        Pool::Postgres(pool) => run!(pool),
    }
}

async fn timed_verify(db: &Db, ledger: &Ledger) -> (Duration, u64) {
    let start = Instant::now();
    let report = evidence::verify(db, Trust::Pinned(Box::new(ledger.verifier()))).await.unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
    (start.elapsed(), report.records)
}

fn postgres_store(scratch: &std::path::Path) -> Option<(EvidenceStore, String, String)> {
    let path = std::env::var_os("VIGIL_SERVICES_FILE").map(PathBuf::from)?;
    let services: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let pg = &services["postgres"];
    let password_file = scratch.join("pg-password");
    std::fs::write(&password_file, pg["password"].as_str()?).ok()?;
    let base = format!("postgres://{}@{}:{}", pg["user"].as_str()?, pg["host"].as_str()?, pg["port"]);
    let name = format!("bench_ledger_{}", std::process::id());
    let store = EvidenceStore::Postgres {
        url: format!("{base}/{name}"),
        password: Some(SecretRef::File { path: password_file }),
        tls: vigil::tls::Tls { mode: vigil::tls::TlsMode::VerifyFull, ca_file: Some(pg["ca_file"].as_str()?.into()) },
    };
    Some((store, format!("{base}/postgres"), name))
}

#[tokio::main]
async fn main() {
    let args = args();
    let scratch = tempfile::tempdir().unwrap();
    println!(
        "ledger benchmark: {} records appended in batches of {BATCH}; {} records verified",
        args.append_records, args.verify_records
    );

    // SQLite appends.
    let db = Db::open(&EvidenceStore::Sqlite { path: scratch.path().join("append.db") }).await.unwrap();
    let vigil = ledger_append(&db, LedgerKey::generate("vigil/bench"), args.append_records).await;
    let plain = plain_insert(&db, args.append_records).await;
    println!(
        "append, SQLite:      vigil {vigil:>9.0} records/s   plain INSERT baseline {plain:>9.0} records/s   ({:.2}x of baseline; target >= 5000/s: {})",
        vigil / plain,
        if vigil >= 5000.0 { "met" } else { "MISSED" }
    );
    db.close().await;

    // PostgreSQL appends, when the services are up.
    match postgres_store(scratch.path()) {
        Some((store, admin_url, name)) => {
            let password = std::fs::read_to_string(scratch.path().join("pg-password")).unwrap();
            let vigil::state::StateStore::Postgres { tls, .. } = &store else { unreachable!("a postgres store") };
            let options =
                tls.postgres(admin_url.parse::<sqlx::postgres::PgConnectOptions>().unwrap().password(&password));
            let admin = sqlx::PgPool::connect_with(options).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
            let db = Db::open(&store).await.unwrap();
            let n = args.append_records / 5;
            let key = LedgerKey::generate("vigil/bench");
            key.save(&scratch.path().join("pg.key")).unwrap();
            let vigil = ledger_append(&db, key, n).await;
            let plain = plain_insert(&db, n).await;
            println!(
                "append, PostgreSQL:  vigil {vigil:>9.0} records/s   plain INSERT baseline {plain:>9.0} records/s   ({:.2}x of baseline, {n} records)",
                vigil / plain
            );
            let ledger = Ledger::open(
                db.clone(),
                LedgerKey::load(&scratch.path().join("pg.key")).unwrap(),
                Arc::new(SystemClock),
            )
            .await
            .unwrap();
            ledger.checkpoint().await.unwrap();
            let (verify, records) = timed_verify(&db, &ledger).await;
            let read = read_only_sqlx(&db).await;
            println!(
                "verify, PostgreSQL:  vigil {:>7.2} s for {records} records ({:.0} records/s)   read-only baseline {:>7.2} s   ({:.2}x of baseline)",
                verify.as_secs_f64(),
                records as f64 / verify.as_secs_f64(),
                read.as_secs_f64(),
                verify.as_secs_f64() / read.as_secs_f64()
            );
            db.close().await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}"))).execute(&admin).await.unwrap();
        }
        None => {
            println!("append, PostgreSQL:  skipped (no VIGIL_SERVICES_FILE; run through `cargo xtask bench ledger`)")
        }
    }

    // Verify a million records on SQLite.
    let db = Db::open(&EvidenceStore::Sqlite { path: scratch.path().join("verify.db") }).await.unwrap();
    let ledger = Ledger::open(db.clone(), LedgerKey::generate("vigil/bench"), Arc::new(SystemClock)).await.unwrap();
    let building = Instant::now();
    let mut written = 1;
    while written < args.verify_records {
        let n = (args.verify_records - written).min(10_000);
        ledger.append_batch((written..written + n).map(record).collect()).await.unwrap();
        written += n;
    }
    ledger.checkpoint().await.unwrap();
    println!("  (built {written} records in {:.1} s)", building.elapsed().as_secs_f64());
    let (read, rows) = read_only_rusqlite(&scratch.path().join("verify.db"));
    let read_sqlx = read_only_sqlx(&db).await;
    let (verify, records) = timed_verify(&db, &ledger).await;
    assert_eq!(records, rows);
    println!(
        "verify, SQLite:      vigil {:>7.2} s for {records} records   read-only baseline {:>7.2} s   ({:.2}x of baseline; target <= 2 s: {})",
        verify.as_secs_f64(),
        read.as_secs_f64(),
        verify.as_secs_f64() / read.as_secs_f64(),
        if verify <= Duration::from_secs(2) { "met" } else { "MISSED" }
    );
    println!(
        "  (the same rows read through sqlx take {:.2} s: why verification reads SQLite with rusqlite)",
        read_sqlx.as_secs_f64()
    );
    db.close().await;
}
