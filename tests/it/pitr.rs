//! Point-in-time recovery through pgBackRest, against the private PostgreSQL, which archives its
//! WAL into a real pgBackRest repository (`cargo xtask services up`): backups of method
//! `pgbackrest` taken and verified, drills that restore the cluster into a temporary server to
//! the end of the archive or to a time between two writes, and an archive broken on purpose,
//! which raises the RPO exposure and fails a drill's RPO target, naming the archive failure.
//!
//! pgBackRest reads the server's data directory and PostgreSQL refuses to run as root, so vigil
//! runs here as the database's own account, as it would on a database host.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection as _;

use crate::support::{Run, Services, admin_sql, unique};

/// A test database on the private server, and a vigil configuration with a pgbackrest set of
/// its cluster, in a folder the database's account owns.
struct Pitr {
    dir: tempfile::TempDir,
    services: Services,
    database: String,
    /// The database's account (uid, gid), when it is not this process's.
    account: Option<(u32, u32)>,
    /// The set's heartbeat interval, if it beats.
    heartbeat: Option<&'static str>,
}

impl Pitr {
    async fn new(heartbeat: Option<&'static str>) -> Self {
        let services = Services::load();
        let database = unique("pitr").replace('-', "_");
        admin_sql(vigil::engines::Engine::Postgres, &services.postgres, &[format!("CREATE DATABASE {database}")]).await;
        let dir = tempfile::tempdir().unwrap();
        let owner = std::fs::metadata(&services.postgres.data_dir).unwrap();
        let account =
            (owner.uid() != std::fs::metadata("/proc/self").unwrap().uid()).then(|| (owner.uid(), owner.gid()));
        let pg = &services.postgres;
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        std::fs::copy(&pg.ca_file, dir.path().join("ca.pem")).unwrap();
        crate::support::secret_file(
            dir.path(),
            "admin.json",
            &serde_json::json!({ "username": pg.user, "password": pg.password }).to_string(),
        );
        crate::support::secret_file(dir.path(), "cipher-pass", &services.pgbackrest.cipher_pass);
        std::fs::write(dir.path().join("vigil.toml"), "[controller]\ndata_dir = \"data\"\n").unwrap();
        let pitr = Self { dir, services, database, account, heartbeat };
        pitr.sql(&["CREATE TABLE pitr_rows (id int PRIMARY KEY, note text NOT NULL)"]).await;
        pitr.write_schedule("");
        pitr
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The target, the set `pitr` and `drills`, written as the database's account's file.
    fn write_schedule(&self, drills: &str) {
        let pg = &self.services.postgres;
        let repo = &self.services.pgbackrest;
        let text = format!(
            "[targets.app]\nkind = \"postgres\"\nhost = \"{}\"\nport = {}\ndatabase = \"{}\"\n\
             admin = {{ file = \"../admin.json\" }}\ntls = {{ mode = \"verify-full\", ca_file = \"../ca.pem\" }}\n\n\
             [backups.pitr]\ntarget = \"app\"\nmethod = \"pgbackrest\"\nstanza = \"{}\"\nconfig_file = \"{}\"\n\
             cipher_pass = {{ file = \"../cipher-pass\" }}\nschedule = \"0 2 * * 0\"\nincremental = \"0 2 * * 1-6\"\n\
             {}\n\n{drills}",
            pg.host,
            pg.port,
            self.database,
            repo.stanza,
            repo.config.display(),
            self.heartbeat.map(|every| format!("heartbeat = \"{every}\"")).unwrap_or_default(),
        );
        std::fs::write(self.path().join("schedules/pitr.toml"), text).unwrap();
        self.give_all(self.path());
    }

    /// Hands every file under `dir` to the database's account.
    fn give_all(&self, dir: &Path) {
        let Some((uid, gid)) = self.account else { return };
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().is_dir() {
                self.give_all(&entry.path());
            } else {
                std::os::unix::fs::chown(entry.path(), Some(uid), Some(gid)).unwrap();
            }
        }
    }

    /// The real binary, as the database's account.
    fn command(&self, args: &[&str], env: Option<(&str, &str)>) -> std::process::Command {
        use std::os::unix::process::CommandExt as _;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"));
        command.args(args).current_dir(self.path()).env_remove("VIGIL_CONFIG").env_remove("RUST_LOG");
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        if let Some((uid, gid)) = self.account {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn vigil(&self, args: &[&str]) -> Run {
        let output = self.command(args, None).output().unwrap();
        Run { args: args.iter().map(ToString::to_string).collect(), output }
    }

    async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect_with(&self.services.postgres.pg_options().database(&self.database)).await.unwrap()
    }

    async fn sql(&self, statements: &[&str]) {
        let mut conn = self.connect().await;
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string())).execute(&mut conn).await.unwrap();
        }
    }

    /// The server's clock now, RFC 3339 in UTC.
    async fn server_now(&self) -> String {
        let mut conn = self.connect().await;
        sqlx::query_scalar("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    /// Runs `backup run pitr --type KIND` and returns its report.
    fn backup(&self, kind: &str) -> Value {
        let run = self.vigil(&["--output", "json", "backup", "run", "pitr", "--type", kind]);
        run.assert_code(0);
        run.json()[0].clone()
    }

    fn archive(&self) -> (i32, Value) {
        let run = self.vigil(&["--output", "json", "backup", "archive", "pitr"]);
        (run.code(), run.json())
    }

    /// Whether a server runs in a folder of one of drill `drill`'s runs (one left running).
    fn drill_server_running(&self, drill: &str) -> bool {
        server_running_in(&self.path().join("data/drills").join(format!("{drill}-")))
    }

    /// The folders of drill `drill`'s runs under the data dir (`NAME-` and 8 hex digits each).
    fn drill_folders(&self, drill: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.path().join("data/drills")) else { return Vec::new() };
        let prefix = format!("{drill}-");
        entries
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name().unwrap().to_string_lossy().strip_prefix(&prefix).is_some_and(|run| run.len() == 8)
            })
            .collect()
    }
}

fn drill(name: &str, target_time: Option<&str>, rpo: &str, assertions: &[(&str, &str)]) -> String {
    let mut text = format!("[drills.{name}]\nbackup = \"pitr\"\nrpo = \"{rpo}\"\nrto = \"30m\"\n");
    if let Some(at) = target_time {
        text.push_str(&format!("target_time = \"{at}\"\n"));
    }
    for (sql, expect) in assertions {
        text.push_str(&format!("[[drills.{name}.assertions]]\nsql = \"{sql}\"\nexpect = \"{expect}\"\n"));
    }
    text + "\n"
}

/// Whether any process's command line holds `needle`, as `ps` would show it to anyone.
fn any_command_line_holds(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle))
    })
}

/// Whether a process runs in `folder` (a temporary server left running).
fn server_running_in(folder: &Path) -> bool {
    any_command_line_holds(&folder.display().to_string())
}

/// Makes every folder of the stanza's archive read-only (or writable again): archive-push, run by
/// the server's account, then fails as an `archive_command` that fails would.
struct BrokenArchive(PathBuf);

impl BrokenArchive {
    fn break_it(services: &Services) -> Self {
        let archive = services.pgbackrest.repo.join("archive").join(&services.pgbackrest.stanza);
        set_folder_modes(&archive, 0o555);
        Self(archive)
    }
}

impl Drop for BrokenArchive {
    fn drop(&mut self) {
        set_folder_modes(&self.0, 0o750);
    }
}

fn set_folder_modes(dir: &Path, mode: u32) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_dir() {
            set_folder_modes(&entry.path(), mode);
        }
    }
}

/// Full then incremental backups verified and listed with their WAL range; drills to the end of
/// the archive and to a time between two writes; then the archive broken on purpose.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn pgbackrest_backups_drills_to_a_point_in_time_and_a_broken_archive() {
    let pitr = Pitr::new(Some("1m")).await;
    // The daemon beats all along; here, once before anything else and once later.
    pitr.vigil(&["backup", "heartbeat", "pitr"]).assert_code(0);

    // Backups: full, then incremental, each verified; the list and the evidence carry the facts.
    let full = pitr.backup("full");
    assert_eq!(full["method"], "pgbackrest", "{full}");
    assert_eq!(full["verified"], true, "{full}");
    pitr.sql(&["INSERT INTO pitr_rows VALUES (1, 'between the backups')"]).await;
    let incr = pitr.backup("incr");
    assert_eq!(incr["verified"], true, "{incr}");
    let listed = pitr.vigil(&["--output", "json", "backup", "list", "--set", "pitr"]).json();
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{listed}");
    assert_eq!(entries[0]["physical"]["type"], "incr", "{listed}");
    assert_eq!(entries[1]["physical"]["type"], "full", "{listed}");
    for entry in entries {
        assert_eq!(entry["status"], "verified", "{entry}");
        assert!(entry["physical"]["wal_start"].as_str().is_some_and(|w| w.len() == 24), "{entry}");
        assert!(entry["location"].as_str().unwrap().starts_with("pgbackrest:vigil/"), "{entry}");
    }
    let label = entries[0]["physical"]["label"].as_str().unwrap();
    // Its prior is a full backup: this one, or one another test took in the same stanza since.
    assert!(entries[0]["physical"]["prior"].as_str().is_some_and(|p| p.ends_with('F')), "{listed}");
    let verified = pitr.vigil(&["--output", "json", "evidence", "list", "--kind", "backup.verified"]);
    assert!(verified.stdout().contains(label), "backup.verified names the label: {}", verified.stdout());
    assert!(verified.stdout().contains("wal_stop"), "{}", verified.stdout());
    assert!(!verified.all_output().contains(&pitr.services.pgbackrest.cipher_pass), "the passphrase leaked");

    // Two writes a couple of seconds apart, a heartbeat, and then nothing: the server archives
    // on its own within archive_timeout.
    pitr.sql(&["INSERT INTO pitr_rows VALUES (2, 'before the target')"]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let target = pitr.server_now().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    pitr.sql(&["INSERT INTO pitr_rows VALUES (3, 'after the target')"]).await;
    pitr.vigil(&["backup", "heartbeat", "pitr"]).assert_code(0);
    tokio::time::sleep(Duration::from_secs(pitr.services.pgbackrest.archive_timeout_secs + 4)).await;
    let (code, healthy) = pitr.archive();
    assert_eq!(code, 0, "archiving is healthy: {healthy}");
    let healthy_exposure = healthy["rpo_exposure_secs"].as_f64().unwrap();

    let count = "SELECT count(*) FROM pitr_rows";
    let mut drills = drill("latest", None, "15m", &[(count, "3")]);
    drills.push_str(&drill(
        "at_target",
        Some(&target),
        "1h",
        &[("SELECT count(*) FROM pitr_rows WHERE id = 2", "1"), ("SELECT count(*) FROM pitr_rows WHERE id = 3", "0")],
    ));
    drills.push_str(&drill("strict", None, "5s", &[]));
    pitr.write_schedule(&drills);

    let latest = pitr.vigil(&["--output", "json", "drill", "run", "latest"]);
    latest.assert_code(0);
    let report = latest.json()[0].clone();
    assert_eq!(report["passed"], true, "{report}");
    let data = &report["data"];
    assert_eq!(data["recovery_point"]["source"], "heartbeat", "{report}");
    assert!(data["rpo_secs"].as_i64().unwrap() < 15 * 60, "{report}");
    let checks = data["checks"].as_array().unwrap();
    for name in ["pg_amcheck", "heartbeat", "assertion 1"] {
        assert!(checks.iter().any(|c| c["name"] == name && c["passed"] == true), "{name}: {report}");
    }
    let phases: Vec<&str> = data["phases"].as_array().unwrap().iter().filter_map(|p| p["phase"].as_str()).collect();
    assert!(phases.contains(&"restore.pgbackrest") && phases.contains(&"restore.recovery"), "{report}");
    assert!(pitr.drill_folders("latest").is_empty(), "teardown removes the drill's folder");
    assert!(!pitr.drill_server_running("latest"), "teardown stops the server");

    let at_target = pitr.vigil(&["--output", "json", "drill", "run", "at_target"]);
    at_target.assert_code(0);
    let report = at_target.json()[0].clone();
    assert_eq!(report["passed"], true, "the row before the target is there, the one after is not: {report}");
    assert_eq!(report["data"]["into"]["target_time"].as_str().unwrap()[..19], target[..19], "{report}");

    // Archiving broken on purpose: segments wait, the exposure rises, status says why, and a
    // drill then misses a tight RPO target and names the failure.
    {
        let _broken = BrokenArchive::break_it(&pitr.services);
        pitr.vigil(&["backup", "heartbeat", "pitr"]).assert_code(0);
        pitr.sql(&["INSERT INTO pitr_rows VALUES (4, 'never archived')", "SELECT pg_switch_wal()"]).await;
        let mut health = Value::Null;
        for _ in 0..60 {
            let (code, now) = pitr.archive();
            health = now;
            if code == 1
                && health["archiver"]["failing"] == true
                && health["archiver"]["oldest_waiting_secs"].as_f64() > Some(2.0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(health["archiver"]["failing"], true, "{health}");
        assert!(health["archiver"]["waiting_segments"].as_i64() >= Some(1), "{health}");
        assert!(health["rpo_exposure_secs"].as_f64().unwrap() > healthy_exposure, "the exposure rose: {health}");
        assert!(health["problems"][0].as_str().unwrap().contains("failing"), "{health}");
        let status = pitr.vigil(&["status"]);
        status.assert_code(1);
        assert!(status.stdout().contains("WAL archiving of set pitr is failing"), "{}", status.stdout());

        let strict = pitr.vigil(&["--output", "json", "drill", "run", "strict"]);
        strict.assert_code(1);
        let reason = strict.json()[0]["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains("RPO") && reason.contains("exceeds the target 5s"), "{reason}");
        assert!(
            reason.contains("WAL archiving of set pitr is failing"),
            "the verdict names the archive failure: {reason}"
        );
    }
    pitr.vigil(&["evidence", "verify"]).assert_code(0);
}

/// A drill killed at every phase (failpoints) leaves no server running and no folder once the
/// next run or `vigil drill resume` finished it.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_killed_pitr_drill_leaves_no_server_and_no_folder() {
    // Without a heartbeat: RPO comes from the last replayed transaction.
    let pitr = Pitr::new(None).await;
    pitr.backup("full");
    pitr.write_schedule(&drill("killed", None, "15m", &[]));
    for (when, step) in [
        ("before", "locate"),
        ("after", "locate"),
        ("before", "restore"),
        ("after", "restore"),
        ("before", "check"),
        ("after", "check"),
        ("before", "teardown"),
    ] {
        let failpoint = format!("drill.restore:{when}:{step}");
        let killed = pitr.command(&["drill", "run", "killed"], Some(("VIGIL_FAILPOINT", &failpoint))).output().unwrap();
        assert!(!killed.status.success(), "{failpoint}: the process was meant to die");
        let left = matches!((when, step), ("after", "restore" | "check") | ("before", "check" | "teardown"));
        assert_eq!(pitr.drill_server_running("killed"), left, "{failpoint}: the server is left as the kill left it");
        assert!(
            !any_command_line_holds(&pitr.services.pgbackrest.cipher_pass),
            "{failpoint}: the repository passphrase is on a command line"
        );
        let next = if step == "check" { vec!["drill", "resume"] } else { vec!["drill", "run", "killed"] };
        pitr.vigil(&next).assert_code(0);
        assert!(!pitr.drill_server_running("killed"), "{failpoint}: a server survived");
        assert!(pitr.drill_folders("killed").is_empty(), "{failpoint}: the drill's folder survived");
        let list = pitr.vigil(&["--output", "json", "drill", "list"]).json();
        assert_eq!(list["killed"]["status"], "done", "{failpoint}: {list}");
    }
}

/// The daemon's `/status` serves each pgbackrest set's archive health as the RPO watch last
/// measured it: five requests run pgBackRest (and so log in to the source) not once. With
/// `[daemon] status_token`, a request without the token, or with another, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn status_serves_the_watched_archive_health_and_asks_for_its_token() {
    let pitr = Pitr::new(None).await;
    // pgBackRest through a wrapper that counts its runs.
    let (runs, wrapper) = (pitr.path().join("pgbackrest-runs"), pitr.path().join("pgbackrest-counting"));
    std::fs::write(&runs, "").unwrap();
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\necho \"$1\" >> {}\nexec /usr/bin/pgbackrest \"$@\"\n", runs.display()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    crate::support::secret_file(pitr.path(), "status-token", "s3cret-status-token");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        pitr.path().join("vigil.toml"),
        format!(
            "[controller]\ndata_dir = \"data\"\n\n[daemon]\nlisten = \"127.0.0.1:{port}\"\nwatch_interval = \"1h\"\n\
             status_token = {{ file = \"status-token\" }}\n"
        ),
    )
    .unwrap();
    pitr.write_schedule(&format!("pgbackrest_bin = \"{}\"\n", wrapper.display()));
    // Backed up first: a set never backed up is due at once, and the watch waits for its backup.
    pitr.backup("incr");
    let log = std::fs::File::create(pitr.path().join("daemon.log")).unwrap();
    /// The daemon, ended however the test ends.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
            let _ = self.0.wait();
        }
    }
    let daemon = Running(pitr.command(&["run"], None).stderr(log).spawn().unwrap());

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/status");
    let status = |token: Option<&'static str>| {
        let request = client.get(&url);
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move { request.send().await }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let first = loop {
        if let Ok(response) = status(Some("s3cret-status-token")).await
            && response.status() == 200
        {
            let body: Value = response.json().await.unwrap();
            if body["archives"].as_array().is_some_and(|a| !a.is_empty()) {
                break body;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watch never measured the archive:\n{}",
            std::fs::read_to_string(pitr.path().join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(first["archives"][0]["set"], "pitr", "{first}");
    let before = std::fs::read_to_string(&runs).unwrap().lines().count();
    for _ in 0..5 {
        assert_eq!(status(Some("s3cret-status-token")).await.unwrap().status(), 200);
    }
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), before, "a request ran pgBackRest");
    assert_eq!(status(None).await.unwrap().status(), 401);
    assert_eq!(status(Some("another-token")).await.unwrap().status(), 401);
    drop(daemon);
}

/// An application role that owns the database plants code for vigil to run with its privileges:
/// `public.vigil_heartbeat` (where vigil wrote the heartbeat before) with a trigger, later
/// swapped for a view that a heartbeat check would read, and a view an assertion reads. Each
/// calls a function that logs `current_user` to a table and, when it can (as a superuser),
/// writes a file with `COPY … TO`, as an attack on vigil's data folder would. The heartbeat
/// runs nothing of it as the admin (a superuser here); the drill runs nothing of it as the
/// restored cluster's superuser: the assertion's view runs as the drill's checking role, and the
/// heartbeat is read from `vigil.heartbeat`.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn planted_code_never_runs_as_the_admin_or_the_restored_superuser() {
    let pitr = Pitr::new(Some("1m")).await;
    let pg = &pitr.services.postgres;
    let owner = unique("planter").replace('-', "_");
    let exfil = pitr.path().join("exfil");
    std::fs::create_dir(&exfil).unwrap();
    std::fs::set_permissions(&exfil, std::fs::Permissions::from_mode(0o777)).unwrap();
    pitr.sql(&[
        &format!("CREATE ROLE {owner} LOGIN PASSWORD 'planter-password-1'"),
        &format!("ALTER DATABASE {} OWNER TO {owner}", pitr.database),
    ])
    .await;
    let planter = crate::support::Database {
        database: pitr.database.clone(),
        user: owner.clone(),
        password: "planter-password-1".into(),
        ..pg.clone()
    };
    let plant = format!(
        "CREATE FUNCTION public.plant(via text) RETURNS text LANGUAGE plpgsql AS $f$ BEGIN \
           BEGIN INSERT INTO public.plant_log VALUES (current_user, via); EXCEPTION WHEN OTHERS THEN NULL; END; \
           BEGIN EXECUTE pg_catalog.format('COPY (SELECT %L) TO %L', current_user, '{}/' || via); \
           EXCEPTION WHEN OTHERS THEN NULL; END; \
           RETURN current_user; END $f$",
        exfil.display()
    );
    admin_sql(
        vigil::engines::Engine::Postgres,
        &planter,
        &[
            "CREATE TABLE public.plant_log (who text, via text)".to_owned(),
            "GRANT INSERT ON public.plant_log TO PUBLIC".to_owned(),
            plant,
            "CREATE FUNCTION public.plant_trigger() RETURNS trigger LANGUAGE plpgsql AS \
             $f$ BEGIN PERFORM public.plant('heartbeat-trigger'); RETURN NEW; END $f$"
                .to_owned(),
            "CREATE TABLE public.vigil_heartbeat (set_name text PRIMARY KEY, beat_at timestamptz NOT NULL)".to_owned(),
            "CREATE TRIGGER plant BEFORE INSERT OR UPDATE ON public.vigil_heartbeat \
             FOR EACH ROW EXECUTE FUNCTION public.plant_trigger()"
                .to_owned(),
            "CREATE VIEW public.shadow AS SELECT public.plant('assertion-view') AS who".to_owned(),
        ],
    )
    .await;
    async fn ran(pitr: &Pitr) -> Vec<(String, String)> {
        let mut conn = pitr.connect().await;
        sqlx::query_as("SELECT who, via FROM public.plant_log").fetch_all(&mut conn).await.unwrap()
    }
    let files = || std::fs::read_dir(&exfil).unwrap().flatten().map(|e| e.file_name()).collect::<Vec<_>>();

    pitr.vigil(&["backup", "heartbeat", "pitr"]).assert_code(0);
    assert_eq!(ran(&pitr).await, vec![], "the planted trigger ran as the admin");
    assert_eq!(files(), Vec::<std::ffi::OsString>::new(), "the planted code wrote files as a superuser");

    // The old table swapped for a view: a copy's heartbeat check must not read it as a superuser.
    admin_sql(
        vigil::engines::Engine::Postgres,
        &planter,
        &[
            "ALTER TABLE public.vigil_heartbeat RENAME TO old_beats".to_owned(),
            "CREATE VIEW public.vigil_heartbeat AS SELECT set_name, beat_at FROM public.old_beats \
             WHERE public.plant('heartbeat-view') IS NOT NULL"
                .to_owned(),
        ],
    )
    .await;
    pitr.backup("full");
    pitr.vigil(&["backup", "heartbeat", "pitr"]).assert_code(0);
    tokio::time::sleep(Duration::from_secs(pitr.services.pgbackrest.archive_timeout_secs + 4)).await;
    pitr.write_schedule(&drill("planted", None, "15m", &[("SELECT who FROM shadow", "anyone")]));
    let run = pitr.vigil(&["--output", "json", "drill", "run", "planted"]);
    let report = run.json()[0].clone();
    let checks = report["data"]["checks"].as_array().unwrap().clone();
    let role = report["data"]["check_role"].as_str().unwrap_or("the checking role").to_owned();
    let assertion = checks.iter().find(|c| c["name"] == "assertion 1").unwrap();
    assert!(
        assertion["detail"].as_str().unwrap().contains(&format!("returned \"{role}\"")),
        "the assertion's view ran as another role: {assertion}"
    );
    let heartbeat = checks.iter().find(|c| c["name"] == "heartbeat").unwrap();
    assert_eq!(heartbeat["passed"], true, "{report}");
    assert!(heartbeat["detail"].as_str().unwrap().contains("(vigil.heartbeat)"), "{heartbeat}");
    assert_eq!(files(), Vec::<std::ffi::OsString>::new(), "the planted code wrote files as a superuser");
    assert_eq!(ran(&pitr).await, vec![], "the planted code ran on the source");
    assert!(pitr.drill_folders("planted").is_empty(), "teardown removes the drill's folder");
}
