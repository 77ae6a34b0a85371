//! `vigil run` against the real services: the catch-up at start runs overdue work once, a cron
//! slot missed while no daemon ran runs once, a second daemon on one SQLite store is refused
//! naming the first, `/metrics` parses as Prometheus text and agrees with `vigil status`, a
//! bad configuration on SIGHUP keeps the running one, and SIGTERM mid-rotation exits 0 with the
//! rotation completed by the next start.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backups::{Setup, postgres_database};
use crate::support::{Database, Store, admin_sql, unique};

/// A database with an application role whose password vigil rotates (secret `app`, in Vault),
/// a backup set of it, a scratch target and a drill on a daily schedule; returns the drill's
/// name.
async fn fleet(setup: &Setup) -> String {
    let pg = setup.services.postgres.clone();
    let database = postgres_database(&setup.services, 1).await;
    let app = unique("daemon_app").replace('-', "_");
    let drill = app.replace('_', "-");
    admin_sql(
        vigil::engines::Engine::Postgres,
        &Database { database: database.clone(), ..pg.clone() },
        &[
            format!("CREATE ROLE {app} LOGIN PASSWORD 'app-password-1'"),
            format!("GRANT SELECT ON pgbench_accounts TO {app}"),
        ],
    )
    .await;
    let value = serde_json::json!({ "username": app, "password": "app-password-1" });
    setup.services.seed(Store::Vault, setup.path(), &format!("daemon/{app}"), &value).await;
    let mut schedule = setup.target("postgres", &pg, &database);
    let scratch = setup.target("postgres", &pg, "scratch").replace("database = \"scratch\"", "database = \"postgres\"");
    schedule.push_str(&scratch);
    schedule.push_str(&format!(
        "[secrets.app]\nkind = \"postgres_password\"\nstore = \"vault_kv\"\npath = \"daemon/{app}\"\n\
         target = \"{database}\"\nusername = \"{app}\"\nprobes = [\"SELECT count(*) FROM pgbench_accounts\"]\n\n"
    ));
    schedule.push_str(&setup.set("orders", &database, "local", "local"));
    // The dump's snapshot time is the database server's clock, which a test's
    // VIGIL_CLOCK_OFFSET does not move: an RPO target of 4 days holds across a 3-day offset.
    // The drill's name is unique: its scratch databases (`vigil_drill_NAME_RUN`) are on the server
    // other tests share.
    schedule.push_str(&format!(
        "[drills.{drill}]\nbackup = \"orders\"\nscratch = \"scratch\"\nschedule = \"0 3 * * *\"\nrpo = \"4d\"\n\n"
    ));
    setup.write_schedule(&schedule);
    drill
}

/// Adds `[daemon]` to the test's vigil.toml: listening on a free loopback port, 1 s of jitter.
fn daemon_section(dir: &Path) -> u16 {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("vigil.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[daemon]\nlisten = \"127.0.0.1:{port}\"\njitter = \"1s\"\nshutdown_grace = \"20s\"\n"));
    std::fs::write(&config, text).unwrap();
    port
}

/// `vigil run --once --output json` with `env`; its summary.
#[cfg(feature = "failpoints")]
fn once(dir: &Path, env: &[(&str, &str)]) -> (Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["--output", "json", "run", "--once"])
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "vigil run --once failed: {stderr}");
    (serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {stderr}")), stderr)
}

/// The jobs of a summary that ran, by name, with whether each succeeded.
#[cfg(feature = "failpoints")]
fn ran(summary: &Value) -> Vec<(String, bool)> {
    summary["ran"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["job"].as_str().unwrap().to_owned(), r["ok"].as_bool().unwrap()))
        .collect()
}

/// The first start catches up: the never-rotated password rotates, the never-backed-up set
/// is backed up, then its drill restores that backup (never before: it waits for the backup),
/// and the check and watch run, each once. A second start finds nothing due. A start three
/// days later (three daily slots missed) backs up and drills once each, not three times.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn the_first_start_catches_up_once_and_missed_slots_run_once() {
    let setup = Setup::new().await;
    let drill = fleet(&setup).await;
    let drill_job = format!("drill:{drill}");
    let dir = setup.path().to_owned();
    let (first, _) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || once(&dir, &[])
    })
    .await
    .unwrap();
    let jobs = ran(&first);
    for job in ["rotate:app", "backup:orders", drill_job.as_str(), "check", "watch", "waits"] {
        let runs: Vec<_> = jobs.iter().filter(|(j, _)| j == job).collect();
        assert_eq!(runs.len(), 1, "{job} ran once: {first}");
        assert!(runs[0].1, "{job} succeeded: {first}");
    }
    let position = |job: &str| jobs.iter().position(|(j, _)| j == job).unwrap();
    assert!(position("backup:orders") < position(&drill_job), "the drill restored the new backup");

    let (second, _) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || once(&dir, &[])
    })
    .await
    .unwrap();
    // The interval jobs (the RPO watch every minute) may come round again on a slow machine;
    // nothing scheduled by cadence or cron does.
    let jobs: Vec<String> = ran(&second).into_iter().map(|(j, _)| j).collect();
    assert!(jobs.iter().all(|j| ["waits", "watch", "check"].contains(&j.as_str())), "nothing else is due: {second}");

    let three_days = (3 * 86_400).to_string();
    let (later, _) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || once(&dir, &[("VIGIL_CLOCK_OFFSET", &three_days)])
    })
    .await
    .unwrap();
    let jobs = ran(&later);
    for job in ["backup:orders", drill_job.as_str()] {
        assert_eq!(
            jobs.iter().filter(|(j, ok)| j == job && *ok).count(),
            1,
            "{job} ran once for three missed slots: {later}"
        );
    }
    assert!(!jobs.iter().any(|(j, _)| j == "rotate:app"), "the password is 3 days into a 30-day cadence: {later}");
    let backups = setup.vigil(&["--output", "json", "backup", "list"]).json();
    assert_eq!(backups.as_array().unwrap().len(), 2, "{backups}");

    // The set's schedule changes from daily to hourly: its next run is planned from the new
    // one (an hour after its newest backup), not left at the old daily slot.
    let schedule = setup.path().join("schedules/backups.toml");
    let text = std::fs::read_to_string(&schedule).unwrap();
    std::fs::write(&schedule, text.replacen("schedule = \"0 2 * * *\"", "schedule = \"0 * * * *\"", 1)).unwrap();
    let hour_on = (3 * 86_400 + 3_660).to_string();
    let (hourly, _) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || once(&dir, &[("VIGIL_CLOCK_OFFSET", &hour_on)])
    })
    .await
    .unwrap();
    let jobs = ran(&hourly);
    assert_eq!(jobs.iter().filter(|(j, ok)| j == "backup:orders" && *ok).count(), 1, "{hourly}");
    setup.vigil(&["evidence", "verify"]).assert_code(0);
}

/// A running daemon: a child process and its standard error, line by line.
struct Daemon {
    child: Child,
    lines: Receiver<String>,
    seen: String,
}

impl Daemon {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("run")
            .current_dir(dir)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Self { child, lines, seen: String::new() }
    }

    /// Waits up to `within` for a stderr line containing every one of `parts`.
    fn wait_for(&mut self, parts: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if parts.iter().all(|p| line.contains(p)) {
                        return;
                    }
                }
                Err(_) => panic!("{parts:?} never showed on stderr:\n{}", self.seen),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
    }

    /// Sends SIGTERM and waits for the exit: its code and how long it took.
    fn terminate(mut self) -> (Option<i32>, Duration, String) {
        let signalled = Instant::now();
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        let elapsed = signalled.elapsed();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        (status.code(), elapsed, std::mem::take(&mut self.seen))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(port: u16, path: &str) -> reqwest::Response {
    reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.unwrap()
}

/// A sample's value from a parsed scrape.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: (&str, &str)) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1)).map(|s| match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => f64::NAN,
    })
}

async fn scrape(port: u16) -> prometheus_parse::Scrape {
    let text = get(port, "/metrics").await.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).unwrap_or_else(|err| panic!("{err}: {text}"))
}

/// The daemon answers /readyz as leader, its metrics parse as Prometheus text, the secret's
/// due gauge agrees with `vigil status`, /status is that command's JSON; a second daemon on the
/// same store exits 1 naming the first's PID; a SIGHUP with a broken schedule keeps the running
/// configuration (and says so in a metric), a fixed one applies; SIGTERM exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn the_daemon_serves_metrics_and_status_reloads_safely_and_stops_on_sigterm() {
    let setup = Setup::new().await;
    let drill = fleet(&setup).await;
    let port = daemon_section(setup.path());
    let mut daemon = Daemon::start(setup.path(), &[]);
    let started = Instant::now();
    let ready = loop {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await
            && response.status() == 200
        {
            break response.json::<Value>().await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "/readyz never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready["role"], "leader", "{ready}");
    assert_eq!(get(port, "/healthz").await.status(), 200);
    daemon.wait_for(&["done", &format!("job=drill:{drill}")], Duration::from_secs(120));

    let metrics = scrape(port).await;
    assert_eq!(sample(&metrics, "vigil_rotations_total", ("outcome", "done")), Some(1.0));
    assert_eq!(sample(&metrics, "vigil_backups_total", ("outcome", "verified")), Some(1.0));
    assert_eq!(sample(&metrics, "vigil_drills_total", ("outcome", "passed")), Some(1.0));
    let leader = metrics.samples.iter().find(|s| s.metric == "vigil_leader").unwrap();
    assert!(matches!(leader.value, prometheus_parse::Value::Gauge(v) if v == 1.0));
    let age = sample(&metrics, "vigil_backup_recovery_point_age_seconds", ("set", "orders")).unwrap();
    assert!((0.0..600.0).contains(&age), "the new backup's recovery point is minutes old: {age}");
    let due = sample(&metrics, "vigil_secret_due_seconds", ("secret", "app")).unwrap();
    let status = setup.vigil(&["--output", "json", "status"]).json();
    let shown = status["secrets"].as_array().unwrap().iter().find(|s| s["secret"] == "app").unwrap().clone();
    let shown_due = shown["due_in_secs"].as_f64().unwrap();
    assert!((due - shown_due).abs() <= 5.0, "/metrics says {due}, vigil status {shown_due}");
    assert!(due > 29.0 * 86_400.0, "rotated just now: due in 30 days ({due})");
    let over_http: Value = get(port, "/status").await.json().await.unwrap();
    assert_eq!(over_http["secrets"][0]["secret"], "app", "{over_http}");
    assert_eq!(over_http["secrets"][0]["next_due"], shown["next_due"]);

    let second = setup.vigil(&["run"]);
    second.assert_code(1);
    assert!(
        second.stderr().contains(&format!("PID {}", daemon.child.id())),
        "the second daemon names the first: {}",
        second.stderr()
    );

    let schedules = setup.path().join("schedules/backups.toml");
    let good = std::fs::read_to_string(&schedules).unwrap();
    std::fs::write(&schedules, format!("{good}\n[backups.broken]\ntarget = \"nowhere\"\n")).unwrap();
    daemon.signal("HUP");
    daemon.wait_for(&["configuration has errors"], Duration::from_secs(30));
    let metrics = scrape(port).await;
    assert_eq!(sample(&metrics, "vigil_config_reloads_total", ("outcome", "refused")), Some(1.0));
    let loaded = metrics.samples.iter().find(|s| s.metric == "vigil_config_loaded").unwrap();
    assert!(matches!(loaded.value, prometheus_parse::Value::Gauge(v) if v == 0.0));
    assert_eq!(get(port, "/readyz").await.status(), 200, "still serving the running configuration");
    std::fs::write(&schedules, &good).unwrap();
    daemon.signal("HUP");
    daemon.wait_for(&["configuration valid"], Duration::from_secs(30));

    let (code, elapsed, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(elapsed < Duration::from_secs(20), "stopped in {elapsed:?}");
    let records = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "daemon.stopped"]).json();
    assert_eq!(records.as_array().unwrap().len(), 1, "{records}");
    setup.vigil(&["evidence", "verify"]).assert_code(0);
}

/// SIGTERM while a rotation's `set` step acts: the step finishes and is recorded, no further
/// step starts, the daemon exits 0; the next start finishes the rotation first, and the
/// credential the store labels current logs in.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn sigterm_mid_rotation_exits_0_and_the_next_start_completes_it() {
    let setup = Setup::new().await;
    fleet(&setup).await;
    daemon_section(setup.path());
    let mut daemon = Daemon::start(setup.path(), &[("VIGIL_STEP_DELAY", "rotation.db_password:set:3000")]);
    daemon.wait_for(&["running", "job=rotate:app"], Duration::from_secs(60));
    // create takes a moment; set then holds for 3 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, elapsed, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    let status = setup.vigil(&["--output", "json", "status"]).json();
    let in_flight = status["secrets"][0]["in_flight"].as_str().unwrap_or_default().to_owned();
    assert!(!in_flight.is_empty(), "the rotation was left in flight for the next start: {status}\n{log}");

    let dir = setup.path().to_owned();
    let (summary, _) = tokio::task::spawn_blocking(move || once(&dir, &[])).await.unwrap();
    // The backup the signal also interrupted is finished too.
    let resumed = summary["resumed"].as_array().unwrap();
    assert!(resumed.iter().any(|r| r["job"] == "resume:secret:app"), "{summary}");
    assert!(resumed.iter().all(|r| r["ok"] == true), "{summary}");
    let status = setup.vigil(&["--output", "json", "status"]).json();
    assert!(status["secrets"][0]["in_flight"].is_null(), "{status}");
    setup.vigil(&["rotate", "--check"]).assert_code(0);
}

/// Waits up to `within` for the daemon on `port` to answer /readyz with `role`.
async fn role_within(port: u16, role: &str, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await
            && let Ok(body) = response.json::<Value>().await
            && body["role"] == role
        {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A PostgreSQL state store replicas share: a fresh database on the private server, its
/// password in a 0600 file, and a folder for the evidence signing key and what the replicas'
/// backup sets share (the local store, the local key).
struct PgState {
    services: crate::support::Services,
    database: String,
    shared: tempfile::TempDir,
}

impl PgState {
    async fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let services = crate::support::Services::load();
        let database = unique("daemon_state").replace('-', "_");
        admin_sql(vigil::engines::Engine::Postgres, &services.postgres, &[format!("CREATE DATABASE {database}")]).await;
        let shared = tempfile::tempdir().unwrap();
        let password = shared.path().join("pg-password");
        std::fs::write(&password, &services.postgres.password).unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self { services, database, shared }
    }

    /// A replica's folder: `vigil.toml` on the shared state store (plus `config`, e.g. the AWS
    /// and Vault sections), listening on a free port with 1 s of jitter and `daemon` more
    /// `[daemon]` lines, and `schedule` as its one schedule file. Returns it and the port.
    fn replica(&self, config: &str, daemon: &str, schedule: &str) -> (tempfile::TempDir, u16) {
        let pg = &self.services.postgres;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("schedules")).unwrap();
        std::fs::write(dir.path().join("schedules/jobs.toml"), schedule).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(
            dir.path().join("vigil.toml"),
            format!(
                "[controller]\ndata_dir = \"data\"\n{config}\n[evidence]\nurl = \"postgres://{}@{}:{}/{}\"\n\
                 password = {{ file = \"{}\" }}\n{}\nsigning_key = \"{}\"\n\n\
                 [daemon]\nlisten = \"127.0.0.1:{port}\"\njitter = \"1s\"\n{daemon}\n",
                pg.user,
                pg.host,
                pg.port,
                self.database,
                self.shared.path().join("pg-password").display(),
                pg.tls_toml(),
                self.shared.path().join("evidence.key").display(),
            ),
        )
        .unwrap();
        (dir, port)
    }

    async fn connect(&self) -> sqlx::PgConnection {
        use sqlx::Connection as _;
        let options = self.services.postgres.pg_options().database(&self.database);
        sqlx::PgConnection::connect_with(&options).await.unwrap()
    }

    /// Backup sets `names` of one small database, each on `cron`, stored and keyed under the
    /// shared folder so that every replica reads what another wrote.
    async fn backup_sets(&self, setup: &Setup, names: &[String], cron: &str) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let pg = &self.services.postgres;
        let database = unique("daemon_fleet").replace('-', "_");
        admin_sql(vigil::engines::Engine::Postgres, pg, &[format!("CREATE DATABASE {database}")]).await;
        admin_sql(
            vigil::engines::Engine::Postgres,
            &Database { database: database.clone(), ..pg.clone() },
            &["CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 200) g".to_owned()],
        )
        .await;
        // The local key exists before any replica starts: none creates its own.
        let keys = self.shared.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::write(keys.join("backup.key"), format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(keys.join("backup.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut schedule = setup.target("postgres", pg, &database);
        for name in names {
            schedule.push_str(
                &setup
                    .set(name, &database, "local", "local")
                    .replace("../backups", &self.shared.path().join("backups").display().to_string())
                    .replace("../keys/backup.key", &keys.join("backup.key").display().to_string())
                    .replace("schedule = \"0 2 * * *\"", &format!("schedule = \"{cron}\"")),
            );
        }
        schedule
    }

    /// The records process `pid` appended after record `since`: each one's sequence number and
    /// kind (what a fenced process must never have written).
    async fn written_after(&self, pid: i64, since: i64) -> Vec<(i64, String)> {
        sqlx::query_as("SELECT seq, kind FROM evidence_records WHERE actor_pid = $1 AND seq > $2 ORDER BY seq")
            .bind(pid)
            .bind(since)
            .fetch_all(&mut self.connect().await)
            .await
            .unwrap()
    }

    /// The evidence ledger's records of `kind`: each one's sequence number, actor PID and
    /// details.
    async fn records(&self, kind: &str) -> Vec<(i64, i64, Value)> {
        let rows: Vec<(i64, i64, String)> =
            sqlx::query_as("SELECT seq, actor_pid, details FROM evidence_records WHERE kind = $1 ORDER BY seq")
                .bind(kind)
                .fetch_all(&mut self.connect().await)
                .await
                .unwrap();
        rows.into_iter().map(|(seq, pid, details)| (seq, pid, serde_json::from_str(&details).unwrap())).collect()
    }
}

/// The AWS and Vault sections of `setup`'s vigil.toml, for replicas' configurations.
fn services_config(setup: &Setup) -> String {
    let text = std::fs::read_to_string(setup.path().join("vigil.toml")).unwrap();
    text.split_once("\n\n").map(|(_, rest)| rest.to_owned()).unwrap_or_default()
}

/// Two daemons on one PostgreSQL state store: one leads and the other stands by serving
/// /readyz; `kill -9` of the leader, and the standby leads within 15 s with a newer epoch and
/// sends a `leadership_lost` alert (the leader killed never stepped down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn a_standby_takes_over_within_15_s_of_the_leader_being_killed() {
    let state = PgState::new().await;
    let (hooks, hook_port) = Hooks::start().await;
    let url = crate::support::secret_file(state.shared.path(), "hook", &format!("http://127.0.0.1:{hook_port}/hook"));
    let vigil::secret::SecretRef::File { path: url } = url else { unreachable!() };
    let alerts = format!("[alerts.webhooks.ops]\nurl = {{ file = \"{}\" }}\n", url.display());
    let ((a, port_a), (b, port_b)) = (state.replica(&alerts, "", ""), state.replica(&alerts, "", ""));
    let first = Daemon::start(a.path(), &[]);
    let led = role_within(port_a, "leader", Duration::from_secs(30)).await.expect("the first daemon leads");
    let second = Daemon::start(b.path(), &[]);
    let standby = role_within(port_b, "standby", Duration::from_secs(30)).await.expect("the second stands by");
    assert_eq!(standby["leader"]["epoch"], led["leader"]["epoch"], "the standby names the leader's epoch: {standby}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(role_within(port_b, "standby", Duration::from_secs(1)).await.is_some(), "still one leader");

    let killed = Instant::now();
    first.signal("KILL");
    let took_over = role_within(port_b, "leader", Duration::from_secs(15)).await;
    let took_over = took_over.unwrap_or_else(|| panic!("no takeover within 15 s of the kill"));
    eprintln!("took over {:?} after the kill", killed.elapsed());
    assert!(
        took_over["leader"]["epoch"].as_i64().unwrap() > led["leader"]["epoch"].as_i64().unwrap(),
        "a new epoch: {took_over}"
    );
    let lost = hooks.wait("/hook", "event", "leadership_lost", "daemon", Duration::from_secs(30)).await;
    let epoch = led["leader"]["epoch"].to_string();
    assert!(lost["summary"].as_str().unwrap().contains(&format!("epoch {epoch}")), "{lost}");
    let (code, _, log) = second.terminate();
    assert_eq!(code, Some(0), "{log}");
    drop(first);
}

/// The fencing token, end to end: a leader paused with SIGSTOP past its lease loses its
/// session; the standby takes over with a newer epoch; resumed with SIGCONT, the old leader's
/// next write (its `daemon.stopped` record) is refused by the epoch check, nothing it writes
/// lands after the new leader's first record, and it stands by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn a_leader_paused_past_its_lease_has_its_next_write_refused() {
    let state = PgState::new().await;
    let ((a, port_a), (b, port_b)) = (state.replica("", "", ""), state.replica("", "", ""));
    let mut first = Daemon::start(a.path(), &[]);
    let led = role_within(port_a, "leader", Duration::from_secs(30)).await.expect("the first daemon leads");
    let second = Daemon::start(b.path(), &[]);
    role_within(port_b, "standby", Duration::from_secs(30)).await.expect("the second stands by");

    first.signal("STOP");
    let took_over = role_within(port_b, "leader", Duration::from_secs(30)).await;
    let took_over = took_over.unwrap_or_else(|| panic!("no takeover while the leader was paused"));
    let (old, new) = (led["leader"]["epoch"].as_i64().unwrap(), took_over["leader"]["epoch"].as_i64().unwrap());
    assert!(new > old, "{took_over}");
    first.signal("CONT");
    first.wait_for(
        &["cannot record the daemon's event", &format!("led at epoch {old}"), &format!("took over at epoch {new}")],
        Duration::from_secs(30),
    );
    role_within(port_a, "standby", Duration::from_secs(30)).await.expect("the old leader stands by");

    let leading = state.records("daemon.leading").await;
    let (since, _, _) = *leading.iter().find(|(_, _, d)| d["epoch"] == new).expect("the new leader's record");
    let pid = i64::from(first.child.id());
    let rows = state.written_after(pid, since).await;
    assert!(rows.is_empty(), "the fenced leader wrote after the takeover: {rows:?}");
    let stopped = state.records("daemon.stopped").await;
    assert!(!stopped.iter().any(|(_, p, d)| *p == pid && d["epoch"] == old), "refused: {stopped:?}");
    for daemon in [first, second] {
        let (code, _, log) = daemon.terminate();
        assert_eq!(code, Some(0), "{log}");
    }
}

/// A replica paused (SIGSTOP) between a backup's upload and its commit, past its lease: the
/// other replica takes the run over, writes and verifies the backup. Woken, the paused one
/// clobbers nothing: its attempt wrote under a name of its own, its commit is refused by the
/// claim, and it removes what it wrote. Paused after its commit instead (every third round), the
/// other adopts its attempt and the woken one's record is refused. Ten rounds; after each, every verified backup still
/// verifies, only the winning attempt's objects remain, nothing the paused process wrote landed
/// after the takeover, and no backup_failed alert fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn a_replica_paused_mid_backup_clobbers_nothing_and_writes_nothing_after_the_takeover() {
    let setup = Setup::new().await;
    let state = PgState::new().await;
    let schedule = state.backup_sets(&setup, &["paused".to_owned()], "*/5 * * * * *").await;
    let config = services_config(&setup);
    let ((a, _), (b, _)) = (state.replica(&config, "", &schedule), state.replica(&config, "", &schedule));
    crate::support::vigil(a.path(), &["evidence", "checkpoint"]).assert_code(0);
    let objects = state.shared.path().join("backups/paused");
    for round in 0..10 {
        // Before the commit (the other writes its own attempt), or after it and before its record
        // (the other adopts this attempt). Shorter than a takeover takes: the pause has ended
        // when the process is woken, so it goes straight on.
        let point = if round % 3 == 1 { "backup.dump:committed" } else { "backup.dump:commit" };
        let mut first = Daemon::start(a.path(), &[("VIGIL_PAUSE", &format!("{point}:12000"))]);
        first.wait_for(&["failpoint: pausing", &format!("\"{point}\"")], Duration::from_secs(90));
        first.signal("STOP");
        let run: String = sqlx::query_scalar("SELECT id FROM daemon_work WHERE state = 'running'")
            .fetch_one(&mut state.connect().await)
            .await
            .unwrap();
        let second = Daemon::start(b.path(), &[]);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM sagas WHERE id = $1")
                .bind(&run)
                .fetch_optional(&mut state.connect().await)
                .await
                .unwrap();
            if status.as_deref() == Some("done") {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: run {run} was not taken over: {status:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let leading = state.records("daemon.leading").await;
        let (since, _, _) = *leading.last().unwrap();
        let files = |dir: &Path| -> std::collections::BTreeMap<String, Vec<u8>> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{run}.")))
                .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
                .collect()
        };
        let won = files(&objects);
        first.signal("CONT");
        first.wait_for(&["lost the run's claim", &run], Duration::from_secs(60));
        let pid = i64::from(first.child.id());
        let (_, _, first_log) = first.terminate();
        let (_, _, second_log) = second.terminate();
        if round % 3 == 1 {
            assert!(second_log.contains("adopting the backup an interrupted attempt committed"), "{second_log}");
        }

        let late = state.written_after(pid, since).await;
        assert!(late.is_empty(), "round {round}: the paused replica wrote after the takeover: {late:?}\n{first_log}");
        let alerts: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts WHERE kind = 'backup_failed'")
            .fetch_one(&mut state.connect().await)
            .await
            .unwrap();
        assert_eq!(alerts, 0, "round {round}: a false alert\n{first_log}\n{second_log}");
        let attempts: std::collections::BTreeSet<String> = std::fs::read_dir(&objects)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|name| {
                name.strip_prefix(&format!("{run}.")).map(|rest| rest.split('.').next().unwrap().to_owned())
            })
            .collect();
        assert_eq!(attempts.len(), 1, "round {round}: only the winning attempt's objects remain: {attempts:?}");
        // What remains is the winner's, as it was before the paused replica woke.
        let after = files(&objects);
        assert!(after.iter().all(|(name, bytes)| won.get(name) == Some(bytes)), "round {round}: an object changed");
        let verified: Vec<String> = sqlx::query_scalar("SELECT id FROM backups WHERE status = 'verified'")
            .fetch_all(&mut state.connect().await)
            .await
            .unwrap();
        assert!(verified.contains(&run), "round {round}: {verified:?}");
        for id in &verified {
            crate::support::vigil(b.path(), &["backup", "verify", id]).assert_code(0);
        }
    }
}

/// A leader paused (SIGSTOP) inside a transaction that holds the leader row `FOR SHARE`: the
/// server ends its session after 10 s idle in the transaction, so a standby leads within 15 s of
/// the pause (before `idle_in_transaction_session_timeout`, never while it slept). The standby,
/// which never led, reloads its configuration on SIGHUP and runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn a_leader_paused_inside_a_transaction_is_taken_over_within_15_s() {
    let state = PgState::new().await;
    let ((a, port_a), (b, port_b)) = (state.replica("", "", ""), state.replica("", "", ""));
    let mut first = Daemon::start(a.path(), &[("VIGIL_PAUSE", "state:fenced:40000")]);
    first.wait_for(&["leading"], Duration::from_secs(30));
    first.wait_for(&["failpoint: pausing", "state:fenced"], Duration::from_secs(30));
    assert!(role_within(port_a, "leader", Duration::from_secs(5)).await.is_some(), "{}", first.seen);
    first.signal("STOP");
    let paused = Instant::now();
    let mut second = Daemon::start(b.path(), &[]);
    second.wait_for(&["serving /healthz"], Duration::from_secs(30));
    second.signal("HUP");
    second.wait_for(&["SIGHUP: configuration valid"], Duration::from_secs(30));
    let left = Duration::from_secs(15).saturating_sub(paused.elapsed());
    let took_over = role_within(port_b, "leader", left).await;
    assert!(took_over.is_some(), "no takeover within 15 s of the pause inside a transaction");
    eprintln!("took over {:?} after the pause", paused.elapsed());
    first.signal("CONT");
    let (code, _, log) = second.terminate();
    assert_eq!(code, Some(0), "the standby reloaded on SIGHUP and ran on: {log}");
    // PostgreSQL's notices (the migrations' `IF NOT EXISTS`) and its source lines stay out.
    assert!(!log.contains("skipping") && !log.contains(" at line "), "{log}");
}

/// Three replicas and 30 backup sets due in the same slot: the leader queues them, every
/// replica claims some, and each set is backed up exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn three_replicas_back_up_30_sets_due_at_once_each_exactly_once() {
    let setup = Setup::new().await;
    let state = PgState::new().await;
    let names: Vec<String> = (0..30).map(|i| format!("fleet{i:02}")).collect();
    let schedule = state.backup_sets(&setup, &names, "0 0 3 * * *").await;
    let config = services_config(&setup);
    let replicas: Vec<_> = (0..3).map(|_| state.replica(&config, "concurrency = 2", &schedule)).collect();
    // The ledger and its key exist before the replicas race for them.
    crate::support::vigil(replicas[0].0.path(), &["evidence", "checkpoint"]).assert_code(0);
    let daemons: Vec<Daemon> = replicas.iter().map(|(dir, _)| Daemon::start(dir.path(), &[])).collect();

    let deadline = Instant::now() + Duration::from_secs(240);
    let done = loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM daemon_work WHERE state = 'succeeded'")
            .fetch_one(&mut state.connect().await)
            .await
            .unwrap();
        if done >= 30 || Instant::now() > deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let logs: Vec<String> = daemons.into_iter().map(|d| d.terminate().2).collect();
    assert_eq!(done, 30, "{logs:#?}");
    let finished = state.records("backup.finished").await;
    let mut per_set = std::collections::BTreeMap::<String, usize>::new();
    for (_, _, details) in &finished {
        *per_set.entry(details["data"]["set"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(per_set.len(), 30, "{per_set:?}");
    assert!(per_set.values().all(|n| *n == 1), "each set once: {per_set:?}");
    let started = state.records("backup.started").await;
    assert_eq!(started.len(), 30, "no backup started twice");
    let workers: Vec<(String, i64)> =
        sqlx::query_as("SELECT worker, count(*) FROM daemon_work GROUP BY worker ORDER BY worker")
            .fetch_all(&mut state.connect().await)
            .await
            .unwrap();
    eprintln!("runs per replica: {workers:?}");
    assert!(workers.len() >= 2, "the work spread across replicas: {workers:?}");
}

/// 20 kills under load: three replicas back up 4 sets every 3 s while one replica after
/// another (the leader among them) is killed with SIGKILL and started again. Afterwards, from
/// the evidence: no backup started twice, no slot backed up twice, every backup started
/// ended, and every slot queued and not superseded by a newer one was backed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn twenty_kills_under_load_run_nothing_twice_and_lose_nothing() {
    let setup = Setup::new().await;
    let state = PgState::new().await;
    let names: Vec<String> = (0..4).map(|i| format!("load{i}")).collect();
    let schedule = state.backup_sets(&setup, &names, "*/3 * * * * *").await;
    let config = services_config(&setup);
    let replicas: Vec<_> = (0..3).map(|_| state.replica(&config, "", &schedule)).collect();
    crate::support::vigil(replicas[0].0.path(), &["evidence", "checkpoint"]).assert_code(0);
    let mut daemons: Vec<Daemon> = replicas.iter().map(|(dir, _)| Daemon::start(dir.path(), &[])).collect();
    role_within(replicas[0].1, "leader", Duration::from_secs(30)).await;

    for kill in 0..20usize {
        tokio::time::sleep(Duration::from_millis(1500 + 300 * (kill % 5) as u64)).await;
        // Every other kill is the leader's; the rest fall on the replicas in turn.
        let mut victim = kill % 3;
        if kill % 2 == 0 {
            for (i, (_, port)) in replicas.iter().enumerate() {
                if role_within(*port, "leader", Duration::from_millis(300)).await.is_some() {
                    victim = i;
                }
            }
        }
        daemons[victim].signal("KILL");
        let _ = daemons[victim].child.wait();
        daemons[victim] = Daemon::start(replicas[victim].0.path(), &[]);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for daemon in daemons {
        let (code, _, log) = daemon.terminate();
        assert_eq!(code, Some(0), "{log}");
    }
    // What the last SIGTERM left in flight is finished by one more start.
    let once = crate::support::vigil(replicas[0].0.path(), &["--output", "json", "run", "--once"]);
    once.assert_code(0);

    let mut conn = state.connect().await;
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM daemon_work WHERE state IN ('queued', 'running')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(open, 0, "no work is left open");
    let started = state.records("backup.started").await;
    let ids: Vec<&str> = started.iter().map(|(_, _, d)| d["saga"].as_str().unwrap()).collect();
    let unique_ids: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique_ids.len(), "a backup started twice");
    let ended: std::collections::BTreeMap<String, bool> = state
        .records("backup.finished")
        .await
        .into_iter()
        .map(|(_, _, d)| (d["saga"].as_str().unwrap().to_owned(), true))
        .chain(
            state
                .records("backup.rolled_back")
                .await
                .into_iter()
                .map(|(_, _, d)| (d["saga"].as_str().unwrap().to_owned(), false)),
        )
        .collect();
    for id in &unique_ids {
        assert!(ended.contains_key(*id), "backup {id} started and never ended");
    }
    // Slots: each queued slot not superseded has exactly one finished backup among its attempts.
    // That is the attempt's own saga, or an earlier slot's backup of the subject that a kill
    // left in flight and this attempt finished as the slot's (work.rs); its outcome names it.
    let rows: Vec<(String, String, String, String, Option<String>)> =
        sqlx::query_as("SELECT id, job, slot, state, outcome FROM daemon_work ORDER BY job, slot, attempt")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let finished_by = |id: &String, outcome: &Option<String>| -> Option<String> {
        if ended.get(id) == Some(&true) {
            return Some(id.clone());
        }
        let named = outcome.as_deref()?.strip_prefix("backup ")?.split_whitespace().next()?;
        (ended.get(named) == Some(&true)).then(|| named.to_owned())
    };
    let mut slots = std::collections::BTreeMap::<(String, String), (Vec<String>, bool)>::new();
    for (id, job, slot, state, outcome) in &rows {
        let entry = slots.entry((job.clone(), slot.clone())).or_default();
        entry.0.extend(finished_by(id, outcome));
        entry.1 |= state == "superseded";
    }
    let total = slots.len();
    let mut credited = std::collections::BTreeMap::<&String, &(String, String)>::new();
    for (key @ (job, slot), (backups, superseded)) in &slots {
        assert!(backups.len() <= 1, "{job} at {slot} was backed up {} times", backups.len());
        assert!(backups.len() == 1 || *superseded, "{job} at {slot} was lost: {rows:?}");
        if !superseded && let Some(backup) = backups.first() {
            let other = credited.insert(backup, key);
            assert!(other.is_none(), "backup {backup} counted for two slots: {other:?} and {key:?}");
        }
    }
    let kills_survived = slots.values().filter(|(backups, _)| backups.len() == 1).count();
    eprintln!("{total} slots queued, {kills_survived} backed up, {} backups started", ids.len());
    assert!(kills_survived >= 20, "the load ran: {kills_survived} slots backed up");
}

/// A webhook receiver on loopback: every POST's path and JSON body, in arrival order. The first
/// post to a path under `/flaky/` is answered 503, so its sender must retry.
#[derive(Clone, Default)]
struct Hooks {
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    refused: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Hooks {
    async fn start() -> (Self, u16) {
        let receiver = Self::default();
        let state = receiver.clone();
        let app = axum::Router::new().fallback(axum::routing::post(
            move |uri: axum::http::Uri, axum::Json(body): axum::Json<Value>| {
                let state = state.clone();
                async move {
                    let path = uri.path().to_owned();
                    if path.starts_with("/flaky/") && state.refused.lock().unwrap().insert(path.clone()) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    state.got.lock().unwrap().push((path, body));
                    axum::http::StatusCode::OK
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, port)
    }

    /// The JSON notices received on `path`.
    fn notices(&self, path: &str) -> Vec<Value> {
        self.got.lock().unwrap().iter().filter(|(p, _)| p == path).map(|(_, b)| b.clone()).collect()
    }

    /// Waits up to `within` for a notice on `path` of `status`, `kind` and `subject`.
    async fn wait(&self, path: &str, status: &str, kind: &str, subject: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .notices(path)
                .into_iter()
                .find(|n| n["status"] == status && n["kind"] == kind && n["subject"] == subject);
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {status} {kind} on {subject} within {within:?}; received: {:#?}",
                self.notices(path)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Alerts end to end, one daemon and a webhook receiver: each failure kind fires once (a
/// rotation that fails and needs attention, an overdue secret, a credential changed out of band,
/// a backup that fails, the RPO exposure of a set without a backup, a drill that fails, a ledger
/// that no longer verifies), each resolves when its condition clears, a Slack-format webhook that
/// first answers 503 gets every notice after a retry, each notice is an `alert.sent` record, and
/// no payload carries a secret value or a webhook's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn alerts_fire_once_per_failure_kind_resolve_when_cleared_and_carry_no_secret() {
    let setup = Setup::new().await;
    fleet(&setup).await;
    let pg = setup.services.postgres.clone();
    let (receiver, hook_port) = Hooks::start().await;

    // `broken`: its stored credential names a user the configuration does not (needs attention).
    let broken = unique("alert_broken").replace('-', "_");
    let value = serde_json::json!({ "username": "someone_else", "password": "broken-secret-value-9" });
    setup.services.seed(Store::Vault, setup.path(), &format!("daemon/{broken}"), &value).await;
    // `lost`: a set whose database does not exist yet, and a drill of it every 3 s.
    let lost_db = unique("alert_lost").replace('-', "_");
    let lost_drill = lost_db.replace('_', "-");
    let schedule_path = setup.path().join("schedules/backups.toml");
    let mut schedule = std::fs::read_to_string(&schedule_path).unwrap();
    let orders_db =
        schedule.split("[backups.orders]\ntarget = \"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    schedule.push_str(&format!(
        "[secrets.broken]\nkind = \"postgres_password\"\nstore = \"vault_kv\"\npath = \"daemon/{broken}\"\n\
         target = \"{orders_db}\"\nusername = \"nobody\"\n\n"
    ));
    schedule.push_str(&setup.target("postgres", &pg, &lost_db));
    schedule.push_str(&setup.set("lost", &lost_db, "local", "local").replace("0 2 * * *", "*/2 * * * * *"));
    schedule.push_str(&format!(
        "[drills.{lost_drill}]\nbackup = \"lost\"\nscratch = \"scratch\"\nschedule = \"*/3 * * * * *\"\nrpo = \"1h\"\n\n"
    ));
    setup.write_schedule(&schedule);

    let json_url = format!("http://127.0.0.1:{hook_port}/hook/JSON-T0KEN-1234");
    let slack_url = format!("http://127.0.0.1:{hook_port}/flaky/SLACK-T0KEN-5678");
    let json_ref = crate::support::secret_file(setup.path(), "hook-json", &json_url);
    let slack_ref = crate::support::secret_file(setup.path(), "hook-slack", &slack_url);
    let file_of = |r: &vigil::secret::SecretRef| match r {
        vigil::secret::SecretRef::File { path } => path.display().to_string(),
        _ => unreachable!(),
    };
    daemon_section(setup.path());
    let config = setup.path().join("vigil.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "check_interval = \"1s\"\nwatch_interval = \"1s\"\nverify_interval = \"1s\"\n\n\
         [alerts.webhooks.ops]\nurl = {{ file = \"{}\" }}\n\n\
         [alerts.webhooks.chat]\nurl = {{ file = \"{}\" }}\nformat = \"slack\"\n",
        file_of(&json_ref),
        file_of(&slack_ref),
    ));
    std::fs::write(&config, text).unwrap();

    // `app` rotated 40 days ago (by the book, then its record moved back): 10 days overdue.
    setup.vigil(&["rotate", "app"]).assert_code(0);
    let state = setup.path().join("data/evidence.db");
    let sqlite = || async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&state).busy_timeout(Duration::from_secs(30));
        sqlx::SqlitePool::connect_with(options).await.unwrap()
    };
    let forty_days_ago = (chrono::Utc::now() - chrono::Duration::days(40)).to_rfc3339();
    sqlx::query("UPDATE secret_status SET last_rotated = $1 WHERE subject = 'secret:app'")
        .bind(&forty_days_ago)
        .execute(&sqlite().await)
        .await
        .unwrap();

    let daemon = Daemon::start(setup.path(), &[]);
    let within = Duration::from_secs(90);
    let hook = "/hook/JSON-T0KEN-1234";
    receiver.wait(hook, "firing", "overdue", "secret:app", within).await;
    receiver.wait(hook, "resolved", "overdue", "secret:app", within).await;
    receiver.wait(hook, "firing", "rotation_failed", "secret:broken", within).await;
    receiver.wait(hook, "firing", "needs_attention", "secret:broken", within).await;
    receiver.wait(hook, "firing", "backup_failed", "backup:lost", within).await;
    receiver.wait(hook, "firing", "rpo_exceeded", "backup:lost", within).await;
    receiver.wait(hook, "firing", "drill_failed", &format!("drill:{lost_drill}"), within).await;

    // The application's password changed out of band, then put back.
    let app = schedule.split("username = \"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    admin_sql(vigil::engines::Engine::Postgres, &pg, &[format!("ALTER ROLE {app} PASSWORD 'drifted-password-7'")])
        .await;
    receiver.wait(hook, "firing", "credential_check_failed", "secret:app", within).await;
    let current = setup.services.vault_get(&format!("secret/data/daemon/{app}")).await;
    let current = current["data"]["data"]["password"].as_str().unwrap().to_owned();
    admin_sql(vigil::engines::Engine::Postgres, &pg, &[format!("ALTER ROLE {app} PASSWORD '{current}'")]).await;
    receiver.wait(hook, "resolved", "credential_check_failed", "secret:app", within).await;

    // The lost database appears: its backups verify, its exposure is within target, its drill passes.
    admin_sql(vigil::engines::Engine::Postgres, &pg, &[format!("CREATE DATABASE {lost_db}")]).await;
    admin_sql(
        vigil::engines::Engine::Postgres,
        &Database { database: lost_db.clone(), ..pg.clone() },
        &["CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 10) g".to_owned()],
    )
    .await;
    receiver.wait(hook, "resolved", "backup_failed", "backup:lost", within).await;
    receiver.wait(hook, "resolved", "rpo_exceeded", "backup:lost", within).await;
    receiver.wait(hook, "resolved", "drill_failed", &format!("drill:{lost_drill}"), within).await;

    // A record signed long ago is changed, then changed back.
    let pool = sqlite().await;
    let (original,): (String,) =
        sqlx::query_as("SELECT details FROM evidence_records WHERE seq = 2").fetch_one(&pool).await.unwrap();
    sqlx::query("UPDATE evidence_records SET details = $1 WHERE seq = 2")
        .bind(format!("{original} "))
        .execute(&pool)
        .await
        .unwrap();
    receiver.wait(hook, "firing", "evidence_verification_failed", "evidence", within).await;
    sqlx::query("UPDATE evidence_records SET details = $1 WHERE seq = 2").bind(&original).execute(&pool).await.unwrap();
    receiver.wait(hook, "resolved", "evidence_verification_failed", "evidence", within).await;

    let (code, _, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");

    let notices = receiver.notices(hook);
    let mut firing = std::collections::BTreeMap::<(String, String), usize>::new();
    for notice in notices.iter().filter(|n| n["status"] == "firing") {
        let key = (notice["kind"].as_str().unwrap().to_owned(), notice["subject"].as_str().unwrap().to_owned());
        *firing.entry(key).or_default() += 1;
    }
    assert!(firing.values().all(|n| *n == 1), "each condition fires once while it lasts: {firing:?}");
    let kinds: std::collections::BTreeSet<&str> = firing.keys().map(|(k, _)| k.as_str()).collect();
    for kind in [
        "rotation_failed",
        "needs_attention",
        "overdue",
        "credential_check_failed",
        "backup_failed",
        "rpo_exceeded",
        "drill_failed",
        "evidence_verification_failed",
    ] {
        assert!(kinds.contains(kind), "{kind} fired: {kinds:?}");
    }
    let slack = receiver.notices("/flaky/SLACK-T0KEN-5678");
    assert_eq!(slack.len(), notices.len(), "the Slack webhook got every notice, the first after a 503");
    assert!(slack.iter().all(|n| n.as_object().unwrap().len() == 1 && n["text"].is_string()), "{slack:?}");

    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM evidence_records WHERE kind = 'alert.sent'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, i64::try_from(notices.len()).unwrap(), "each notice is an alert.sent record");
    let everything = format!("{notices:?}{slack:?}{log}");
    for secret in [
        "app-password-1",
        current.as_str(),
        "drifted-password-7",
        "broken-secret-value-9",
        "JSON-T0KEN-1234",
        "SLACK-T0KEN-5678",
        pg.password.as_str(),
    ] {
        assert!(!everything.contains(secret), "a secret value reached a payload or the log");
    }
}
