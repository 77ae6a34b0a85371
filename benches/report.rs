//! `cargo xtask bench report`: a year of a fleet in the ledger (100 secrets rotated weekly,
//! hourly backups of 20 sets, a daily drill of each: about 950,000 records), then the real
//! `vigil report export` of that year and `vigil evidence verify --bundle` of its bundle, each
//! beside a baseline measured in the same run on the same data:
//!
//! - export: reading every record through rusqlite and writing it as a JSON line, the least any
//!   export of the records does;
//! - verify: `sha256sum` of the bundle, the least any check of it does.
//!
//! Targets: export <= 10 s, verification <= 5 s, peak RSS <= 256 MiB each.

mod support;

use std::io::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use support::{MIB, measure};
use vigil::clock::{Clock as _, ManualClock};
use vigil::evidence::{Ledger, LedgerKey, NewRecord, Outcome};
use vigil::state::{Db, StateStore};

const SECRETS: usize = 100;
const SETS: usize = 20;
const HOURS: i64 = 365 * 24;

fn record(kind: &str, subject: &str, outcome: Outcome, details: serde_json::Value) -> NewRecord {
    NewRecord { kind: kind.into(), subject: subject.into(), outcome, details }
}

/// A saga's records: started, a step's intent and outcome, finished.
fn saga(area: &str, subject: &str, id: &str, data: &serde_json::Value) -> Vec<NewRecord> {
    let at = |step: &str, phase: &str| json!({ "saga": id, "step": step, "phase": phase, "data": data });
    vec![
        record(&format!("{area}.started"), subject, Outcome::Started, at("saga", "started")),
        record(&format!("{area}.step"), subject, Outcome::Started, at("work", "act")),
        record(&format!("{area}.finished"), subject, Outcome::Succeeded, at("saga", "finished")),
    ]
}

/// Fills the ledger with a year, hour by hour; returns the records written.
async fn build_year(ledger: &Ledger, clock: &ManualClock, start: DateTime<Utc>) -> u64 {
    let mut written = 0u64;
    for hour in 0..HOURS {
        let now = start + chrono::Duration::hours(hour);
        clock.advance(now - clock.now());
        let mut batch = Vec::with_capacity(SETS * 6);
        for set in 0..SETS {
            let (name, id) = (format!("set-{set:02}"), format!("b-{hour:05}-{set:02}"));
            batch.extend(saga("backup", &name, &format!("s-{id}"), &json!({ "set": name, "backup_id": id })));
            let snapshot = (now - chrono::Duration::minutes(3)).to_rfc3339();
            batch.push(record(
                "backup.written",
                &name,
                Outcome::Succeeded,
                json!({
                    "backup_id": id, "snapshot_time": snapshot, "encryption": "AES-256-GCM STREAM",
                    "key_service": "aws_kms", "key_id": "alias/vigil-backups",
                    "stream": { "plaintext_bytes": 1_234_567_890u64 + hour as u64, "ciphertext_bytes": 345_678_901u64 },
                }),
            ));
            batch.push(record("backup.verified", &name, Outcome::Succeeded, json!({ "backup_id": id })));
            if hour % 24 == 5 {
                let data = json!({
                    "drill": format!("drill-{set:02}"), "backup_set": name, "started_at": now.to_rfc3339(),
                    "rpo_target_secs": 3600, "rto_target_secs": 3600, "rto_secs": 420.5, "rpo_secs": 600,
                    "checks": [{ "name": "row_counts", "passed": true, "detail": "12 tables" }],
                    "verdict": { "passed": true, "reasons": [] },
                });
                batch.push(record(
                    "drill.started",
                    &format!("drill-{set:02}"),
                    Outcome::Started,
                    json!({ "saga": format!("d-{id}"), "data": {} }),
                ));
                batch.push(record(
                    "drill.finished",
                    &format!("drill-{set:02}"),
                    Outcome::Succeeded,
                    json!({ "saga": format!("d-{id}"), "data": data }),
                ));
            }
        }
        // Each secret once a week, spread over the week's hours.
        for secret in (0..SECRETS).filter(|s| (hour as usize) % (7 * 24) == s * 7 * 24 / SECRETS) {
            let name = format!("secret-{secret:03}");
            let data = json!({ "strategy": "alternating_users", "target": "main", "user": "app" });
            let mut records = saga("rotation", &name, &format!("r-{hour:05}-{secret:03}"), &data);
            // A rotation has more steps than a backup: stage, set, test, promote.
            for step in ["stage", "set", "test"] {
                records.insert(2, record("rotation.step", &name, Outcome::Succeeded, json!({ "step": step })));
            }
            batch.extend(records);
        }
        written += batch.len() as u64;
        ledger.append_batch(batch).await.unwrap();
    }
    ledger.checkpoint().await.unwrap();
    written
}

/// The export's floor: every record read through rusqlite and written as a JSON line.
fn baseline_export(db: &std::path::Path, out: &std::path::Path) -> Duration {
    let started = Instant::now();
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut statement = conn
        .prepare("SELECT seq, time, kind, subject, actor_host, actor_pid, actor_version, outcome, details, prev_hash, hash FROM evidence_records ORDER BY seq")
        .unwrap();
    let mut rows = statement.query([]).unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    while let Some(row) = rows.next().unwrap() {
        let text = |i: usize| row.get_ref(i).unwrap().as_str().unwrap().to_owned();
        let line = json!({
            "seq": row.get::<_, i64>(0).unwrap(), "time": text(1), "kind": text(2), "subject": text(3),
            "actor": { "host": text(4), "pid": row.get::<_, i64>(5).unwrap(), "version": text(6) },
            "outcome": text(7), "details": text(8),
            "prev_hash": hex::encode(row.get_ref(9).unwrap().as_blob().unwrap()),
            "hash": hex::encode(row.get_ref(10).unwrap().as_blob().unwrap()),
        });
        serde_json::to_writer(&mut file, &line).unwrap();
        file.write_all(b"\n").unwrap();
    }
    file.flush().unwrap();
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let start = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z").unwrap().to_utc();
    println!("report benchmark: a year of 100 secrets (weekly), 20 backup sets (hourly) and 20 drills (daily)");
    let key = LedgerKey::generate("vigil/bench");
    key.save(&dir.path().join("evidence.key")).unwrap();
    let db_path = dir.path().join("state.db");
    let db = Db::open(&StateStore::Sqlite { path: db_path.clone() }).await.unwrap();
    let clock = Arc::new(ManualClock::new(start - chrono::Duration::hours(1)));
    let ledger = Ledger::open(db.clone(), key, clock.clone()).await.unwrap();
    let built = Instant::now();
    let records = build_year(&ledger, &clock, start).await;
    println!("  (built {records} records in {:.0} s)", built.elapsed().as_secs_f64());
    db.close().await;

    // The policy is left empty: the numbers are counted all the same.
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    std::fs::write(dir.path().join("schedules/none.toml"), "").unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[controller]\ndata_dir = \"data\"\n\n[evidence]\nurl = \"sqlite://{}\"\nsigning_key = \"{}\"\n",
            db_path.display(),
            dir.path().join("evidence.key").display()
        ),
    )
    .unwrap();
    let vigil = env!("CARGO_BIN_EXE_vigil");
    let run = |args: Vec<String>| {
        let mut command = Command::new(vigil);
        command.current_dir(dir.path()).arg("--config").arg(&config).arg("-q").args(args);
        command.stdout(std::process::Stdio::null());
        command.spawn().unwrap()
    };

    let floor = baseline_export(&db_path, &dir.path().join("baseline.jsonl"));
    let exported = measure("vigil report export", || {
        vec![run(["report", "export", "--from", "2025-01-01", "--to", "2026-01-01", "--out", "year"]
            .map(String::from)
            .to_vec())]
    });
    let bundle = dir.path().join("year/bundle.tar");
    let size = std::fs::metadata(&bundle).unwrap().len();
    let vkey =
        Command::new(vigil).arg("--config").arg(&config).args(["evidence", "pubkey", "--vkey"]).output().unwrap();
    std::fs::write(dir.path().join("vigil.vkey"), &vkey.stdout).unwrap();

    let hashed = measure("sha256sum", || {
        vec![Command::new("sha256sum").arg(&bundle).stdout(std::process::Stdio::null()).spawn().unwrap()]
    });
    let verified = measure("vigil evidence verify --bundle", || {
        vec![run(["evidence", "verify", "--bundle", "year/bundle.tar", "--vkey-file", "vigil.vkey"]
            .map(String::from)
            .to_vec())]
    });

    let secs = |d: Duration| d.as_secs_f64();
    println!("{:<44}{:>8.2} s", "baseline: rusqlite read + JSON lines", secs(floor));
    println!(
        "{:<44}{:>8.2} s   peak RSS {:>6.1} MiB   ({:.2}x the baseline; target <= 10 s, <= 256 MiB)",
        "vigil report export (one year)",
        secs(exported.elapsed),
        exported.peak_rss as f64 / MIB,
        secs(exported.elapsed) / secs(floor)
    );
    println!("{:<44}{:>8.2} s", "baseline: sha256sum of the bundle", secs(hashed.elapsed));
    println!(
        "{:<44}{:>8.2} s   peak RSS {:>6.1} MiB   ({:.2}x the baseline; target <= 5 s, <= 256 MiB)",
        "vigil evidence verify --bundle",
        secs(verified.elapsed),
        verified.peak_rss as f64 / MIB,
        secs(verified.elapsed) / secs(hashed.elapsed)
    );
    println!("bundle: {:.1} MiB for {records} records", size as f64 / MIB);
}
