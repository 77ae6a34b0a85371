//! Compliance reports: a ledger of known events and its report's numbers checked exactly; its
//! bundle checked offline, intact and with a record, a number, the HTML, a CSV file, the record
//! set or the signing key changed; the commands an auditor runs; the HTML in headless Chromium
//! and the OSCAL document in compliance-trestle.

use std::io::Read as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;

use vigil::clock::{Clock, ManualClock};
use vigil::evidence::{Ledger, LedgerKey, NewRecord, NoteVerifier, Outcome};
use vigil::report::bundle::BundleError;
use vigil::report::model::{BackupPolicy, DrillPolicy, Period, Policy, SecretPolicy};
use vigil::report::{Format, Report, export, verify_bundle};
use vigil::state::{Db, StateStore};

fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// A ledger whose clock is moved to each event's time.
struct Events {
    clock: Arc<ManualClock>,
    ledger: Ledger,
    next_saga: u32,
}

impl Events {
    async fn new(dir: &std::path::Path, key: LedgerKey) -> Self {
        let db = Db::open(&StateStore::Sqlite { path: dir.join("state.db") }).await.unwrap();
        let clock = Arc::new(ManualClock::new(t("2025-12-31T00:00:00Z")));
        // Every checkpoint is also written to a witness folder beside the ledger.
        let ledger =
            Ledger::open(db, key, clock.clone()).await.unwrap().with_witness(witness(dir).await).await.unwrap();
        Self { clock, ledger, next_saga: 0 }
    }

    async fn at(&self, time: &str, kind: &str, subject: &str, outcome: Outcome, details: serde_json::Value) {
        let now = self.clock.now();
        let then = t(time);
        assert!(then >= now, "events in order: {time}");
        self.clock.advance(then - now);
        self.ledger.append(NewRecord { kind: kind.into(), subject: subject.into(), outcome, details }).await.unwrap();
    }

    /// A saga of `area` on `subject`: started and ended at `time`, rolled back with `failed`.
    async fn saga(
        &mut self,
        area: &str,
        subject: &str,
        time: &str,
        failed: Option<(&str, &str)>,
        data: serde_json::Value,
    ) {
        self.next_saga += 1;
        let saga = format!("saga-{}", self.next_saga);
        let step = json!({ "saga": saga, "step": "work", "phase": "act", "data": data });
        self.at(
            time,
            &format!("{area}.started"),
            subject,
            Outcome::Started,
            json!({ "saga": saga, "step": "saga", "phase": "started", "data": data }),
        )
        .await;
        self.at(time, &format!("{area}.step"), subject, Outcome::Started, step.clone()).await;
        match failed {
            None => {
                self.at(time, &format!("{area}.step"), subject, Outcome::Succeeded, step).await;
                self.at(
                    time,
                    &format!("{area}.finished"),
                    subject,
                    Outcome::Succeeded,
                    json!({ "saga": saga, "step": "saga", "phase": "finished", "data": data }),
                )
                .await;
            }
            Some((failed_step, error)) => {
                self.at(
                    time,
                    &format!("{area}.rolled_back"),
                    subject,
                    Outcome::Failed,
                    json!({
                        "saga": saga, "step": "saga", "phase": "rolled_back", "data": data,
                        "detail": { "step": failed_step, "error": error },
                    }),
                )
                .await;
            }
        }
    }

    async fn backup(&mut self, written: &str, snapshot: &str, id: &str, verified: bool) {
        self.saga("backup", "orders", written, None, json!({ "set": "orders", "backup_id": id })).await;
        self.at(
            written,
            "backup.written",
            "orders",
            Outcome::Succeeded,
            json!({
                "backup_id": id, "snapshot_time": snapshot, "encryption": "AES-256-GCM STREAM",
                "key_service": "local", "key_id": "k1",
            }),
        )
        .await;
        let outcome = if verified { Outcome::Succeeded } else { Outcome::Failed };
        self.at(written, "backup.verified", "orders", outcome, json!({ "backup_id": id })).await;
    }

    async fn drill(&mut self, time: &str, rto: f64, passed: bool, reasons: &[&str]) {
        self.next_saga += 1;
        let saga = format!("saga-{}", self.next_saga);
        let data = json!({
            "drill": "orders-drill", "backup_set": "orders", "started_at": time,
            "rpo_target_secs": 7200, "rto_target_secs": 3600, "runbook": "docs/runbooks/orders.md",
            "checks": [
                { "name": "row_counts", "passed": true, "detail": "3 tables" },
                { "name": "amcheck", "passed": true, "detail": "ok" },
                { "name": "assertion 1", "passed": true, "detail": "1" },
            ],
            "rpo_secs": 4200, "rto_secs": rto,
            "verdict": { "passed": passed, "reasons": reasons },
        });
        self.at(
            time,
            "drill.started",
            "orders-drill",
            Outcome::Started,
            json!({ "saga": saga, "step": "saga", "phase": "started", "data": {} }),
        )
        .await;
        self.at(
            time,
            "drill.finished",
            "orders-drill",
            Outcome::Succeeded,
            json!({ "saga": saga, "step": "saga", "phase": "finished", "data": data }),
        )
        .await;
    }
}

fn policy() -> Policy {
    let secret = |name: &str, days: u64| SecretPolicy {
        name: name.into(),
        kind: "postgres_password".into(),
        store: "vault_kv".into(),
        strategy: "single_user".into(),
        cadence_secs: days * 86_400,
    };
    Policy {
        secrets: vec![secret("api", 3), secret("db", 4)],
        backup_sets: vec![BackupPolicy {
            name: "orders".into(),
            method: "dump".into(),
            schedule: "0 0 6 * * *".into(),
            retention: "keep last 7".into(),
            rpo_target_secs: 3600,
        }],
        drills: vec![DrillPolicy {
            name: "orders-drill".into(),
            backup_set: "orders".into(),
            schedule: None,
            rpo_target_secs: 7200,
            rto_target_secs: 3600,
        }],
    }
}

fn period() -> Period {
    Period::new(t("2026-01-01T00:00:00Z"), t("2026-01-11T00:00:00Z")).unwrap()
}

/// The known events: rotations on time and late, a failed and recovered rotation and backup,
/// a failed verification, a drill within its RTO and one over it.
async fn known_ledger(dir: &std::path::Path, key: LedgerKey) -> Events {
    let mut e = Events::new(dir, key).await;
    let db = json!({ "strategy": "single_user", "target": "main", "user": "app" });
    // Before the period: not counted (the fence before it).
    e.saga("rotation", "db", "2025-12-31T12:00:00Z", None, db.clone()).await;
    e.backup("2026-01-01T06:00:00Z", "2026-01-01T05:50:00Z", "b1", true).await;
    e.saga("rotation", "api", "2026-01-01T12:00:00Z", None, json!({})).await;
    e.saga("rotation", "db", "2026-01-02T00:00:00Z", None, db.clone()).await;
    e.backup("2026-01-03T06:00:00Z", "2026-01-03T05:50:00Z", "b2", true).await;
    e.drill("2026-01-03T07:00:00Z", 300.5, true, &[]).await;
    e.saga("rotation", "api", "2026-01-04T06:00:00Z", Some(("issue", "issuer unavailable")), json!({})).await;
    e.saga("rotation", "db", "2026-01-05T00:00:00Z", None, db.clone()).await;
    e.saga(
        "backup",
        "orders",
        "2026-01-05T06:00:00Z",
        Some(("write", "bucket unreachable")),
        json!({ "set": "orders" }),
    )
    .await;
    e.backup("2026-01-05T07:00:00Z", "2026-01-05T06:50:00Z", "b3", false).await;
    e.saga("rotation", "api", "2026-01-06T00:00:00Z", None, json!({})).await;
    e.saga("rotation", "db", "2026-01-08T00:00:00Z", None, db.clone()).await;
    e.backup("2026-01-08T06:00:00Z", "2026-01-08T05:50:00Z", "b4", true).await;
    e.at("2026-01-08T06:00:00Z", "backup.pruned", "orders", Outcome::Succeeded, json!({ "backup_id": "b1" })).await;
    e.drill("2026-01-09T07:00:00Z", 4000.0, false, &["RTO 1h 6m 40s is over the 1h target"]).await;
    e.saga("rotation", "db", "2026-01-10T12:00:00Z", None, db).await;
    // After the period: the fence after it.
    e.at("2026-01-11T00:00:01Z", "manual.note", "ops", Outcome::Info, json!({})).await;
    e
}

async fn witness(dir: &std::path::Path) -> Box<dyn vigil::objects::ObjectStore> {
    let settings = vigil::objects::Settings::Local { path: dir.join("witness") };
    vigil::objects::connect(&settings, None).await.unwrap()
}

async fn export_known(dir: &std::path::Path, key: LedgerKey) -> (Report, std::path::PathBuf, NoteVerifier, Events) {
    let events = known_ledger(dir, key).await;
    let verifier = events.ledger.verifier();
    let out = dir.join("out");
    let witness = witness(dir).await;
    let exported = export(
        &events.ledger,
        Some(witness.as_ref()),
        policy(),
        period(),
        "2026-01-12T00:00:00Z".into(),
        &out,
        &Format::ALL,
    )
    .await
    .unwrap();
    assert_eq!(exported.witness_copies, 1);
    (exported.report, exported.bundle, verifier, events)
}

#[tokio::test]
async fn the_reports_numbers_are_exactly_those_of_the_known_events() {
    let dir = tempfile::tempdir().unwrap();
    let (report, _, _, _) = export_known(dir.path(), LedgerKey::generate("vigil/test")).await;

    let api = &report.rotation[0];
    assert_eq!((api.name.as_str(), api.succeeded, api.failed, api.late), ("api", 2, 1, 1));
    // Jan 6 to the period's end, 5 days; its cadence is 3 days, so 2 days overdue.
    assert_eq!(api.longest_interval_secs, 5 * 86_400);
    assert_eq!(api.overdue_secs, 2 * 86_400);
    assert_eq!(api.failures.len(), 1);
    assert_eq!(api.failures[0].step, "issue");
    assert_eq!(api.failures[0].reason, "issuer unavailable");
    let cleared_by = api.rotations.iter().find(|r| r.ended_at.as_deref() == Some("2026-01-06T00:00:00.000000Z"));
    assert_eq!(api.failures[0].resolved_by, cleared_by.and_then(|r| r.ended_seq));
    assert!(api.failures[0].resolved_by.is_some());

    let db = &report.rotation[1];
    assert_eq!((db.name.as_str(), db.succeeded, db.failed, db.late), ("db", 4, 0, 0));
    assert_eq!(db.longest_interval_secs, 3 * 86_400);
    assert_eq!(db.overdue_secs, 0);

    let orders = &report.backups[0];
    assert_eq!((orders.runs, orders.succeeded, orders.failed), (5, 4, 1));
    assert_eq!(orders.success_rate, Some(0.8));
    assert_eq!((orders.written, orders.verified, orders.verification_failed), (4, 3, 1));
    assert_eq!(orders.verification_rate, Some(0.75));
    assert_eq!(orders.pruned, 1);
    assert_eq!(orders.newest_verified.as_ref().map(|v| v.backup_id.as_str()), Some("b4"));
    assert_eq!(orders.encryption.len(), 1);
    assert_eq!(orders.encryption[0].algorithm, "AES-256-GCM STREAM");
    assert_eq!(orders.failures[0].reason, "bucket unreachable");
    assert!(orders.failures[0].resolved_by.is_some());
    // The oldest recovery point: Jan 5 06:50 (b3) until b4 on Jan 8 06:00, 71h10m.
    let exposure = &orders.rpo_exposure;
    assert_eq!(exposure.max_secs, 71 * 3600 + 600);
    // 5% of 10 days is 12 h: the ages above 62h40m last exactly that long (30,600 s of the
    // b3 stretch and 12,600 s of the last one).
    assert_eq!(exposure.p95_secs, 225_600);
    assert_eq!(exposure.over_target_secs, 848_400);
    assert_eq!(exposure.chart.len(), 96);

    assert_eq!((report.drills.passed, report.drills.failed), (1, 1));
    assert_eq!(report.drills.pass_rate, Some(0.5));
    let missed = &report.drills.runs[1];
    assert_eq!(
        (missed.rto_secs, missed.rto_target_secs, missed.checks_run, missed.checks_passed),
        (Some(4000.0), 3600, 3, 3)
    );
    assert!(!missed.passed);

    let exceptions: Vec<(&str, &str)> =
        report.exceptions.iter().map(|e| (e.subject.as_str(), e.what.split(' ').next().unwrap())).collect();
    assert_eq!(
        exceptions,
        [
            ("api", "rotated"),
            ("api", "overdue"),
            ("api", "rotation"),
            ("orders", "backup"),
            ("orders", "1"),
            ("orders", "recovery"),
            ("orders-drill", "drill"),
        ],
        "{:#?}",
        report.exceptions
    );
    assert!(report.exceptions.iter().all(|e| !e.records.is_empty()));
    // The records before and after the period are not counted.
    assert_eq!(report.integrity.first_seq + report.records - 1, report.integrity.last_seq);
    let ia5 = report.controls.iter().find(|c| c.id == "IA-5").unwrap();
    assert_eq!(ia5.exceptions, 3);
}

#[tokio::test]
async fn an_intact_bundle_verifies_with_the_pinned_key_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (report, bundle, vkey, _) = export_known(dir.path(), LedgerKey::generate("vigil/test")).await;
    let verified = verify_bundle(std::fs::File::open(&bundle).unwrap(), &vkey).unwrap();
    assert_eq!((verified.first_seq, verified.last_seq), (report.integrity.first_seq, report.integrity.last_seq));
    assert!(verified.numbers > 100, "{} numbers", verified.numbers);
    // The loose files are the bundle's.
    let html = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
    assert!(html.contains("<section id=\"drills\">") && html.contains("<svg"));
    assert!(!dir.path().join("out/.records.jsonl.partial").exists());
}

/// The bundle's files, in order.
fn unpack(bundle: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (path, bytes)
        })
        .collect()
}

/// The bundle with `path` edited, the manifest's hash of it updated and the manifest signed
/// again with the ledger's key: a forger who got that far, so that the checks behind the
/// manifest's signature are the ones tested.
fn forge(ledger: &Ledger, files: &[(String, Vec<u8>)], path: &str, edit: &dyn Fn(&mut Vec<u8>)) -> Vec<u8> {
    use sha2::Digest as _;
    let mut files = files.to_vec();
    let at = files.iter().position(|(p, _)| p == path).unwrap_or_else(|| panic!("{path} in the bundle"));
    let before = files[at].1.clone();
    edit(&mut files[at].1);
    assert_ne!(before, files[at].1, "the edit changed {path}");
    let mut manifest: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    for entry in manifest["files"].as_array_mut().unwrap() {
        if entry["path"] == path {
            entry["sha256"] = hex::encode(sha2::Sha256::digest(&files[at].1)).into();
            entry["bytes"] = files[at].1.len().into();
        }
    }
    files[0].1 = serde_json::to_vec_pretty(&manifest).unwrap();
    assert_eq!(files[1].0, "manifest.note");
    files[1].1 = ledger.sign_manifest(&sha2::Sha256::digest(&files[0].1).into()).into_bytes();
    pack(&files)
}

fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes.as_slice()).unwrap();
    }
    tar.into_inner().unwrap()
}

fn replace(from: &str, to: &str) -> impl Fn(&mut Vec<u8>) {
    let (from, to) = (from.to_owned(), to.to_owned());
    move |bytes| {
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(&from), "{from:?} is there to replace");
        *bytes = text.replacen(&from, &to, 1).into_bytes();
    }
}

fn failure(bundle: &[u8], vkey: &NoteVerifier) -> String {
    match verify_bundle(bundle, vkey) {
        Ok(verified) => panic!("the forged bundle verified: {verified:?}"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test]
async fn any_edit_to_a_bundle_fails_verification_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (report, bundle, vkey, events) = export_known(dir.path(), LedgerKey::generate("vigil/test")).await;
    let files = unpack(&bundle);
    let forge =
        |files: &[(String, Vec<u8>)], path: &str, edit: &dyn Fn(&mut Vec<u8>)| forge(&events.ledger, files, path, edit);

    // A record's contents.
    let why = failure(&forge(&files, "records.jsonl", &replace("bucket unreachable", "bucket reachable")), &vkey);
    assert!(why.contains("was changed: its contents do not give its hash"), "{why}");

    // A record's contents and its hash recomputed: the next record's link breaks.
    let records = String::from_utf8(files.iter().find(|(p, _)| p == "records.jsonl").unwrap().1.clone()).unwrap();
    let lines: Vec<&str> = records.lines().collect();
    let seq_of_failure = lines.iter().position(|l| l.contains("bucket unreachable")).unwrap();
    let forged_records = rehash_line(&lines, seq_of_failure, "bucket unreachable", "bucket reachable");
    let why = failure(&forge(&files, "records.jsonl", &|b| *b = forged_records.clone().into_bytes()), &vkey);
    assert!(why.contains("does not link to record"), "{why}");

    // The period's last record left out.
    let shortened: String = lines.iter().take(lines.len() - 2).chain(lines.last()).map(|l| format!("{l}\n")).collect();
    let why = failure(&forge(&files, "records.jsonl", &|b| *b = shortened.clone().into_bytes()), &vkey);
    assert!(why.contains("is missing"), "{why}");

    // A number in the JSON report.
    let overdue = format!("\"overdue_secs\": {}", report.rotation[0].overdue_secs);
    let why = failure(&forge(&files, "report/report.json", &replace(&overdue, "\"overdue_secs\": 0")), &vkey);
    assert!(why.contains("report/report.json: /rotation/0/overdue_secs is 0; the records give 172800"), "{why}");

    // One byte of the HTML.
    let why = failure(&forge(&files, "report/report.html", &replace("Exceptions", "Exceptionz")), &vkey);
    assert!(why.contains("report/report.html does not match the report its records give"), "{why}");

    // One byte of a CSV file.
    let why = failure(&forge(&files, "report/csv/backups.csv", &replace("0.75", "0.95")), &vkey);
    assert!(why.contains("report/csv/backups.csv does not match"), "{why}");

    // The witness's copy of the checkpoint.
    let why = failure(&forge(&files, "witness/checkpoint.note", &|b| b.extend_from_slice(b"\n")), &vkey);
    assert!(why.contains("witness/checkpoint.note differs from the checkpoint"), "{why}");

    // A file edited without the manifest: named by its hash.
    let mut careless = files.clone();
    let html = careless.iter_mut().find(|(p, _)| p == "report/report.html").unwrap();
    html.1[100] ^= 1;
    let why = failure(&pack(&careless), &vkey);
    assert!(why.contains("report/report.html was changed: its SHA-256"), "{why}");

    // The same bundle checked against another key.
    let other = LedgerKey::generate("vigil/test").verifier();
    let why = failure(&pack(&files), &other);
    assert!(why.contains("not signed by the pinned key"), "{why}");
}

#[tokio::test]
async fn a_bundle_signed_by_another_key_fails_against_the_pinned_one() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = LedgerKey::generate("vigil/test").verifier();
    let (_, bundle, theirs, _) = export_known(dir.path(), LedgerKey::generate("vigil/test")).await;
    assert!(verify_bundle(std::fs::File::open(&bundle).unwrap(), &theirs).is_ok());
    let err = verify_bundle(std::fs::File::open(&bundle).unwrap(), &pinned).unwrap_err();
    assert!(matches!(err, BundleError::Mismatch(ref why) if why.contains("not signed by the pinned key")), "{err}");
}

/// `lines` with line `at` edited and its hash recomputed, as a forger without the key would.
fn rehash_line(lines: &[&str], at: usize, from: &str, to: &str) -> String {
    let mut record: serde_json::Value = serde_json::from_str(&lines[at].replacen(from, to, 1)).unwrap();
    let text = |key: &str| record[key].as_str().unwrap().to_owned();
    let prev: [u8; 32] = hex::decode(text("prev_hash")).unwrap().try_into().unwrap();
    let hash = [0u8; 32];
    let (time, kind, subject, outcome, details) =
        (text("time"), text("kind"), text("subject"), text("outcome"), text("details"));
    let (host, version) =
        (record["actor"]["host"].as_str().unwrap().to_owned(), record["actor"]["version"].as_str().unwrap().to_owned());
    let r = vigil::evidence::RecordRef {
        seq: record["seq"].as_u64().unwrap(),
        time: &time,
        kind: &kind,
        subject: &subject,
        actor_host: &host,
        actor_pid: record["actor"]["pid"].as_u64().unwrap() as u32,
        actor_version: &version,
        outcome: &outcome,
        details: &details,
        prev_hash: &prev,
        hash: &hash,
    };
    let (computed, _) = r.hashes(&mut Vec::new());
    record["hash"] = hex::encode(computed).into();
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i == at { format!("{}\n", serde_json::to_string(&record).unwrap()) } else { format!("{l}\n") })
        .collect()
}

/// A controller configuration over the ledger in `dir` (`state.db`, key `evidence.key`), no
/// schedules: the policy is empty and the report lists what the records show.
fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("schedules")).unwrap();
    let config = dir.join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[controller]\ndata_dir = \"data\"\n\n[evidence]\nurl = \"sqlite://{}\"\nsigning_key = \"{}\"\n",
            dir.join("state.db").display(),
            dir.join("evidence.key").display()
        ),
    )
    .unwrap();
    config
}

/// The known ledger with its key saved where the configuration names it.
async fn known_ledger_with_config(dir: &std::path::Path) -> (std::path::PathBuf, Events) {
    let key = LedgerKey::generate("vigil/report-test");
    key.save(&dir.join("evidence.key")).unwrap();
    let events = known_ledger(dir, key).await;
    (write_config(dir), events)
}

#[tokio::test]
async fn an_auditor_verifies_a_bundle_offline_and_two_reports_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let (config, events) = known_ledger_with_config(dir.path()).await;
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| crate::support::vigil(dir.path(), args);

    let exported = run(&[
        "--config",
        config,
        "--output",
        "json",
        "report",
        "export",
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-11",
        "--out",
        "q1",
    ]);
    exported.assert_code(0);
    let shown = exported.json();
    // No schedules, so no cadence: the failures, the verification, the exposure over the default
    // 15-minute target and the drill, but no late or overdue rotation.
    assert_eq!(shown["exceptions"], 5, "{shown}");
    for file in ["q1/report.html", "q1/report.json", "q1/oscal.json", "q1/csv/drills.csv", "q1/bundle.tar"] {
        assert!(dir.path().join(file).is_file(), "{file} written");
    }
    // The export is recorded, naming its bundle by the manifest's hash.
    let recorded = run(&["--config", config, "--output", "json", "evidence", "list", "--kind", "report.exported"]);
    let recorded = recorded.assert_code(0).json();
    let details: serde_json::Value = serde_json::from_str(recorded[0]["details"].as_str().unwrap()).unwrap();
    let manifest = unpack(&dir.path().join("q1/bundle.tar")).remove(0);
    assert_eq!(manifest.0, "manifest.json");
    use sha2::Digest as _;
    assert_eq!(details["manifest_sha256"], hex::encode(sha2::Sha256::digest(&manifest.1)));
    assert_eq!((details["from"].as_str(), details["exceptions"].as_u64()), (Some("2026-01-01T00:00:00Z"), Some(5)));
    let vkey = run(&["--config", config, "evidence", "pubkey", "--vkey"]).assert_code(0).stdout();
    std::fs::write(dir.path().join("vigil.vkey"), &vkey).unwrap();

    // The auditor's machine: no configuration, no database; the key pinned.
    let auditor = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("q1/bundle.tar"), auditor.path().join("bundle.tar")).unwrap();
    std::fs::copy(dir.path().join("vigil.vkey"), auditor.path().join("vigil.vkey")).unwrap();
    let offline = |args: &[&str]| crate::support::vigil(auditor.path(), args);
    let verified = offline(&["evidence", "verify", "--bundle", "bundle.tar", "--vkey-file", "vigil.vkey"]);
    verified.assert_code(0);
    assert!(verified.stdout().contains("ok: the bundle verifies"), "{}", verified.stdout());
    let unpinned = offline(&["evidence", "verify", "--bundle", "bundle.tar"]);
    assert_eq!(unpinned.code(), 1);
    assert!(unpinned.stderr().contains("give --vkey or --vkey-file"), "{}", unpinned.stderr());

    // One byte of the HTML changed in the archive.
    let mut bytes = std::fs::read(auditor.path().join("bundle.tar")).unwrap();
    let at = bytes.windows(15).position(|w| w == b"<h2>Backups</h2").unwrap();
    bytes[at + 4] = b'b';
    std::fs::write(auditor.path().join("edited.tar"), &bytes).unwrap();
    let edited = offline(&["evidence", "verify", "--bundle", "edited.tar", "--vkey-file", "vigil.vkey"]);
    assert_eq!(edited.code(), 1);
    assert!(edited.stderr().contains("report/report.html was changed"), "{}", edited.stderr());

    // A quarter later: the log only grew.
    events.at("2026-02-01T00:00:00Z", "manual.note", "ops", Outcome::Info, json!({ "n": 2 })).await;
    events.ledger.db().close().await;
    run(&["--config", config, "report", "export", "--from", "2026-01-11", "--to", "2026-02-02", "--out", "q2"])
        .assert_code(0);
    let proof = run(&[
        "--config",
        config,
        "--output",
        "json",
        "evidence",
        "consistency",
        "q1/bundle.tar",
        "q2/bundle.tar",
        "--vkey-file",
        "vigil.vkey",
    ]);
    proof.assert_code(0);
    std::fs::write(auditor.path().join("q1-q2.json"), proof.stdout()).unwrap();
    std::fs::copy(dir.path().join("q2/bundle.tar"), auditor.path().join("q2.tar")).unwrap();
    let checked = offline(&[
        "evidence",
        "consistency",
        "bundle.tar",
        "q2.tar",
        "--vkey-file",
        "vigil.vkey",
        "--proof",
        "q1-q2.json",
    ]);
    checked.assert_code(0);
    assert!(checked.stdout().contains("extends the log of"), "{}", checked.stdout());

    // A history rewritten with the same key: another ledger, its records different.
    let forked = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("evidence.key"), forked.path().join("evidence.key")).unwrap();
    let key = LedgerKey::load(&forked.path().join("evidence.key")).unwrap();
    let mut fork = Events::new(forked.path(), key).await;
    for day in 1..=20 {
        fork.saga("rotation", "db", &format!("2026-01-{day:02}T00:00:00Z"), None, json!({})).await;
    }
    fork.ledger.db().close().await;
    let fork_config = write_config(forked.path());
    let fork_config = fork_config.to_str().unwrap();
    crate::support::vigil(
        forked.path(),
        &[
            "--config",
            fork_config,
            "report",
            "export",
            "--from",
            "2026-01-01",
            "--to",
            "2026-02-01",
            "--out",
            "rewritten",
        ],
    )
    .assert_code(0);
    std::fs::copy(forked.path().join("rewritten/bundle.tar"), auditor.path().join("rewritten.tar")).unwrap();
    let rewritten = crate::support::vigil(
        forked.path(),
        &[
            "--config",
            fork_config,
            "evidence",
            "consistency",
            auditor.path().join("bundle.tar").to_str().unwrap(),
            "rewritten/bundle.tar",
        ],
    );
    assert_eq!(rewritten.code(), 1, "{}", rewritten.all_output());
    assert!(rewritten.stderr().contains("history was rewritten"), "{}", rewritten.stderr());
}

/// The bundle exported from the known ledger, for the tools below.
async fn exported_known(dir: &std::path::Path) -> std::path::PathBuf {
    let (_, bundle, _, _) = export_known(dir, LedgerKey::generate("vigil/test")).await;
    bundle.parent().unwrap().to_owned()
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn the_html_report_renders_in_headless_chromium_with_its_sections_and_charts() {
    let services = crate::support::Services::load();
    let dir = tempfile::tempdir().unwrap();
    let out = exported_known(dir.path()).await;
    let html = out.join("report.html");
    let url = format!("file://{}", html.display());
    let chromium = |extra: &[&str]| {
        let output = std::process::Command::new(&services.report_tools.chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0"])
            .arg(format!("--user-data-dir={}", dir.path().join("chromium").display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("run chromium");
        assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
        output
    };
    // The DOM as the browser built it.
    let dom = chromium(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    for section in ["summary", "rotation", "backups", "drills", "exceptions", "controls", "integrity"] {
        assert!(dom.contains(&format!("<section id=\"{section}\">")), "section {section} rendered");
    }
    assert!(dom.matches("<svg").count() >= 3, "the rotation, exposure and drill charts rendered");
    assert!(dom.contains("class=\"tick\"") && dom.contains("class=\"bar\"") && dom.contains("class=\"target\""));
    // A screenshot, kept where the note can point at it; and no console error.
    let shot = crate::support::repo_root().join("target/report-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let rendered =
        chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1280,2400", "--hide-scrollbars"]);
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot: {} bytes", png.len());
    let log = String::from_utf8_lossy(&rendered.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "the page logged to the console: {console:#?}");
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn the_oscal_document_passes_trestle_validate() {
    let services = crate::support::Services::load();
    let dir = tempfile::tempdir().unwrap();
    let out = exported_known(dir.path()).await;
    let workspace = dir.path().join("trestle");
    std::fs::create_dir_all(&workspace).unwrap();
    let trestle = |args: &[&str]| {
        std::process::Command::new(&services.report_tools.trestle)
            .args(args)
            .current_dir(&workspace)
            .output()
            .expect("run trestle")
    };
    let init = trestle(&["init"]);
    assert!(init.status.success(), "trestle init: {}", String::from_utf8_lossy(&init.stderr));
    let model = workspace.join("assessment-results/vigil");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(out.join("oscal.json"), model.join("assessment-results.json")).unwrap();
    let validated = trestle(&["validate", "-f", "assessment-results/vigil/assessment-results.json"]);
    let said = format!("{}{}", String::from_utf8_lossy(&validated.stdout), String::from_utf8_lossy(&validated.stderr));
    assert!(validated.status.success() && said.contains("VALID"), "trestle validate: {said}");
    assert!(!said.contains("INVALID"), "trestle validate: {said}");
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn the_json_report_is_valid_against_its_documented_schema() {
    let services = crate::support::Services::load();
    let dir = tempfile::tempdir().unwrap();
    let out = exported_known(dir.path()).await;
    let schema = crate::support::repo_root().join("docs/report.schema.json");
    let check = std::process::Command::new(&services.report_tools.python)
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema.Draft202012Validator.check_schema(schema)\n\
             jsonschema.Draft202012Validator(schema).validate(json.load(open(sys.argv[2])))\n\
             print('valid')",
        ])
        .arg(&schema)
        .arg(out.join("report.json"))
        .output()
        .expect("run python");
    assert!(
        check.status.success(),
        "report.json against docs/report.schema.json: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[tokio::test]
async fn a_stuck_rotation_is_a_failure_until_a_later_one_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = Events::new(dir.path(), LedgerKey::generate("vigil/test")).await;
    let stuck = json!({ "saga": "saga-stuck", "step": "set", "phase": "undo", "data": {}, "detail": { "error": "admin login refused" } });
    e.at(
        "2026-01-02T00:00:00Z",
        "rotation.started",
        "db",
        Outcome::Started,
        json!({ "saga": "saga-stuck", "step": "saga", "phase": "started" }),
    )
    .await;
    e.at("2026-01-02T00:00:00Z", "rotation.step", "db", Outcome::Failed, stuck).await;
    e.saga("rotation", "db", "2026-01-03T00:00:00Z", None, json!({})).await;
    // An operator rolls the stuck one back later: still one failure.
    e.at("2026-01-04T00:00:00Z", "rotation.rolled_back", "db", Outcome::Failed, json!({
        "saga": "saga-stuck", "step": "saga", "phase": "rolled_back", "detail": { "step": "set", "error": "admin login refused" },
    }))
    .await;
    let exported = export(
        &e.ledger,
        None,
        policy(),
        period(),
        "2026-01-12T00:00:00Z".into(),
        &dir.path().join("out"),
        &Format::ALL,
    )
    .await
    .unwrap();
    let db = exported.report.rotation.iter().find(|s| s.name == "db").unwrap();
    assert_eq!((db.succeeded, db.failed), (1, 1));
    let failure = &db.failures[0];
    assert!(failure.stuck && failure.step == "set" && failure.reason == "admin login refused", "{failure:?}");
    assert!(failure.resolved_by.is_some());
    let what: Vec<&str> = exported.report.exceptions.iter().map(|e| e.what.as_str()).collect();
    assert!(what.iter().any(|w| w.starts_with("rotation stuck, needing an operator, at step set")), "{what:?}");
    assert!(verify_bundle(std::fs::File::open(&exported.bundle).unwrap(), &e.ledger.verifier()).is_ok());
}

/// `--from` and `--to` keep their fractions of a second: exactly the records between the two
/// instants are reported, none left out or let in by a cut to whole seconds.
#[tokio::test]
async fn sub_second_from_and_to_keep_the_records_inside_the_period() {
    let dir = tempfile::tempdir().unwrap();
    let key = LedgerKey::generate("vigil/report-test");
    key.save(&dir.path().join("evidence.key")).unwrap();
    let events = Events::new(dir.path(), key).await;
    // Records 2 to 5: one before the period, two inside it, one after.
    for time in ["2026-01-05T12:00:00.1Z", "2026-01-05T12:00:00.7Z", "2026-01-05T12:00:01.2Z", "2026-01-05T12:00:01.6Z"]
    {
        events.at(time, "manual.note", "ops", Outcome::Info, json!({ "at": time })).await;
    }
    events.ledger.db().close().await;
    let config = write_config(dir.path());
    let exported = crate::support::vigil(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--output",
            "json",
            "report",
            "export",
            "--from",
            "2026-01-05T12:00:00.6Z",
            "--to",
            "2026-01-05T12:00:01.5Z",
            "--out",
            "sub",
        ],
    );
    exported.assert_code(0);
    let shown = exported.json();
    assert_eq!((shown["first_seq"].as_u64(), shown["last_seq"].as_u64()), (Some(3), Some(4)), "{shown}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("sub/report.json")).unwrap()).unwrap();
    assert_eq!(report["period"], json!({ "from": "2026-01-05T12:00:00.600Z", "to": "2026-01-05T12:00:01.500Z" }));
    assert_eq!(report["records"], 2);
}

/// The finding: a bundle of a few kilobytes holding a 3 GiB sparse `records.jsonl` (its manifest
/// signed, as if the exporter itself had been fooled) made the verifier run out of memory. The
/// real binary refuses it, naming the sparse member, with a peak RSS under 64 MiB.
#[tokio::test]
async fn a_sparse_bundle_is_refused_by_the_binary_in_bounded_memory() {
    use sha2::Digest as _;
    const REAL: u64 = 3 << 30;
    let dir = tempfile::tempdir().unwrap();
    let (_, bundle, vkey, events) = export_known(dir.path(), LedgerKey::generate("vigil/test")).await;
    let mut files = unpack(&bundle);
    let mut manifest: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    for entry in manifest["files"].as_array_mut().unwrap() {
        if entry["path"] == "records.jsonl" {
            entry["bytes"] = REAL.into();
        }
    }
    files[0].1 = serde_json::to_vec_pretty(&manifest).unwrap();
    files[1].1 = events.ledger.sign_manifest(&sha2::Sha256::digest(&files[0].1).into()).into_bytes();
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_path(path).unwrap();
        header.set_mode(0o644);
        if path == "records.jsonl" {
            // All of it a hole but its last 512 bytes.
            header.set_entry_type(tar::EntryType::GNUSparse);
            header.set_size(512);
            let gnu = header.as_gnu_mut().unwrap();
            gnu.set_real_size(REAL);
            gnu.sparse[0].set_offset(REAL - 512);
            gnu.sparse[0].set_length(512);
            header.set_cksum();
            tar.append(&header, [b'\n'; 512].as_slice()).unwrap();
        } else {
            header.set_size(bytes.len() as u64);
            header.set_cksum();
            tar.append(&header, bytes.as_slice()).unwrap();
        }
    }
    let sparse = tar.into_inner().unwrap();
    assert!(sparse.len() < 1 << 20, "a small bundle: {} bytes", sparse.len());
    std::fs::write(dir.path().join("sparse.tar"), &sparse).unwrap();
    std::fs::write(dir.path().join("vigil.vkey"), vkey.vkey()).unwrap();

    let (code, stderr, peak_kib) =
        peak_rss(dir.path(), &["evidence", "verify", "--bundle", "sparse.tar", "--vkey-file", "vigil.vkey"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("records.jsonl is a sparse file; a bundle holds regular files only"), "{stderr}");
    assert!(peak_kib < 64 * 1024, "the verifier's peak RSS was {peak_kib} KiB");
}

/// Runs the real binary in `dir` and returns its exit code, its stderr and its peak RSS in KiB
/// (`wait4`'s `ru_maxrss` of that child alone). A child passing 1 GiB is killed, so a verifier
/// that expands what it reads fails this test rather than the machine.
#[expect(clippy::zombie_processes, reason = "the child is reaped by wait4, which also gives its peak RSS")]
fn peak_rss(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, i64) {
    let stderr_path = dir.join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .current_dir(dir)
        .env_remove("VIGIL_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    loop {
        // SAFETY: `pid` is this test's own child, not yet reaped; status and usage are ours.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(reaped >= 0, "wait4: {}", std::io::Error::last_os_error());
        if reaped == pid {
            break;
        }
        // Until reaped, the pid is still this child's: reading and killing it is safe.
        let hwm = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib: i64 = hwm
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        if kib > 1 << 20 {
            let _ = child.kill();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, std::fs::read_to_string(&stderr_path).unwrap(), usage.ru_maxrss)
}
