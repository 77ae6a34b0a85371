//! Database password rotation, end to end through the real `vigil` binary, over the matrix
//! {PostgreSQL, MariaDB} x {single user, alternating users} x {AWS Secrets Manager, Vault}:
//! the credential the store labels current logs in after every rotation, and every step is in
//! the verified evidence ledger.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use vigil::engines::Engine;
use vigil::engines::{self, Credential, DbEngine};
use vigil::stores::SecretStore;

use crate::support::{Database, Run, Services, Store, admin_sql, secret_file, unique, vigil};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Strategy {
    Single,
    Alternating,
}

/// One cell of the matrix: its users, its secret, and a configuration naming them.
struct Cell {
    dir: tempfile::TempDir,
    config: PathBuf,
    name: String,
    path: String,
    store: Box<dyn SecretStore>,
    engine: Box<dyn DbEngine>,
    user: String,
}

fn db(services: &Services, engine: Engine) -> &Database {
    match engine {
        Engine::Postgres => &services.postgres,
        Engine::Mysql => &services.mariadb,
    }
}

impl Cell {
    async fn new(services: &Services, engine: Engine, strategy: Strategy, store: Store) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = db(services, engine);
        let user = unique("app").replace('-', "_");
        let table = unique("orders").replace('-', "_");
        let clone = format!("{user}_clone");
        let mut statements = Vec::new();
        for u in [&user, &clone] {
            statements.extend(match engine {
                Engine::Postgres => vec![format!("CREATE ROLE {u} LOGIN")],
                Engine::Mysql => vec![format!("CREATE USER '{u}'@'%'")],
            });
        }
        statements.extend(match engine {
            Engine::Postgres => vec![
                format!("CREATE TABLE {table} (id int)"),
                format!("GRANT SELECT ON {table} TO {user}"),
                format!("GRANT SELECT ON {table} TO {clone}"),
            ],
            Engine::Mysql => vec![
                format!("CREATE TABLE mysql.{table} (id int)"),
                format!("GRANT SELECT ON mysql.{table} TO '{user}'@'%'"),
                format!("GRANT SELECT ON mysql.{table} TO '{clone}'@'%'"),
            ],
        });
        admin_sql(engine, database, &statements).await;
        let admin =
            Credential { username: database.user.clone(), password: SecretString::from(database.password.clone()) };
        let endpoint = database.endpoint();
        let db_engine = engines::connect(engine, endpoint, admin);
        let initial = SecretString::from(format!("initial-{}", unique("pw")));
        db_engine.set_password(&user, &initial).await.unwrap();
        db_engine.set_password(&clone, &SecretString::from(format!("clone-{}", unique("pw")))).await.unwrap();

        let engine_name = match engine {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        };
        let value = serde_json::json!({
            "engine": engine_name, "host": database.host, "port": database.port,
            "username": user, "password": secrecy::ExposeSecret::expose_secret(&initial), "dbname": database.database,
        });
        let path = unique("vigil/app").replace('_', "-");
        let secret_store = services.seed(store, dir.path(), &path, &value).await;

        let admin_json = serde_json::json!({ "username": database.user, "password": database.password }).to_string();
        let admin_ref = secret_file(dir.path(), "admin.json", &admin_json);
        let vigil::secret::SecretRef::File { path: admin_path } = admin_ref else { unreachable!() };
        let name = unique("app-secret").replace('_', "-");
        let (kind, probe) = match engine {
            Engine::Postgres => ("postgres_password", format!("SELECT count(*) FROM {table}")),
            Engine::Mysql => ("mysql_password", format!("SELECT COUNT(*) FROM mysql.{table}")),
        };
        let strategy_name = match strategy {
            Strategy::Single => "single_user",
            Strategy::Alternating => "alternating_users",
        };
        let store_name = store.config_name();
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        std::fs::write(
            dir.path().join("schedules/app.toml"),
            format!(
                "[targets.db]\nkind = \"{engine_name}\"\nhost = \"{}\"\nport = {}\ndatabase = \"{}\"\nadmin = {{ file = \"{}\" }}\n{}\n\n\
                 [secrets.{name}]\nkind = \"{kind}\"\nstore = \"{store_name}\"\npath = \"{path}\"\ntarget = \"db\"\nusername = \"{user}\"\n\
                 strategy = \"{strategy_name}\"\nprobes = [\"{probe}\"]\n",
                database.host,
                database.port,
                database.database,
                admin_path.display(),
                database.tls_toml()
            ),
        )
        .unwrap();
        let config = services.write_controller_config(dir.path());
        Self { dir, config, name, path, store: secret_store, engine: db_engine, user }
    }

    fn vigil(&self, args: &[&str]) -> Run {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        vigil(self.dir.path(), &all)
    }

    /// The credential the store labels current, as an application reads it.
    async fn current(&self) -> Credential {
        let stored = self.store.current(&self.path).await.unwrap();
        let value: serde_json::Value =
            serde_json::from_str(secrecy::ExposeSecret::expose_secret(&stored.value)).unwrap();
        Credential {
            username: value["username"].as_str().unwrap().to_owned(),
            password: SecretString::from(value["password"].as_str().unwrap().to_owned()),
        }
    }

    async fn assert_current_logs_in(&self) -> Credential {
        let current = self.current().await;
        self.engine
            .test_login(&current, &[])
            .await
            .unwrap_or_else(|err| panic!("the current credential does not log in: {err}"));
        current
    }
}

fn dir_of(cell: &Cell) -> &Path {
    cell.dir.path()
}

async fn rotate_twice(engine: Engine, strategy: Strategy, store: Store) {
    let services = Services::load();
    let cell = Cell::new(&services, engine, strategy, store).await;
    let before = cell.assert_current_logs_in().await;

    let run = cell.vigil(&["--output", "json", "rotate", &cell.name]);
    run.assert_code(0);
    let report = run.json();
    assert_eq!(report["rotations"][0]["outcome"], "done", "{report}");
    let after = cell.assert_current_logs_in().await;
    assert!(cell.store.pending(&cell.path).await.unwrap().is_none(), "no pending stage left");
    match strategy {
        Strategy::Single => {
            assert_eq!(after.username, cell.user);
            let err = cell.engine.test_login(&before, &[]).await.unwrap_err();
            assert!(
                matches!(err, vigil::engines::EngineError::Login { .. }),
                "the old password must stop working: {err}"
            );
        }
        Strategy::Alternating => {
            assert_eq!(
                after.username,
                format!("{}_clone", cell.user),
                "the inactive user was rotated and is now current"
            );
            cell.engine
                .test_login(&before, &[])
                .await
                .expect("the previous user keeps working until the next rotation");
        }
    }

    // A second rotation: alternating needs --force within min_flip_interval, and says so.
    if strategy == Strategy::Alternating {
        let refused = cell.vigil(&["rotate", &cell.name]);
        refused.assert_code(1);
        assert!(refused.stderr().contains("min_flip_interval"), "{}", refused.stderr());
        cell.vigil(&["rotate", &cell.name, "--force"]).assert_code(0);
        assert_eq!(cell.assert_current_logs_in().await.username, cell.user, "flipped back");
    } else {
        cell.vigil(&["rotate", &cell.name]).assert_code(0);
        cell.assert_current_logs_in().await;
    }

    let status = cell.vigil(&["--output", "json", "status"]);
    status.assert_code(0);
    let row = &status.json()["secrets"][0];
    assert!(row["last_rotated"].is_string() && row["needs_attention"].is_null(), "{row}");
    let verify = cell.vigil(&["--output", "json", "evidence", "verify"]);
    verify.assert_code(0);
    let steps =
        cell.vigil(&["--output", "json", "evidence", "list", "--kind", "rotation.step", "--limit", "1000"]).json();
    assert_eq!(steps.as_array().unwrap().len(), 2 * 4 * 2, "two rotations, four steps, started and succeeded");
    let check = cell.vigil(&["--output", "json", "rotate", "--check"]);
    check.assert_code(0);
    assert!(!dir_of(&cell).join("data/evidence.db").to_string_lossy().is_empty());
}

macro_rules! matrix {
    ($($name:ident: $engine:expr, $strategy:expr, $store:expr;)*) => {$(
        #[tokio::test]
        #[ignore = "needs services: cargo xtask test"]
        async fn $name() {
            rotate_twice($engine, $strategy, $store).await;
        }
    )*};
}

matrix! {
    postgres_single_user_aws: Engine::Postgres, Strategy::Single, Store::Aws;
    postgres_single_user_vault: Engine::Postgres, Strategy::Single, Store::Vault;
    postgres_alternating_aws: Engine::Postgres, Strategy::Alternating, Store::Aws;
    postgres_alternating_vault: Engine::Postgres, Strategy::Alternating, Store::Vault;
    mariadb_single_user_aws: Engine::Mysql, Strategy::Single, Store::Aws;
    mariadb_single_user_vault: Engine::Mysql, Strategy::Single, Store::Vault;
    mariadb_alternating_aws: Engine::Mysql, Strategy::Alternating, Store::Aws;
    mariadb_alternating_vault: Engine::Mysql, Strategy::Alternating, Store::Vault;
}

impl Cell {
    /// Rewrites the secret's probe queries.
    fn set_probe(&self, probe: &str) {
        let path = self.dir.path().join("schedules/app.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("probes = ").unwrap();
        std::fs::write(&path, format!("{}probes = [\"{probe}\"]\n", &text[..start])).unwrap();
    }
}

/// A probe the user may not run: the test step fails after set, and the rotation unwinds.
async fn failed_test_step(engine: Engine, strategy: Strategy, store: Store) {
    let services = Services::load();
    let cell = Cell::new(&services, engine, strategy, store).await;
    let before = cell.assert_current_logs_in().await;
    cell.set_probe(match engine {
        Engine::Postgres => "SELECT * FROM pg_authid",
        Engine::Mysql => "SELECT * FROM mysql.global_priv",
    });
    let run = cell.vigil(&["--output", "json", "rotate", &cell.name]);
    run.assert_code(1);
    let report = run.json();
    assert_eq!(report["rotations"][0]["outcome"], "rolled_back", "{report}");
    assert_eq!(report["rotations"][0]["step"], "test", "{report}");
    let after = cell.assert_current_logs_in().await;
    assert_eq!(after.username, before.username, "current did not move");
    assert!(cell.store.pending(&cell.path).await.unwrap().is_none(), "no pending stage left behind");
    let status = cell.vigil(&["--output", "json", "status"]).json();
    let attention = status["secrets"][0]["needs_attention"].as_str().unwrap_or_default();
    assert!(attention.contains("failed at test"), "{status}");
    cell.vigil(&["evidence", "verify"]).assert_code(0);
    let undone = cell.vigil(&["--output", "json", "evidence", "list", "--kind", "rotation.rolled_back"]).json();
    assert_eq!(undone.as_array().unwrap().len(), 1);
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_failed_test_step_restores_the_single_user_and_flags_attention() {
    failed_test_step(Engine::Postgres, Strategy::Single, Store::Aws).await;
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_failed_test_step_leaves_the_alternate_user_unused() {
    failed_test_step(Engine::Mysql, Strategy::Alternating, Store::Vault).await;
}

/// A role the secret does not rotate, with a password only the test knows, and a stored value
/// for `cell`'s secret naming it: what someone who can write the application's secret could plant.
async fn plant_another_user(services: &Services, cell: &Cell) -> Credential {
    let victim = unique("boss").replace('-', "_");
    let password = format!("own-{}", unique("pw"));
    admin_sql(Engine::Postgres, &services.postgres, &[format!("CREATE ROLE {victim} LOGIN PASSWORD '{password}'")])
        .await;
    let value = serde_json::json!({
        "engine": "postgres", "host": services.postgres.host, "port": services.postgres.port,
        "username": victim, "password": "chosen-by-whoever-wrote-the-secret", "dbname": services.postgres.database,
    });
    services.seed(Store::Vault, cell.dir.path(), &cell.path, &value).await;
    Credential { username: victim, password: SecretString::from(password) }
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_stored_value_naming_another_user_stops_the_rotation_before_any_change() {
    let services = Services::load();
    let cell = Cell::new(&services, Engine::Postgres, Strategy::Single, Store::Vault).await;
    let victim = plant_another_user(&services, &cell).await;

    let run = cell.vigil(&["rotate", &cell.name]);
    run.assert_code(1);
    assert!(run.stderr().contains(&format!("names user {}", victim.username)), "{}", run.stderr());
    assert!(run.stderr().contains(&format!("rotates {}", cell.user)), "{}", run.stderr());
    cell.engine.test_login(&victim, &[]).await.expect("the other user's password is untouched");
    assert!(cell.store.pending(&cell.path).await.unwrap().is_none(), "nothing was staged");
    let status = cell.vigil(&["--output", "json", "status"]).json();
    let attention = status["secrets"][0]["needs_attention"].as_str().unwrap_or_default();
    assert!(attention.contains(&format!("names user {}", victim.username)), "{status}");
    assert!(status["secrets"][0]["in_flight"].is_null(), "no saga started: {status}");
}

/// Replaces the cell's admin credential with a fresh user holding exactly the grants
/// `docs/privileges.md` lists for rotation.
async fn least_privilege_admin(services: &Services, engine: Engine, cell: &Cell) {
    let name = unique("rotator").replace('-', "_");
    let password = format!("Rotator-{}", unique("pw"));
    let statements = match engine {
        Engine::Postgres => vec![format!("CREATE ROLE {name} LOGIN CREATEROLE PASSWORD '{password}'")],
        Engine::Mysql => vec![
            format!("CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"),
            format!("GRANT CREATE USER, PROCESS ON *.* TO '{name}'@'%'"),
            format!("GRANT SELECT ON mysql.* TO '{name}'@'%'"),
        ],
    };
    admin_sql(engine, db(services, engine), &statements).await;
    secret_file(
        cell.dir.path(),
        "admin.json",
        &serde_json::json!({ "username": name, "password": password }).to_string(),
    );
}

/// Rotation with an admin holding only the documented grants (`docs/privileges.md`): setting
/// passwords, comparing a pair's grants, counting sessions, and a single user's undo.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn rotation_works_with_only_the_documented_grants() {
    let services = Services::load();
    for (engine, strategy) in [
        (Engine::Postgres, Strategy::Alternating),
        (Engine::Mysql, Strategy::Alternating),
        (Engine::Postgres, Strategy::Single),
    ] {
        let cell = Cell::new(&services, engine, strategy, Store::Vault).await;
        least_privilege_admin(&services, engine, &cell).await;
        let run = cell.vigil(&["--output", "json", "rotate", &cell.name]);
        run.assert_code(0);
        assert_eq!(run.json()["rotations"][0]["outcome"], "done", "{engine:?} {strategy:?}: {}", run.stdout());
        cell.assert_current_logs_in().await;
    }
    // The undo of a single-user rotation, with the same grants.
    let cell = Cell::new(&services, Engine::Postgres, Strategy::Single, Store::Vault).await;
    least_privilege_admin(&services, Engine::Postgres, &cell).await;
    cell.set_probe("SELECT * FROM pg_authid");
    let run = cell.vigil(&["--output", "json", "rotate", &cell.name]);
    run.assert_code(1);
    assert_eq!(run.json()["rotations"][0]["outcome"], "rolled_back", "{}", run.stdout());
    cell.assert_current_logs_in().await;
}

/// The stored value's `host` and `port` are the application's business: vigil connects where
/// the target says, whatever the secret holds.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn the_stored_value_never_chooses_where_vigil_connects() {
    let services = Services::load();
    let cell = Cell::new(&services, Engine::Postgres, Strategy::Single, Store::Vault).await;
    let current = cell.current().await;
    let value = serde_json::json!({
        "engine": "postgres", "host": "203.0.113.7", "port": 1, "dbname": "elsewhere",
        "username": current.username, "password": secrecy::ExposeSecret::expose_secret(&current.password),
    });
    services.seed(Store::Vault, cell.dir.path(), &cell.path, &value).await;
    let run = cell.vigil(&["--output", "json", "rotate", &cell.name]);
    run.assert_code(0);
    assert_eq!(run.json()["rotations"][0]["outcome"], "done", "{}", run.stdout());
    cell.assert_current_logs_in().await;
}

/// The stored value changes to name another user while a single-user rotation is in flight,
/// and the rotation then fails: its undo must not give that user the stored password.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_single_user_undo_never_changes_a_user_the_stored_value_names_instead() {
    let services = Services::load();
    let cell = Cell::new(&services, Engine::Postgres, Strategy::Single, Store::Vault).await;
    let crashed = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["--config", cell.config.to_str().unwrap(), "-q", "rotate", &cell.name])
        .env("VIGIL_FAILPOINT", "rotation.db_password:after:set")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    let victim = plant_another_user(&services, &cell).await;
    cell.set_probe("SELECT * FROM pg_authid");

    let run = cell.vigil(&["--output", "json", "rotate", "--resume"]);
    run.assert_code(1);
    let report = run.json();
    assert_eq!(report["rotations"][0]["outcome"], "stuck", "{report}");
    let reason = report["rotations"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("names user {}", victim.username)), "{report}");
    cell.engine.test_login(&victim, &[]).await.expect("the other user's password is untouched");
}

/// Crash points: before and after each step acts.
#[cfg(feature = "failpoints")]
const CRASH_POINTS: [&str; 8] = [
    "before:create",
    "after:create",
    "before:set",
    "after:set",
    "before:test",
    "after:test",
    "before:finish",
    "after:finish",
];

/// For every crash point: the process dies there (as `kill -9` would), and `--resume` brings the
/// secret to a state where the credential labelled current logs in and nothing is pending.
#[cfg(feature = "failpoints")]
async fn crash_everywhere(engine: Engine, strategy: Strategy, store: Store) {
    let services = Services::load();
    let cell = Cell::new(&services, engine, strategy, store).await;
    for point in CRASH_POINTS {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["--config", cell.config.to_str().unwrap(), "-q", "rotate", &cell.name, "--force"])
            .env("VIGIL_FAILPOINT", format!("rotation.db_password:{point}"))
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            output.status.code().is_none(),
            "{point}: the process should have aborted: {:?}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Alternating users: the current credential logs in even mid-rotation.
        if strategy == Strategy::Alternating {
            cell.assert_current_logs_in().await;
        }
        let resumed = cell.vigil(&["--output", "json", "rotate", "--resume"]);
        resumed.assert_code(0);
        let report = resumed.json();
        assert_eq!(report["rotations"].as_array().unwrap().len(), 1, "{point}: {report}");
        assert_eq!(report["rotations"][0]["outcome"], "done", "{point}: {report}");
        cell.assert_current_logs_in().await;
        assert!(cell.store.pending(&cell.path).await.unwrap().is_none(), "{point}: pending left behind");
    }
    cell.vigil(&["evidence", "verify"]).assert_code(0);
    let status = cell.vigil(&["--output", "json", "status"]).json();
    assert!(
        status["secrets"][0]["in_flight"].is_null() && status["secrets"][0]["needs_attention"].is_null(),
        "{status}"
    );
}

#[cfg(feature = "failpoints")]
macro_rules! crash_matrix {
    ($($name:ident: $engine:expr, $strategy:expr, $store:expr;)*) => {$(
        #[tokio::test]
        #[ignore = "needs services: cargo xtask test"]
        async fn $name() {
            crash_everywhere($engine, $strategy, $store).await;
        }
    )*};
}

#[cfg(feature = "failpoints")]
crash_matrix! {
    crash_postgres_single_user_aws: Engine::Postgres, Strategy::Single, Store::Aws;
    crash_postgres_single_user_vault: Engine::Postgres, Strategy::Single, Store::Vault;
    crash_postgres_alternating_aws: Engine::Postgres, Strategy::Alternating, Store::Aws;
    crash_postgres_alternating_vault: Engine::Postgres, Strategy::Alternating, Store::Vault;
    crash_mariadb_single_user_aws: Engine::Mysql, Strategy::Single, Store::Aws;
    crash_mariadb_single_user_vault: Engine::Mysql, Strategy::Single, Store::Vault;
    crash_mariadb_alternating_aws: Engine::Mysql, Strategy::Alternating, Store::Aws;
    crash_mariadb_alternating_vault: Engine::Mysql, Strategy::Alternating, Store::Vault;
}

/// A crash while undoing: the resumed rotation keeps unwinding and leaves the current
/// credential working.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_crash_while_unwinding_is_resumed_as_an_unwind() {
    let services = Services::load();
    let cell = Cell::new(&services, Engine::Postgres, Strategy::Single, Store::Vault).await;
    cell.set_probe("SELECT * FROM pg_authid");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["--config", cell.config.to_str().unwrap(), "-q", "rotate", &cell.name])
        .env("VIGIL_FAILPOINT", "rotation.db_password:undo:set")
        .output()
        .unwrap();
    assert!(output.status.code().is_none(), "{}", String::from_utf8_lossy(&output.stderr));
    let resumed = cell.vigil(&["--output", "json", "rotate", "--resume"]);
    resumed.assert_code(1);
    assert_eq!(resumed.json()["rotations"][0]["outcome"], "rolled_back");
    cell.assert_current_logs_in().await;
    assert!(cell.store.pending(&cell.path).await.unwrap().is_none());
}

/// What a login prober saw: attempts, failures, and failures that one retry did not cure.
#[derive(Debug, Default)]
struct Probed {
    attempts: u32,
    failures: u32,
    lasting: u32,
}

/// Logs in every 50 ms with whatever the store labels current, as a client that re-reads the
/// secret does; after a failure it re-reads and retries once, 250 ms later.
async fn probe_until(cell: &Cell, stop: tokio::sync::watch::Receiver<bool>) -> Probed {
    let mut probed = Probed::default();
    while !*stop.borrow() {
        probed.attempts += 1;
        if cell.engine.test_login(&cell.current().await, &[]).await.is_err() {
            probed.failures += 1;
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if cell.engine.test_login(&cell.current().await, &[]).await.is_err() {
                probed.lasting += 1;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    probed
}

/// Runs `rotations` rotations, `gap` apart, while a prober logs in.
async fn rotations_under_a_prober(strategy: Strategy, rotations: usize, gap: std::time::Duration) -> Probed {
    let services = Services::load();
    let cell = std::sync::Arc::new(Cell::new(&services, Engine::Postgres, strategy, Store::Aws).await);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let prober = {
        let cell = cell.clone();
        tokio::spawn(async move { probe_until(&cell, stopped).await })
    };
    for _ in 0..rotations {
        let cell = cell.clone();
        tokio::task::spawn_blocking(move || {
            cell.vigil(&["-q", "rotate", &cell.name, "--force"]).assert_code(0).output.status.success()
        })
        .await
        .unwrap();
        tokio::time::sleep(gap).await;
    }
    stop.send(true).unwrap();
    prober.await.unwrap()
}

/// Alternating users: a client that re-reads the secret never fails to log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn a_prober_sees_no_failed_login_across_20_alternating_rotations() {
    // Back to back: the strongest form; a client never lands between two users' passwords.
    let probed = rotations_under_a_prober(Strategy::Alternating, 20, std::time::Duration::ZERO).await;
    println!("alternating: {probed:?}");
    assert!(probed.attempts > 20, "{probed:?}");
    assert_eq!(probed.failures, 0, "{probed:?}");
}

/// Single user: the password changes before the store says so, so a login can fail in that
/// window (about 100 ms here), but one retry always succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn a_prober_never_fails_twice_in_a_row_across_single_user_rotations() {
    // Single-user windows last about 100 ms (set to finish, from the evidence timestamps);
    // rotations a second apart keep a retry from landing in the next rotation's window, which
    // real cadences (days) never come near.
    let probed = rotations_under_a_prober(Strategy::Single, 10, std::time::Duration::from_secs(1)).await;
    println!("single user: {probed:?}");
    assert!(probed.attempts > 10, "{probed:?}");
    assert_eq!(probed.lasting, 0, "{probed:?}");
}

/// At TRACE, across every cell of the matrix, no generated password appears in a log line, an
/// output, the evidence, the saga rows, or any process's command line while vigil runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: cargo xtask test"]
async fn no_password_leaks_anywhere_at_trace() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    let services = Services::load();
    let seen_cmdlines = Arc::new(Mutex::new(HashSet::<String>::new()));
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let scanner = {
        let seen = seen_cmdlines.clone();
        std::thread::spawn(move || {
            while stopped.try_recv().is_err() {
                for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
                    if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                        seen.lock().unwrap().insert(String::from_utf8_lossy(&cmdline).replace('\0', " "));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let mut passwords = Vec::new();
    let mut outputs = String::new();
    let cells = [Engine::Postgres, Engine::Mysql].into_iter().flat_map(|engine| {
        [Strategy::Single, Strategy::Alternating].into_iter().flat_map(move |strategy| {
            [Store::Aws, Store::Vault].into_iter().map(move |store| (engine, strategy, store))
        })
    });
    for (engine, strategy, store) in cells {
        let cell = Cell::new(&services, engine, strategy, store).await;
        passwords.push(secrecy::ExposeSecret::expose_secret(&cell.current().await.password).to_owned());
        for _ in 0..2 {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
                .args(["--config", cell.config.to_str().unwrap(), "-vvv", "rotate", &cell.name, "--force"])
                .env("RUST_LOG", "trace")
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            outputs.push_str(&String::from_utf8_lossy(&output.stdout));
            outputs.push_str(&String::from_utf8_lossy(&output.stderr));
            passwords.push(secrecy::ExposeSecret::expose_secret(&cell.current().await.password).to_owned());
        }
        let evidence = cell.vigil(&["--output", "json", "evidence", "list", "--limit", "100000"]);
        outputs.push_str(&evidence.stdout());
        for args in [&["--output", "json", "status"][..], &["-vvv", "rotate", "--check"][..]] {
            let run = cell.vigil(args);
            outputs.push_str(&run.all_output());
        }
        let db = std::fs::read(cell.dir.path().join("data/evidence.db")).unwrap();
        outputs.push_str(&String::from_utf8_lossy(&db));
    }
    stop.send(()).unwrap();
    scanner.join().unwrap();
    assert!(outputs.len() > 10_000, "TRACE produced suspiciously little output");
    // Statement logging is off where passwords are set: no verifier or hash reaches a log.
    assert!(!outputs.contains("SCRAM-SHA-256$"), "a PostgreSQL password verifier appears in the output");
    assert!(!outputs.contains("IDENTIFIED BY PASSWORD"), "a MariaDB password hash appears in the output");
    let cmdlines = seen_cmdlines.lock().unwrap();
    for password in &passwords {
        assert!(password.len() >= 16);
        assert!(!outputs.contains(password.as_str()), "a password appears in logs, output or the evidence store");
        assert!(!cmdlines.iter().any(|c| c.contains(password.as_str())), "a password appears on a command line");
    }
}

/// Transient failures are retried within the step; the rotation then completes.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn transient_failures_are_retried_within_the_step() {
    let cell = Cell::new(&Services::load(), Engine::Postgres, Strategy::Alternating, Store::Aws).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["--config", cell.config.to_str().unwrap(), "--output", "json", "rotate", &cell.name])
        .env("VIGIL_FAULT", "rotation.db_password:set:2")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let failed =
        cell.vigil(&["--output", "json", "evidence", "list", "--kind", "rotation.step", "--limit", "100"]).json();
    assert!(
        failed.as_array().unwrap().iter().all(|r| r["outcome"] != "failed"),
        "retries are not failures of the step"
    );
    cell.assert_current_logs_in().await;
}

/// When retries run out, the rotation is abandoned cleanly: the stage removed, the secret
/// flagged, the current credential working; the next attempt is a new rotation with a new value.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn exhausted_retries_abandon_the_rotation_and_the_next_starts_fresh() {
    let cell = Cell::new(&Services::load(), Engine::Mysql, Strategy::Single, Store::Vault).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["--config", cell.config.to_str().unwrap(), "--output", "json", "rotate", &cell.name])
        .env("VIGIL_FAULT", "rotation.db_password:test:99")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let failed_rotation = report["rotations"][0]["rotation"].as_str().unwrap().to_owned();
    assert_eq!(report["rotations"][0]["outcome"], "rolled_back");
    assert!(report["rotations"][0]["reason"].as_str().unwrap().contains("after 5 attempts"), "{report}");
    assert!(cell.store.pending(&cell.path).await.unwrap().is_none(), "the stage is removed");
    let before = cell.assert_current_logs_in().await;
    let status = cell.vigil(&["--output", "json", "status"]).json();
    assert!(status["secrets"][0]["needs_attention"].as_str().unwrap().contains("after 5 attempts"), "{status}");

    let next = cell.vigil(&["--output", "json", "rotate", &cell.name]);
    next.assert_code(0);
    let next = next.json();
    assert_ne!(next["rotations"][0]["rotation"].as_str().unwrap(), failed_rotation, "a new rotation");
    let after = cell.assert_current_logs_in().await;
    assert_ne!(
        secrecy::ExposeSecret::expose_secret(&after.password),
        secrecy::ExposeSecret::expose_secret(&before.password)
    );
    assert!(
        cell.vigil(&["--output", "json", "status"]).json()["secrets"][0]["needs_attention"].is_null(),
        "cleared by success"
    );
}

/// `--check` finds a password changed out of band before the next rotation does.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn the_drift_check_reports_an_out_of_band_change() {
    let cell = Cell::new(&Services::load(), Engine::Postgres, Strategy::Single, Store::Vault).await;
    cell.vigil(&["rotate", "--check"]).assert_code(0);
    cell.engine.set_password(&cell.user, &SecretString::from("changed-by-hand-1234".to_owned())).await.unwrap();
    let check = cell.vigil(&["--output", "json", "rotate", "--check"]);
    check.assert_code(1);
    let report = check.json();
    assert_eq!(report[0]["ok"], false, "{report}");
    assert!(report[0]["problem"].as_str().unwrap().contains("cannot log in"), "{report}");
    let recorded = cell.vigil(&["--output", "json", "evidence", "list", "--kind", "rotation.check"]).json();
    assert_eq!(recorded.as_array().unwrap().last().unwrap()["outcome"], "failed");
    // A rotation sets a fresh password and the check passes again.
    cell.vigil(&["rotate", &cell.name]).assert_code(0);
    cell.vigil(&["rotate", "--check"]).assert_code(0);
}

/// `--all-due` rotates what never rotated, then finds nothing due.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn all_due_rotates_only_what_is_due() {
    let cell = Cell::new(&Services::load(), Engine::Mysql, Strategy::Alternating, Store::Aws).await;
    let first = cell.vigil(&["--output", "json", "rotate", "--all-due"]);
    first.assert_code(0);
    assert_eq!(first.json()["rotations"].as_array().unwrap().len(), 1);
    let second = cell.vigil(&["rotate", "--all-due"]);
    second.assert_code(0);
    assert!(second.stdout().contains("nothing to do"), "{}", second.stdout());
}

/// Two users of an alternating pair that may do different things are not flipped: the
/// application would gain or lose privileges with the flip.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_pair_whose_grants_differ_is_not_flipped() {
    let services = Services::load();
    let cell = Cell::new(&services, Engine::Postgres, Strategy::Alternating, Store::Vault).await;
    let before = cell.assert_current_logs_in().await;
    admin_sql(Engine::Postgres, &services.postgres, &[format!("ALTER ROLE {}_clone CREATEDB", cell.user)]).await;
    let run = cell.vigil(&["rotate", &cell.name]);
    run.assert_code(1);
    assert!(run.stderr().contains("different privileges") && run.stderr().contains("createdb"), "{}", run.stderr());
    assert_eq!(cell.assert_current_logs_in().await.username, before.username);
    assert!(cell.store.pending(&cell.path).await.unwrap().is_none(), "refused before anything was staged");
}

/// Ctrl-C while a step is in flight: the step finishes and its outcome is recorded, no further
/// step starts, vigil exits 130, and `--resume` completes the rotation; the credential labelled
/// current logs in before, during and after.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn sigint_mid_step_finishes_the_step_and_resume_completes_the_rotation() {
    let services = Services::load();
    let cell = Cell::new(&services, Engine::Postgres, Strategy::Alternating, Store::Aws).await;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["--config", cell.config.to_str().unwrap(), "rotate", &cell.name, "--force"])
        .env("VIGIL_STEP_DELAY", "rotation.db_password:set:1500")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let outcome = crate::support::interrupt_when(child, "pausing inside the step");
    assert_eq!(outcome.code, Some(130), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("finishing the step in flight"), "{}", outcome.stderr);
    assert!(outcome.elapsed < std::time::Duration::from_secs(20), "exited within the grace: {:?}", outcome.elapsed);
    cell.assert_current_logs_in().await;
    let steps = step_records(&cell);
    assert!(
        steps.contains(&("set".to_owned(), "act".to_owned(), "succeeded".to_owned())),
        "set's outcome is recorded: {steps:?}"
    );
    assert!(!steps.iter().any(|(step, _, _)| step == "test"), "no step after set started: {steps:?}");
    let status = cell.vigil(&["--output", "json", "status"]).json();
    assert!(!status["secrets"][0]["in_flight"].is_null(), "the rotation is left in flight: {status}");
    // A backup set of the same name is not blocked by the secret's rotation in flight.
    backup_set_named(&services, &cell).await;
    let backup = cell.vigil(&["--output", "json", "backup", "run", &cell.name]);
    backup.assert_code(0);
    assert_eq!(backup.json()[0]["ended"]["outcome"], "done", "{}", backup.stdout());
    let resumed = cell.vigil(&["--output", "json", "rotate", "--resume"]);
    resumed.assert_code(0);
    assert_eq!(resumed.json()["rotations"][0]["outcome"], "done", "{}", resumed.stdout());
    cell.assert_current_logs_in().await;
    assert!(cell.store.pending(&cell.path).await.unwrap().is_none(), "nothing left pending");
    cell.vigil(&["evidence", "verify"]).assert_code(0);
}

/// The (step, phase, outcome) of every rotation step record in the cell's ledger.
#[cfg(feature = "failpoints")]
fn step_records(cell: &Cell) -> Vec<(String, String, String)> {
    let listed = cell.vigil(&["--output", "json", "evidence", "list", "--kind", "rotation.step", "--limit", "1000"]);
    listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let details: serde_json::Value = serde_json::from_str(r["details"].as_str().unwrap()).unwrap();
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (s(&details["step"]), s(&details["phase"]), s(&r["outcome"]))
        })
        .collect()
}

/// Adds a backup set named like the cell's secret, of a fresh database, to the cell's schedules.
#[cfg(feature = "failpoints")]
async fn backup_set_named(services: &Services, cell: &Cell) {
    let pg = &services.postgres;
    let database = unique("shared").replace('-', "_");
    admin_sql(Engine::Postgres, pg, &[format!("CREATE DATABASE {database}")]).await;
    let admin = serde_json::json!({ "username": pg.user, "password": pg.password }).to_string();
    let vigil::secret::SecretRef::File { path: admin } = secret_file(cell.dir.path(), "backup-admin.json", &admin)
    else {
        unreachable!()
    };
    std::fs::write(
        cell.dir.path().join("schedules/backup.toml"),
        format!(
            "[targets.shared]\nkind = \"postgres\"\nhost = \"{}\"\nport = {}\ndatabase = \"{database}\"\nadmin = {{ file = \"{}\" }}\n{}\n\n\
             [backups.{}]\ntarget = \"shared\"\nschedule = \"0 2 * * *\"\nstore = \"local\"\npath = \"../backups\"\n\
             key_service = \"local\"\nkey_file = \"../keys/backup.key\"\n",
            pg.host,
            pg.port,
            admin.display(),
            pg.tls_toml(),
            cell.name
        ),
    )
    .unwrap();
}

/// A rotation and a backup of one name, both killed mid-saga, are both finished by one call to
/// the saga registry's `resume_all`, as the daemon will call it at start.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn one_resume_all_finishes_a_rotation_and_a_backup_left_in_flight() {
    use tokio_util::sync::CancellationToken;
    let services = Services::load();
    let cell = Cell::new(&services, Engine::Postgres, Strategy::Alternating, Store::Aws).await;
    backup_set_named(&services, &cell).await;
    for (args, point) in [
        (vec!["rotate", cell.name.as_str(), "--force"], "rotation.db_password:after:set"),
        (vec!["backup", "run", cell.name.as_str()], "backup.dump:after:write"),
    ] {
        let killed = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["--config", cell.config.to_str().unwrap(), "-q"])
            .args(&args)
            .env("VIGIL_FAILPOINT", point)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(killed.status.code().is_none(), "{point}: not killed: {}", String::from_utf8_lossy(&killed.stderr));
    }
    let plan = vigil::config::load(&cell.config).unwrap().plan;
    let db = vigil::state::Db::open(&plan.evidence.store).await.unwrap();
    let clock = std::sync::Arc::new(vigil::clock::SystemClock);
    let ledger = vigil::evidence::lifecycle::open(&db, &plan.evidence.signing_key, clock).await.unwrap();
    let cancel = CancellationToken::new();
    let context = || vigil::context::Ctx::new(&plan, &db, &ledger, &vigil::clock::SystemClock, cancel.child_token());
    let rotator = vigil::rotation::Rotator::new(context());
    let backups = vigil::backup::Backups::new(context());
    let mut registry = vigil::saga::Registry::default();
    rotator.register(&mut registry);
    backups.register(&mut registry);
    let resumed = registry.resume_all(&db, &cancel).await.unwrap();
    let mut kinds: Vec<(&str, bool)> =
        resumed.iter().map(|r| (r.kind.as_str(), r.outcome == Ok(vigil::saga::Ended::Done))).collect();
    kinds.sort();
    assert_eq!(kinds, [("backup.dump", true), ("rotation.db_password", true)], "{resumed:?}");
    assert!(vigil::saga::in_flight(&db).await.unwrap().is_empty(), "nothing is left in flight");
    db.close().await;
    cell.assert_current_logs_in().await;
    let listed = cell.vigil(&["--output", "json", "backup", "list"]).json();
    assert_eq!(listed[0]["status"], "verified", "{listed}");
    cell.vigil(&["evidence", "verify"]).assert_code(0);
}
