//! Restore drills through the real binary: a fresh backup restored into a scratch database on
//! the private PostgreSQL and MariaDB servers, checked, measured and dropped; drills that fail
//! say why and leave no scratch database; a drill killed mid-way is finished by the next run.

use serde_json::Value;

use crate::backups::{Setup, mariadb_database, postgres_database};
use crate::support::{Database, Store, admin_sql, unique};

/// A scratch target on the private server of `engine`, administered as its admin, connecting to
/// the server's own database.
fn scratch_target(setup: &Setup, engine: &str, db: &Database) -> String {
    let admin_db = if engine == "postgres" { "postgres" } else { "mysql" };
    setup.target(engine, db, "scratch").replace("database = \"scratch\"", &format!("database = \"{admin_db}\""))
}

/// The scratch databases of drill `drill`'s runs on the server at `db` (`vigil_drill_NAME_` and
/// eight hex digits per run).
async fn drill_databases(engine: vigil::engines::Engine, db: &Database, drill: &str) -> Vec<String> {
    use sqlx::Connection as _;
    let prefix = format!("vigil_drill_{}_", drill.replace('-', "_"));
    let names: Vec<String> = match engine {
        vigil::engines::Engine::Postgres => {
            let mut conn = sqlx::PgConnection::connect_with(&db.pg_options()).await.unwrap();
            sqlx::query_scalar("SELECT datname::text FROM pg_database").fetch_all(&mut conn).await.unwrap()
        }
        vigil::engines::Engine::Mysql => {
            let mut conn = sqlx::MySqlConnection::connect_with(&db.mysql_options()).await.unwrap();
            sqlx::query_scalar("SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata")
                .fetch_all(&mut conn)
                .await
                .unwrap()
        }
    };
    names
        .into_iter()
        .filter(|name| {
            name.strip_prefix(&prefix).is_some_and(|run| run.len() == 8 && run.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect()
}

/// The one scratch database of drill `drill` a stopped run left.
#[cfg(feature = "failpoints")]
async fn left_database(engine: vigil::engines::Engine, db: &Database, drill: &str) -> String {
    let mut left = drill_databases(engine, db, drill).await;
    assert_eq!(left.len(), 1, "one run's scratch database: {left:?}");
    left.remove(0)
}

/// Whether `database` exists on the private server of `engine`.
async fn exists(engine: vigil::engines::Engine, db: &Database, database: &str) -> bool {
    use sqlx::Connection as _;
    match engine {
        vigil::engines::Engine::Postgres => {
            let mut conn = sqlx::PgConnection::connect_with(&db.pg_options()).await.unwrap();
            let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(database)
                .fetch_optional(&mut conn)
                .await
                .unwrap();
            found.is_some()
        }
        vigil::engines::Engine::Mysql => {
            let mut conn = sqlx::MySqlConnection::connect_with(&db.mysql_options()).await.unwrap();
            let found: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM information_schema.schemata WHERE schema_name = ?")
                    .bind(database)
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap();
            found.is_some()
        }
    }
}

/// A fresh pgbench database backed up to the local store as set `orders`, with drill `name`
/// restoring it into the scratch target; returns the private server.
#[cfg(feature = "failpoints")]
async fn backed_up_postgres_drill(setup: &Setup, name: &str) -> Database {
    let pg = setup.services.postgres.clone();
    let database = postgres_database(&setup.services, 1).await;
    let mut schedule = setup.target("postgres", &pg, &database);
    schedule.push_str(&scratch_target(setup, "postgres", &pg));
    schedule.push_str(&setup.set("orders", &database, "local", "local"));
    schedule.push_str(&drill(name, "orders", ""));
    setup.write_schedule(&schedule);
    setup.backup("orders");
    pg
}

/// `vigil drill run NAME` with `env` set (failpoints builds read `VIGIL_FAILPOINT` and
/// `VIGIL_CLOCK_OFFSET`).
#[cfg(feature = "failpoints")]
fn drill_run_with(setup: &Setup, name: &str, env: (&str, &str)) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["drill", "run", name])
        .current_dir(setup.path())
        .env(env.0, env.1)
        .output()
        .unwrap()
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn drill(name: &str, set: &str, extra: &str) -> String {
    format!("[drills.{name}]\nbackup = \"{set}\"\nscratch = \"scratch\"\n{extra}\n\n")
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["data"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

/// A PostgreSQL drill on a fresh backup passes: every table's rows come back, the assertion
/// holds, each phase is timed, RPO and RTO are measured against their targets, the scratch
/// database is gone afterwards, and the `drill.finished` record carries it all. A drill whose
/// assertion fails exits 1 naming it, and also leaves no scratch database. With no verified
/// backup, or a corrupt one, the drill fails at the step that could not complete and leaves
/// nothing behind.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn postgres_drills_pass_on_a_fresh_backup_and_fail_naming_the_cause() {
    use vigil::engines::Engine::Postgres;
    let setup = Setup::new().await;
    let pg = setup.services.postgres.clone();
    let database = postgres_database(&setup.services, 1).await;
    // An application user with a grant the dump carries, and one without: their credentials
    // are in the store, as the applications read them.
    let (app, stranger) = (unique("drill_app").replace('-', "_"), unique("drill_stranger").replace('-', "_"));
    admin_sql(
        Postgres,
        &Database { database: database.clone(), ..pg.clone() },
        &[
            format!("CREATE ROLE {app} LOGIN PASSWORD 'app-password-1'"),
            format!("GRANT SELECT ON pgbench_accounts TO {app}"),
            format!("CREATE ROLE {stranger} LOGIN PASSWORD 'stranger-password-1'"),
        ],
    )
    .await;
    for (user, password) in [(&app, "app-password-1"), (&stranger, "stranger-password-1")] {
        let value = serde_json::json!({ "username": user, "password": password });
        setup.services.seed(Store::Vault, setup.path(), &format!("drills/{user}"), &value).await;
    }
    let mut schedule = setup.target("postgres", &pg, &database);
    schedule.push_str(&scratch_target(&setup, "postgres", &pg));
    for (secret, user) in [("app", &app), ("stranger", &stranger)] {
        schedule.push_str(&format!(
            "[secrets.{secret}]\nkind = \"postgres_password\"\nstore = \"vault_kv\"\npath = \"drills/{user}\"\n\
             target = \"{database}\"\nusername = \"{user}\"\nprobes = [\"SELECT count(*) FROM pgbench_accounts\"]\n\n"
        ));
    }
    schedule.push_str(&setup.set("orders", &database, "local", "local"));
    schedule.push_str(&setup.set("never-run", &database, "local", "local"));
    schedule.push_str(&drill(
        "orders-restore",
        "orders",
        "assertions = [{ sql = \"SELECT count(*) FROM pgbench_branches\", expect = \"1\" }]\ncheck_credentials = [\"app\"]\nrestore_grants = true",
    ));
    schedule.push_str(&drill("orders-stranger", "orders", "check_credentials = [\"stranger\"]"));
    schedule.push_str(&drill("orders-parallel", "orders", "restore_jobs = 2"));
    schedule.push_str(&drill(
        "orders-wrong",
        "orders",
        "assertions = [{ sql = \"SELECT count(*) FROM notes WHERE id < 0\", expect = \"7\" }]",
    ));
    schedule.push_str(&drill("empty", "never-run", ""));
    setup.write_schedule(&schedule);
    let id = setup.backup("orders");

    // Nightly backups cannot meet the default 15-minute RPO: config check says so, the drill
    // run does not repeat it.
    let checked = setup.vigil(&["config", "check"]);
    assert!(
        checked.stderr().contains("drills.orders-restore.rpo: backup set `orders` runs on"),
        "{}",
        checked.stderr()
    );
    let run = setup.vigil(&["--output", "json", "drill", "run", "orders-restore"]);
    run.assert_code(0);
    assert!(!run.stderr().contains("RPO target"), "{}", run.stderr());
    let report = &run.json()[0];
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["data"]["backup"]["backup_id"], id.as_str());
    let counts = check(report, "row_counts");
    assert_eq!(counts["passed"], true, "{counts}");
    assert!(counts["detail"].as_str().unwrap().contains("5 tables"), "{counts}");
    assert_eq!(check(report, "assertion 1")["passed"], true);
    let amcheck = check(report, "pg_amcheck");
    assert_eq!(amcheck["passed"], true, "{amcheck}");
    assert!(amcheck["detail"].as_str().unwrap().contains("no corruption"), "{amcheck}");
    let credential = check(report, "credential app");
    assert_eq!(credential["passed"], true, "{credential}");
    assert!(credential["detail"].as_str().unwrap().contains("ran 1 probe"), "{credential}");
    assert!(!run.all_output().contains("app-password-1"), "a credential never reaches the output");
    let phases: Vec<&str> =
        report["data"]["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["locate", "restore", "check", "teardown"]);
    let (rpo, rto) = (report["data"]["rpo_secs"].as_i64().unwrap(), report["data"]["rto_secs"].as_f64().unwrap());
    assert!((0..900).contains(&rpo) && rto > 0.0 && rto < 3600.0, "{report}");
    let scratch = report["data"]["into"]["database"].as_str().unwrap().to_owned();
    let run_id = report["id"].as_str().unwrap();
    assert_eq!(scratch, vigil::engines::scratch::scratch_name("orders-restore", run_id), "a name per run");
    assert!(!exists(Postgres, &pg, &scratch).await, "the scratch database outlived its drill");

    // The evidence: started, every phase, and finished with the whole report.
    let finished = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "drill.finished"]).json();
    let details: Value = serde_json::from_str(finished[0]["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["data"]["verdict"]["passed"], true, "{details}");
    assert_eq!(details["data"]["checks"].as_array().unwrap().len(), 4, "counts, amcheck, credential, assertion");
    assert!(!finished.to_string().contains("app-password-1"), "nor the evidence");
    let steps = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "drill.step"]).json();
    assert_eq!(steps.as_array().unwrap().len(), 8, "an intent and an outcome per phase");
    setup.vigil(&["evidence", "verify"]).assert_code(0);

    // list and show read it back.
    let list = setup.vigil(&["--output", "json", "drill", "list"]).json();
    assert_eq!(list["orders-restore"]["id"], report["id"]);
    assert!(list["empty"].is_null(), "never run: {list}");
    let shown = setup.vigil(&["drill", "show", report["id"].as_str().unwrap()]);
    shown.assert_code(0);
    assert!(shown.stdout().contains("passed") && shown.stdout().contains("RPO"), "{}", shown.stdout());
    let shown = setup.vigil(&["--output", "json", "drill", "show", report["id"].as_str().unwrap()]).json();
    assert_eq!(shown["evidence"].as_array().unwrap().len(), 10, "started, 8 step records, finished: {shown}");
    setup.vigil(&["drill", "show", "no-such-run"]).assert_code(1);

    // restore_jobs = 2 stages the dump to a private file for pg_restore -j, and removes it.
    let parallel = setup.vigil(&["--output", "json", "drill", "run", "orders-parallel"]);
    parallel.assert_code(0);
    assert_eq!(check(&parallel.json()[0], "row_counts")["passed"], true);
    let staged: Vec<_> =
        walk(&setup.path().join("data")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "dump")).collect();
    assert!(staged.is_empty(), "a staged dump was left: {staged:?}");

    // A failed assertion fails the drill, names the assertion, and still tears down.
    let wrong = setup.vigil(&["drill", "run", "orders-wrong"]);
    wrong.assert_code(1);
    assert!(wrong.stderr().contains("drill orders-wrong failed: assertion 1 failed"), "{}", wrong.stderr());
    assert!(wrong.stderr().contains("expected \"7\""), "{}", wrong.stderr());
    assert!(drill_databases(Postgres, &pg, "orders-wrong").await.is_empty());
    // Its `drill.finished` record says it failed, so a ledger filtered on failures finds it.
    let ends = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "drill.finished"]).json();
    let outcome =
        |subject: &str| ends.as_array().unwrap().iter().find(|r| r["subject"] == subject).map(|r| r["outcome"].clone());
    assert_eq!(outcome("orders-wrong"), Some("failed".into()), "{ends}");
    assert_eq!(outcome("orders-restore"), Some("succeeded".into()), "{ends}");

    // A user the restored database grants nothing: its probe is refused, and the drill says so.
    let stranger_run = setup.vigil(&["drill", "run", "orders-stranger"]);
    stranger_run.assert_code(1);
    assert!(stranger_run.stderr().contains("credential stranger failed"), "{}", stranger_run.stderr());
    assert!(stranger_run.stderr().contains("permission denied"), "{}", stranger_run.stderr());

    // No verified backup: the drill fails at locate and says what to do.
    let empty = setup.vigil(&["drill", "run", "empty"]);
    empty.assert_code(1);
    assert!(empty.stderr().contains("locate: no verified backup of set never-run"), "{}", empty.stderr());

    // A corrupt object: the restore fails on the check that caught it, and the scratch
    // database it had created is dropped as the saga unwinds.
    let object = setup.local_object("orders", &id);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&object, bytes).unwrap();
    let corrupt = setup.vigil(&["drill", "run", "orders-restore"]);
    corrupt.assert_code(1);
    assert!(corrupt.stderr().contains("restore:"), "{}", corrupt.stderr());
    assert!(corrupt.stderr().contains("authenticat"), "names the failed check: {}", corrupt.stderr());
    assert!(
        drill_databases(Postgres, &pg, "orders-restore").await.is_empty(),
        "the unwound restore dropped its database"
    );
    let rolled_back = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "drill.rolled_back"]).json();
    assert_eq!(rolled_back.as_array().unwrap().len(), 2, "the empty and the corrupt drill");
    setup.vigil(&["evidence", "verify"]).assert_code(0);
}

/// A MariaDB drill passes: the dump replays through the `mariadb` client into the scratch
/// database and every table's rows match the backup's counts.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_mariadb_drill_passes_on_a_fresh_backup() {
    use vigil::engines::Engine::Mysql;
    let setup = Setup::new().await;
    let maria = setup.services.mariadb.clone();
    let database = mariadb_database(&setup.services).await;
    let mut schedule = setup.target("mysql", &maria, &database);
    schedule.push_str(&scratch_target(&setup, "mysql", &maria));
    schedule.push_str(&setup.set("shop", &database, "s3", "vault_transit"));
    schedule.push_str(&drill(
        "shop-restore",
        "shop",
        "assertions = [{ sql = \"SELECT COUNT(*) FROM orders WHERE total < 0\", expect = \"0\" }]",
    ));
    setup.write_schedule(&schedule);
    setup.backup("shop");
    let run = setup.vigil(&["--output", "json", "drill", "run", "shop-restore"]);
    run.assert_code(0);
    let report = &run.json()[0];
    assert_eq!(report["passed"], true, "{report}");
    let counts = check(report, "row_counts");
    assert!(counts["detail"].as_str().unwrap().contains("2 tables, 160000 rows"), "{counts}");
    assert!(drill_databases(Mysql, &maria, "shop-restore").await.is_empty());
}

/// A drill killed after each phase (failpoints) leaves its scratch database behind only until
/// the next `vigil drill run` of it, which finishes the one left in flight first, then runs its
/// own; `vigil drill resume` does the same for every drill.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_killed_drill_is_finished_by_the_next_run_and_leaves_no_scratch_database() {
    use vigil::engines::Engine::Postgres;
    let setup = Setup::new().await;
    let pg = backed_up_postgres_drill(&setup, "killed").await;
    for (when, step) in [
        ("before", "locate"),
        ("after", "locate"),
        ("before", "restore"),
        ("after", "restore"),
        ("after", "check"),
        ("before", "teardown"),
    ] {
        let failpoint = format!("drill.restore:{when}:{step}");
        let killed = drill_run_with(&setup, "killed", ("VIGIL_FAILPOINT", &failpoint));
        assert!(!killed.status.success(), "{failpoint}: the process was meant to die");
        let restored = matches!((when, step), ("after", "restore" | "check") | ("before", "teardown"));
        let left = drill_databases(Postgres, &pg, "killed").await;
        assert_eq!(left.len(), usize::from(restored), "{failpoint}: left behind as the kill left it: {left:?}");
        let next = if step == "check" { vec!["drill", "resume"] } else { vec!["drill", "run", "killed"] };
        let again = setup.vigil(&next);
        again.assert_code(0);
        assert!(
            drill_databases(Postgres, &pg, "killed").await.is_empty(),
            "{failpoint}: the scratch database survived"
        );
        let list = setup.vigil(&["--output", "json", "drill", "list"]).json();
        assert_eq!(list["killed"]["status"], "done", "{failpoint}: {list}");
    }
    // Every run ended in a record that says how: each killed run was finished by the next.
    let finished = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "drill.finished"]).json();
    assert!(finished.as_array().unwrap().len() >= 6, "{finished}");
    setup.vigil(&["evidence", "verify"]).assert_code(0);
}

/// pg_amcheck catches a restored database whose index no longer matches its table: the drill
/// is stopped before its checks (failpoints), an expression index's function is redefined in the
/// scratch database (as a corrupted page would disagree with its index), and the resumed drill
/// fails naming pg_amcheck's finding, then drops the database.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn pg_amcheck_failing_on_the_restored_database_fails_the_drill() {
    use vigil::engines::Engine::Postgres;
    let setup = Setup::new().await;
    let pg = setup.services.postgres.clone();
    let database = unique("amcheck").replace('-', "_");
    admin_sql(Postgres, &pg, &[format!("CREATE DATABASE {database}")]).await;
    let source = Database { database: database.clone(), ..pg.clone() };
    admin_sql(
        Postgres,
        &source,
        &[
            "CREATE FUNCTION shifted(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1'".to_owned(),
            "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 5000) g".to_owned(),
            "CREATE INDEX items_shifted ON items (shifted(id))".to_owned(),
        ],
    )
    .await;
    let mut schedule = setup.target("postgres", &pg, &database);
    schedule.push_str(&scratch_target(&setup, "postgres", &pg));
    schedule.push_str(&setup.set("items", &database, "local", "local"));
    schedule.push_str(&drill("items-restore", "items", ""));
    setup.write_schedule(&schedule);
    setup.backup("items");
    let killed = drill_run_with(&setup, "items-restore", ("VIGIL_FAILPOINT", "drill.restore:before:check"));
    assert!(!killed.status.success());
    let scratch = Database { database: left_database(Postgres, &pg, "items-restore").await, ..pg.clone() };
    admin_sql(
        Postgres,
        &scratch,
        &["CREATE OR REPLACE FUNCTION shifted(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 + 1'".to_owned()],
    )
    .await;
    let resumed = setup.vigil(&["drill", "resume"]);
    resumed.assert_code(1);
    assert!(resumed.stderr().contains("pg_amcheck failed: corruption"), "{}", resumed.stderr());
    assert!(drill_databases(Postgres, &pg, "items-restore").await.is_empty());
}

/// RDS drills against moto: from the set's newest snapshot, and to the instance's latest
/// restorable time, each into a temporary instance that is deleted afterwards. moto's instances
/// have no reachable endpoint, so the data checks are reported as not run (never as passed) and
/// the drill does not pass. A drill killed after its restore call deletes the instance on resume.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn rds_drills_restore_into_a_temporary_instance_and_delete_it() {
    let setup = Setup::new().await;
    let rds = aws_sdk_rds::Client::new(&setup.services.sdk_config().await);
    let source = unique("orders").to_lowercase();
    rds.create_db_instance()
        .db_instance_identifier(&source)
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .allocated_storage(20)
        .backup_retention_period(7)
        .master_username("admin")
        .master_user_password("not-a-real-password-1")
        .send()
        .await
        .unwrap();
    let admin = crate::support::secret_file(setup.path(), "rds-admin", r#"{"username":"admin","password":"x"}"#);
    let vigil::secret::SecretRef::File { path } = admin else { unreachable!() };
    setup.write_schedule(&format!(
        "[targets.orders-rds]\nkind = \"rds\"\nengine = \"postgres\"\ninstance_id = \"{source}\"\nhost = \"{source}.rds.internal\"\n\
         admin = {{ file = \"{}\" }}\n\n[backups.orders-snap]\ntarget = \"orders-rds\"\nschedule = \"0 3 * * *\"\n\n\
         [drills.from-snapshot]\nbackup = \"orders-snap\"\nsource = \"snapshot\"\nassertions = [{{ sql = \"SELECT 1\", expect = \"1\" }}]\n\n\
         [drills.to-latest]\nbackup = \"orders-snap\"\nsource = \"point_in_time\"\n",
        path.display()
    ));
    let instance_gone = |id: String| {
        let rds = rds.clone();
        async move { rds.describe_db_instances().db_instance_identifier(id).send().await.is_err() }
    };

    // Without a snapshot, the snapshot drill has nothing to restore.
    let none = setup.vigil(&["drill", "run", "from-snapshot"]);
    none.assert_code(1);
    assert!(none.stderr().contains("no available snapshot of set orders-snap"), "{}", none.stderr());

    setup.backup("orders-snap");
    for drill in ["from-snapshot", "to-latest"] {
        let run = setup.vigil(&["--output", "json", "drill", "run", drill]);
        run.assert_code(1);
        let report = &run.json()[0];
        assert_eq!(report["passed"], false, "{report}");
        assert_eq!(report["ended"]["outcome"], "done", "{drill}: every step ran: {report}");
        let data = &report["data"];
        let instance = data["into"]["instance"].as_str().unwrap().to_owned();
        assert!(instance.starts_with(&format!("vigil-drill-{drill}-")), "{instance}");
        let checks = data["checks"].as_array().unwrap();
        assert!(checks.iter().all(|c| c["passed"] == false && c["ran"] == false), "{drill}: {checks:?}");
        assert!(report["reason"].as_str().unwrap().contains("data not run"), "{report}");
        assert!(data["rpo_secs"].as_i64().is_some() && data["rto_secs"].as_f64().is_some(), "{data}");
        let phases: Vec<&str> =
            data["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
        assert_eq!(phases, ["locate", "restore", "check", "teardown"]);
        assert!(instance_gone(instance).await, "{drill}: the temporary instance outlived its drill");
    }
    let from_snapshot = setup.vigil(&["--output", "json", "drill", "list"]).json();
    assert_eq!(from_snapshot["from-snapshot"]["data"]["checks"].as_array().unwrap().len(), 2, "data and the assertion");

    // Killed after the restore call: the resumed drill deletes the instance it made.
    let killed = drill_run_with(&setup, "to-latest", ("VIGIL_FAILPOINT", "drill.restore:after:restore"));
    assert!(!killed.status.success());
    let runs = setup.vigil(&["--output", "json", "drill", "list"]).json();
    let instance = runs["to-latest"]["data"]["into"]["instance"].as_str().unwrap().to_owned();
    assert!(!instance_gone(instance.clone()).await, "the killed drill left its instance, as a crash would");
    setup.vigil(&["drill", "resume"]).assert_code(1);
    assert!(instance_gone(instance).await, "the resumed drill deleted its instance");
    setup.vigil(&["evidence", "verify"]).assert_code(0);
}

/// Drills run with a scratch admin holding exactly the grants `docs/privileges.md` lists:
/// PostgreSQL `CREATEDB` and `CREATEROLE` (for the drill's checking role: without it the drill
/// rolls back naming it), MariaDB `ALL` on `vigil\_drill\_%`.*. The MariaDB drill passes. The
/// PostgreSQL drill restores and counts every row; its pg_amcheck check fails, saying that the
/// untrusted amcheck extension must be put in template1 by a superuser, as the document says.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn drills_work_with_a_scratch_admin_holding_only_the_documented_grants() {
    use vigil::engines::Engine::{Mysql, Postgres};
    let setup = Setup::new().await;
    for engine in [Postgres, Mysql] {
        let (kind, server, database) = match engine {
            Postgres => ("postgres", setup.services.postgres.clone(), postgres_database(&setup.services, 1).await),
            Mysql => ("mysql", setup.services.mariadb.clone(), mariadb_database(&setup.services).await),
        };
        let user = unique("drill").replace('-', "_");
        let password = format!("Drill-{}", unique("pw"));
        let grants = match engine {
            Postgres => vec![format!("CREATE ROLE {user} LOGIN CREATEDB PASSWORD '{password}'")],
            Mysql => vec![
                format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
                format!("GRANT ALL PRIVILEGES ON `vigil\\_drill\\_%`.* TO '{user}'@'%'"),
            ],
        };
        admin_sql(engine, &server, &grants).await;
        let scratch_admin = Database { user: user.clone(), password: password.clone(), ..server.clone() };
        let mut scratch = scratch_target(&setup, kind, &scratch_admin);
        if engine == Mysql {
            // The drill user may not enter `mysql`: it connects to no database.
            scratch = scratch.replace("database = \"mysql\"\n", "");
        }
        let name = format!("least-{kind}");
        let mut schedule = setup.target(kind, &server, &database);
        schedule.push_str(&scratch);
        schedule.push_str(&setup.set(&name, &database, "local", "local"));
        schedule.push_str(&drill(&name, &name, ""));
        setup.write_schedule(&schedule);
        setup.backup(&name);
        if engine == Postgres {
            // Without CREATEROLE (as documented before drills made a checking role), the drill
            // rolls back saying what the admin lacks, and leaves no database.
            let refused = setup.vigil(&["drill", "run", &name]);
            refused.assert_code(1);
            assert!(refused.stderr().contains(&format!("{user} needs CREATEROLE")), "{}", refused.stderr());
            assert!(drill_databases(engine, &server, &format!("least-{kind}")).await.is_empty());
            admin_sql(engine, &server, &[format!("ALTER ROLE {user} CREATEROLE")]).await;
        }
        let run = setup.vigil(&["--output", "json", "drill", "run", &name]);
        let report = &run.json()[0];
        assert_eq!(check(report, "row_counts")["passed"], true, "{engine:?}: {report}");
        match engine {
            Mysql => assert_eq!(report["passed"], true, "{report}"),
            Postgres => {
                let amcheck = check(report, "pg_amcheck");
                assert_eq!(amcheck["passed"], false, "{amcheck}");
                assert!(amcheck["detail"].as_str().unwrap().contains("template1"), "{amcheck}");
                assert_eq!(report["reason"].as_str().unwrap().matches("failed").count(), 1, "only amcheck: {report}");
            }
        }
        assert!(
            drill_databases(engine, &server, &format!("least-{kind}")).await.is_empty(),
            "{engine:?}: the scratch database outlived its drill: {report}"
        );
    }
}

/// The row-count check names the table and both counts when the restored copy is not the
/// backup's state: the drill is stopped before its checks (failpoints), rows are deleted from the
/// scratch database, and the resumed drill fails on row_counts.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_restored_copy_whose_rows_differ_from_the_backup_fails_the_drill() {
    use vigil::engines::Engine::Postgres;
    let setup = Setup::new().await;
    let pg = backed_up_postgres_drill(&setup, "counted").await;
    let killed = drill_run_with(&setup, "counted", ("VIGIL_FAILPOINT", "drill.restore:before:check"));
    assert!(!killed.status.success());
    let scratch = Database { database: left_database(Postgres, &pg, "counted").await, ..pg.clone() };
    admin_sql(Postgres, &scratch, &["DELETE FROM pgbench_branches".to_owned()]).await;
    let resumed = setup.vigil(&["drill", "resume"]);
    resumed.assert_code(1);
    assert!(
        resumed.stderr().contains("row_counts failed: public.pgbench_branches: backup 1, restored 0"),
        "{}",
        resumed.stderr()
    );
    assert!(drill_databases(Postgres, &pg, "counted").await.is_empty());
}

/// The newest verified backup older than the RPO target fails the drill with the figures: run an
/// hour later (the binary's clock moved ahead, failpoints), a backup taken just now is an hour old.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_backup_older_than_the_rpo_target_fails_the_drill() {
    let setup = Setup::new().await;
    backed_up_postgres_drill(&setup, "late").await;
    let late = drill_run_with(&setup, "late", ("VIGIL_CLOCK_OFFSET", "3600"));
    let stderr = String::from_utf8_lossy(&late.stderr);
    assert_eq!(late.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("drill late failed: RPO 1h exceeds the target 15m"), "{stderr}");
    assert!(!stderr.contains("row_counts failed"), "the data itself was fine: {stderr}");
}

/// A database whose owner plants code for a drill to run: a view an assertion reads, calling a
/// function that returns `current_user`. Stopped after its restore (failpoints), the drill's
/// scratch database already refuses `PUBLIC` (a role of the scratch server granted nothing
/// cannot connect). Resumed, the assertion reads the view as the drill's own checking role,
/// never as the scratch admin (a superuser here); the `check_credentials` user is let in by
/// name; afterwards neither the database nor the checking role is left.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_dump_drill_reads_planted_code_as_its_own_role_in_a_database_closed_to_public() {
    use sqlx::Connection as _;
    use vigil::engines::Engine::Postgres;
    let setup = Setup::new().await;
    let pg = setup.services.postgres.clone();
    let (database, owner) = (unique("planted").replace('-', "_"), unique("planter").replace('-', "_"));
    admin_sql(
        Postgres,
        &pg,
        &[
            format!("CREATE ROLE {owner} LOGIN PASSWORD 'planter-password-1'"),
            format!("CREATE DATABASE {database} OWNER {owner}"),
        ],
    )
    .await;
    let planter = Database {
        database: database.clone(),
        user: owner.clone(),
        password: "planter-password-1".into(),
        ..pg.clone()
    };
    admin_sql(
        Postgres,
        &planter,
        &[
            "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 10) g".to_owned(),
            "CREATE FUNCTION whoami() RETURNS text LANGUAGE sql AS 'SELECT current_user::text'".to_owned(),
            "CREATE VIEW shadow AS SELECT whoami() AS who".to_owned(),
        ],
    )
    .await;
    let value = serde_json::json!({ "username": owner, "password": "planter-password-1" });
    setup.services.seed(Store::Vault, setup.path(), &format!("drills/{owner}"), &value).await;
    let mut schedule = setup.target("postgres", &pg, &database);
    schedule.push_str(&scratch_target(&setup, "postgres", &pg));
    schedule.push_str(&format!(
        "[secrets.planter]\nkind = \"postgres_password\"\nstore = \"vault_kv\"\npath = \"drills/{owner}\"\n\
         target = \"{database}\"\nusername = \"{owner}\"\n\n"
    ));
    schedule.push_str(&setup.set("planted", &database, "local", "local"));
    schedule.push_str(&drill(
        "planted",
        "planted",
        "assertions = [{ sql = \"SELECT who FROM shadow\", expect = \"anyone\" }]\ncheck_credentials = [\"planter\"]",
    ));
    setup.write_schedule(&schedule);
    setup.backup("planted");

    let killed = drill_run_with(&setup, "planted", ("VIGIL_FAILPOINT", "drill.restore:after:restore"));
    assert!(!killed.status.success());
    let scratch = left_database(Postgres, &pg, "planted").await;
    let mut conn = sqlx::PgConnection::connect_with(&pg.pg_options()).await.unwrap();
    let public: bool = sqlx::query_scalar("SELECT has_database_privilege('public', $1, 'CONNECT')")
        .bind(&scratch)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!public, "PUBLIC may connect to the scratch database");
    let outsider = unique("outsider").replace('-', "_");
    admin_sql(Postgres, &pg, &[format!("CREATE ROLE {outsider} LOGIN PASSWORD 'outsider-password-1'")]).await;
    let as_outsider = Database {
        database: scratch.clone(),
        user: outsider.clone(),
        password: "outsider-password-1".into(),
        ..pg.clone()
    };
    let refused = sqlx::PgConnection::connect_with(&as_outsider.pg_options()).await.err().map(|e| e.to_string());
    assert!(refused.as_deref().is_some_and(|e| e.contains("permission denied for database")), "{refused:?}");

    setup.vigil(&["drill", "resume"]).assert_code(1);
    let runs = setup.vigil(&["--output", "json", "drill", "list"]).json();
    let data = &runs["planted"]["data"];
    let role = data["check_role"].as_str().unwrap().to_owned();
    let assertion = data["checks"].as_array().unwrap().iter().find(|c| c["name"] == "assertion 1").unwrap();
    let detail = assertion["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("returned \"{role}\"")), "the view ran as {detail}, not the checking role");
    let credential = data["checks"].as_array().unwrap().iter().find(|c| c["name"] == "credential planter").unwrap();
    assert_eq!(credential["passed"], true, "{credential}");
    assert!(!exists(Postgres, &pg, &scratch).await, "the scratch database outlived its drill");
    let left: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(&role)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, None, "the checking role {role} outlived its drill");
}

/// A drill whose scratch target cannot be reached (its database does not exist) fails before
/// anything is made on it, naming the target, and rolls back: never stuck at an undo that cannot
/// connect either, and a later run fails the same clean way instead of on the first one's undo.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_drill_whose_scratch_target_cannot_be_reached_rolls_back_and_never_sticks() {
    let setup = Setup::new().await;
    let pg = setup.services.postgres.clone();
    let database = postgres_database(&setup.services, 1).await;
    let mut schedule = setup.target("postgres", &pg, &database);
    schedule.push_str(
        &setup.target("postgres", &pg, "scratch").replace("database = \"scratch\"", "database = \"vigil_no_such_db\""),
    );
    schedule.push_str(&setup.set("orders", &database, "local", "local"));
    schedule.push_str(&drill("unreachable", "orders", ""));
    setup.write_schedule(&schedule);
    setup.backup("orders");
    for _ in 0..2 {
        let run = setup.vigil(&["drill", "run", "unreachable"]);
        run.assert_code(1);
        let stderr = run.stderr();
        assert!(stderr.contains("locate:") && stderr.contains("vigil_no_such_db"), "{stderr}");
        assert!(!stderr.contains("undoing") && !stderr.contains(" at line "), "{stderr}");
        let list = setup.vigil(&["--output", "json", "drill", "list"]).json();
        assert_eq!(list["unreachable"]["status"], "rolled_back", "{list}");
    }
}
