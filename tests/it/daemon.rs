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
    // The drill's name is unique: its scratch database (`vigil_drill_NAME`) is on the server
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

/// Two daemons on one PostgreSQL state store: one leads and the other stands by serving
/// /readyz; `kill -9` of the leader, and the standby leads within 15 s with a newer epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn a_standby_takes_over_within_15_s_of_the_leader_being_killed() {
    use sqlx::Connection as _;
    use std::os::unix::fs::PermissionsExt as _;
    let services = crate::support::Services::load();
    let pg = &services.postgres;
    let database = unique("daemon_state").replace('-', "_");
    let mut conn = sqlx::PgConnection::connect_with(&pg.pg_options()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}"))).execute(&mut conn).await.unwrap();
    let shared = tempfile::tempdir().unwrap();
    let password = shared.path().join("pg-password");
    std::fs::write(&password, &pg.password).unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let replica = |dir: &Path| -> u16 {
        std::fs::create_dir_all(dir.join("schedules")).unwrap();
        std::fs::write(dir.join("schedules/none.toml"), "").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(
            dir.join("vigil.toml"),
            format!(
                "[controller]\ndata_dir = \"data\"\n\n[evidence]\nurl = \"postgres://{}@{}:{}/{database}\"\n\
                 password = {{ file = \"{}\" }}\n{}\nsigning_key = \"{}\"\n\n[daemon]\nlisten = \"127.0.0.1:{port}\"\n",
                pg.user,
                pg.host,
                pg.port,
                password.display(),
                pg.tls_toml(),
                shared.path().join("evidence.key").display(),
            ),
        )
        .unwrap();
        port
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (replica(a.path()), replica(b.path()));
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
    let (code, _, log) = second.terminate();
    assert_eq!(code, Some(0), "{log}");
    drop(first);
}
