//! API-key rotation against a real issuer on loopback, in both stores: the old key keeps
//! working through the overlap window and stops after it; a restart during the window neither
//! loses the retire step nor runs it early (an injected clock crosses the window).

use std::sync::Arc;

use chrono::DateTime;
use tokio_util::sync::CancellationToken;
use vigil::clock::{Clock, ManualClock};
use vigil::context::Ctx;
use vigil::evidence::{Ledger, LedgerKey};
use vigil::rotation::Rotator;
use vigil::saga::Ended;
use vigil::state::Db;
use vigil::stores::SecretStore;

use crate::support::issuer::Issuer;
use crate::support::{Services, Store, unique, vigil};

struct KeyCell {
    dir: tempfile::TempDir,
    name: String,
    path: String,
    store: Box<dyn SecretStore>,
}

async fn cell(services: &Services, issuer: &Issuer, store: Store) -> KeyCell {
    let dir = tempfile::tempdir().unwrap();
    let (id, secret) = issuer.issue_first();
    let path = unique("vigil/key");
    let value = serde_json::json!({ "id": id, "key": secret });
    let secret_store = services.seed(store, dir.path(), &path, &value).await;
    let file = |r: &vigil::secret::SecretRef| match r {
        vigil::secret::SecretRef::File { path } => path.display().to_string(),
        _ => unreachable!(),
    };
    let admin_token = crate::support::secret_file(dir.path(), "issuer-token", &issuer.admin);
    let name = unique("partner-key");
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    std::fs::write(
        dir.path().join("schedules/keys.toml"),
        format!(
            "[secrets.{name}]\nkind = \"api_key\"\nstore = \"{}\"\npath = \"{path}\"\noverlap = \"24h\"\n\
             issuer = {{ url = \"{}\", token = {{ file = \"{}\" }} }}\n",
            store.config_name(),
            issuer.url,
            file(&admin_token)
        ),
    )
    .unwrap();
    services.write_controller_config(dir.path());
    KeyCell { dir, name, path, store: secret_store }
}

async fn current_key(cell: &KeyCell) -> String {
    let stored = cell.store.current(&cell.path).await.unwrap();
    let value: serde_json::Value = serde_json::from_str(secrecy::ExposeSecret::expose_secret(&stored.value)).unwrap();
    value["key"].as_str().unwrap().to_owned()
}

async fn overlap_then_retire(store: Store) {
    let services = Services::load();
    let issuer = Issuer::start().await;
    let cell = cell(&services, &issuer, store).await;
    let old = current_key(&cell).await;
    let plan = vigil::config::load(&cell.dir.path().join("vigil.toml")).unwrap().plan;
    let clock = Arc::new(ManualClock::new(DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().to_utc()));
    let db = Db::open(&plan.evidence.store).await.unwrap();
    let key_path = cell.dir.path().join("ledger.key");
    LedgerKey::generate("vigil/keys").save(&key_path).unwrap();

    {
        let ledger = Ledger::open(db.clone(), LedgerKey::load(&key_path).unwrap(), clock.clone()).await.unwrap();
        let rotator = Rotator::new(Ctx::new(&plan, &db, &ledger, clock.as_ref(), CancellationToken::new()));
        let report = rotator.rotate(&cell.name, false).await.unwrap();
        assert_eq!(report.ended, Ended::Waiting { step: "retire".into(), until: "2026-11-25T10:00:00Z".into() });
    }
    let new = current_key(&cell).await;
    assert_ne!(new, old);
    assert!(issuer.accepts(&old) && issuer.accepts(&new), "both keys work through the overlap");
    assert!(cell.store.pending(&cell.path).await.unwrap().is_none());

    // A restart inside the window (a new ledger and rotator, as a new process would have):
    // the retire step is still there and does not run early.
    clock.advance(chrono::Duration::hours(23));
    {
        let ledger = Ledger::open(db.clone(), LedgerKey::load(&key_path).unwrap(), clock.clone()).await.unwrap();
        let rotator = Rotator::new(Ctx::new(&plan, &db, &ledger, clock.as_ref(), CancellationToken::new()));
        let resumed = rotator.resume().await.unwrap();
        assert_eq!(resumed.len(), 1);
        assert!(matches!(resumed[0].ended, Ended::Waiting { .. }), "{:?}", resumed[0].ended);
        assert!(issuer.accepts(&old), "not retired early");
    }

    clock.advance(chrono::Duration::hours(2));
    let ledger = Ledger::open(db.clone(), LedgerKey::load(&key_path).unwrap(), clock.clone()).await.unwrap();
    let rotator = Rotator::new(Ctx::new(&plan, &db, &ledger, clock.as_ref(), CancellationToken::new()));
    let resumed = rotator.resume().await.unwrap();
    assert_eq!(resumed[0].ended, Ended::Done);
    assert!(!issuer.accepts(&old), "the old key is revoked after the overlap");
    assert!(issuer.accepts(&new));
    assert!(rotator.resume().await.unwrap().is_empty(), "nothing left in flight");
    let status = vigil::rotation::status::load(&db, &cell.name).await.unwrap();
    assert_eq!(
        status.last_rotated_at(),
        Some(DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().to_utc()),
        "the cadence runs from when the new key became current, not from the retirement"
    );

    let report = vigil::evidence::verify(&db, vigil::evidence::Trust::Genesis).await.unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
    let records =
        vigil::evidence::list(&db, &vigil::evidence::RecordFilter { limit: 1000, ..Default::default() }).await.unwrap();
    let text = serde_json::to_string(&records).unwrap();
    for secret in issuer.all_secrets() {
        assert!(!text.contains(&secret), "a key secret reached the evidence");
    }
    assert!(clock.now() > DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z").unwrap().to_utc());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn api_keys_in_aws_overlap_then_retire() {
    overlap_then_retire(Store::Aws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn api_keys_in_vault_overlap_then_retire() {
    overlap_then_retire(Store::Vault).await;
}

/// Through the real binary: the rotation waits at retire, status shows it in flight, and no
/// key secret reaches the output at TRACE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn the_command_rotates_a_key_and_waits_to_retire_the_old_one() {
    let services = Services::load();
    let issuer = Issuer::start().await;
    let cell = cell(&services, &issuer, Store::Vault).await;
    let config = cell.dir.path().join("vigil.toml");
    let dir = cell.dir.path().to_owned();
    let name = cell.name.clone();
    let (rotated, status) = tokio::task::spawn_blocking(move || {
        let cfg = config.to_str().unwrap();
        let rotated = vigil(&dir, &["--config", cfg, "--output", "json", "-vvv", "rotate", &name]);
        let status = vigil(&dir, &["--config", cfg, "--output", "json", "status"]);
        (rotated, status)
    })
    .await
    .unwrap();
    rotated.assert_code(0);
    assert_eq!(rotated.json()["rotations"][0]["outcome"], "waiting", "{}", rotated.stdout());
    let status = status.json();
    assert!(status["secrets"][0]["in_flight"].as_str().unwrap().contains("retire"), "{status}");
    for secret in issuer.all_secrets() {
        assert!(!rotated.all_output().contains(&secret), "a key secret reached the output");
    }
}

/// The daemon rotates a never-rotated key and retires the old one when the overlap ends, with
/// nobody running `--resume`: `vigil run --once` inside the window leaves it waiting, the first
/// one after the window retires it, and the next finds nothing to do for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn the_daemon_retires_the_old_key_when_the_overlap_ends() {
    let services = Services::load();
    let issuer = Issuer::start().await;
    let cell = cell(&services, &issuer, Store::Vault).await;
    let old = current_key(&cell).await;
    let config = cell.dir.path().join("vigil.toml");
    let plan = || vigil::config::load(&config).unwrap().plan;
    let clock = Arc::new(ManualClock::new(DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().to_utc()));
    let db = Db::open(&plan().evidence.store).await.unwrap();
    let key_path = cell.dir.path().join("ledger.key");
    LedgerKey::generate("vigil/keys").save(&key_path).unwrap();
    let ledger = Ledger::open(db.clone(), LedgerKey::load(&key_path).unwrap(), clock.clone()).await.unwrap();
    let once = || {
        let options = vigil::daemon::Options { once: true };
        vigil::daemon::run(plan(), db.clone(), &ledger, clock.clone(), CancellationToken::new(), options)
    };
    let job = format!("rotate:{}", cell.name);
    // A wait that came due while no daemon ran is the start's catch-up's to resume.
    let outcome = |summary: &vigil::daemon::Summary, job: &str| {
        summary.resumed.iter().chain(&summary.ran).find(|r| r.job == job).map(|r| (r.ok, r.outcome.clone()))
    };
    let resumed = format!("resume:secret:{}", cell.name);

    let first = once().await.unwrap();
    let (ok, said) = outcome(&first, &job).unwrap_or_else(|| panic!("{first:?}"));
    assert!(ok && said.contains("waiting to retire until 2026-11-25T10:00:00Z"), "{said}");
    let new = current_key(&cell).await;
    assert!(issuer.accepts(&old) && issuer.accepts(&new), "both keys work through the overlap");

    clock.advance(chrono::Duration::hours(23));
    let inside = once().await.unwrap();
    assert!(outcome(&inside, &job).is_none(), "not due again: {inside:?}");
    let (ok, said) = outcome(&inside, &resumed).unwrap();
    assert!(ok && said.starts_with("waiting to retire"), "{said}");
    assert!(issuer.accepts(&old), "not retired early");

    clock.advance(chrono::Duration::hours(2));
    let after = once().await.unwrap();
    assert_eq!(outcome(&after, &resumed), Some((true, "done".to_owned())), "{after:?}");
    assert!(!issuer.accepts(&old), "the old key is revoked after the overlap");
    assert!(issuer.accepts(&new));

    clock.advance(chrono::Duration::hours(1));
    let idle = once().await.unwrap();
    assert!(outcome(&idle, &job).is_none() && outcome(&idle, &resumed).is_none() && idle.failed() == 0, "{idle:?}");
    let report = vigil::evidence::verify(&db, vigil::evidence::Trust::Genesis).await.unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
}
