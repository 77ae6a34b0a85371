//! `cargo xtask demo`: the whole product as it stands, end to end on the local stack.
//!
//! Every capability vigil gains extends this command, so that it always shows the product as
//! a user would run it: real services, the example schedules, the real `vigil` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

use crate::cargo;
use crate::services::{self, State};

mod daemon;
mod keys;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop the services when the demo ends (by default they stay up for exploring).
    #[arg(long)]
    down: bool,
    /// Leave `vigil run` serving at the end, until Ctrl-C, and print its URLs.
    #[arg(long, conflicts_with = "down")]
    serve: bool,
}

impl DemoArgs {
    pub fn run(self, root: &Path) -> anyhow::Result<ExitCode> {
        step("1. Real local services: moto (AWS APIs), OpenBao (Vault API), PostgreSQL 15, MariaDB");
        let state = services::up(root)?;

        step("2. Build vigil");
        let mut build = cargo();
        build.current_dir(root).args(["build", "--quiet", "--package", "vigil", "--bin", "vigil"]);
        if !build.status().context("run cargo build")?.success() {
            bail!("cargo build failed");
        }
        let vigil = root.join("target/debug/vigil");

        step("3. A configuration for the local stack: target/demo/vigil.toml + the example schedules/");
        let demo = root.join("target/demo");
        let issuer = keys::DemoIssuer::start(root, &demo)?;
        write_demo_config(root, &demo, &state, &issuer.url)?;
        println!("   wrote {} and {}", demo.join("vigil.toml").display(), demo.join("schedules").display());
        println!(
            "   (the schedules are ./schedules/*.toml, pointed at the private servers and a demo API-key issuer, with\n    the overlap and JWKS waits cut to seconds)"
        );

        step("4. vigil config check: the resolved plan, with each secret's cadence and next due time");
        let status = vigil_command(&vigil, &demo, &state).args(["config", "check"]).status()?;
        if !status.success() {
            bail!("vigil config check failed on the demo configuration");
        }

        step("5. The same as JSON, for scripts (first lines)");
        let output = vigil_command(&vigil, &demo, &state).args(["--output", "json", "config", "check"]).output()?;
        let json = String::from_utf8_lossy(&output.stdout);
        for line in json.lines().take(8) {
            println!("   {line}");
        }
        println!("   ...");

        step("6. A broken configuration: every mistake reported with file:line:column and field");
        let broken = demo.join("broken");
        write_broken_config(&demo, &broken)?;
        let output = vigil_command(&vigil, &broken, &state).args(["config", "check"]).output()?;
        print!("{}", String::from_utf8_lossy(&output.stderr));
        println!("   (exit code {})", output.status.code().unwrap_or(-1));

        evidence(&vigil, &demo, &state)?;
        rotation(root, &vigil, &demo, &state)?;
        keys::rotate(root, &vigil, &demo, &state, &issuer)?;
        drop(issuer);

        backups(root, &vigil, &demo, &state)?;
        drills(&vigil, &demo, &state)?;
        pitr(root, &vigil, &demo, &state)?;
        daemon::run(&vigil, &demo, &state, self.serve)?;

        report(&vigil, &demo, &state)?;

        if self.down {
            step("27. Services down");
            services::down(root)?;
        } else {
            println!(
                "\nThe services are still up: `eval \"$(cargo xtask services env)\"` to use them, `cargo xtask services down` to stop them."
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Step 26: the compliance report of the demo's day, its bundle verified offline, and an edited
/// copy caught.
fn report(vigil: &Path, demo: &Path, state: &State) -> anyhow::Result<()> {
    step("26. The compliance report: exported, its bundle verified offline, an edited copy caught");
    let now = chrono::Utc::now();
    let from = (now - chrono::Duration::days(1)).format("%Y-%m-%d").to_string();
    let to = (now + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let out = demo.join("report");
    // A fresh folder: the export makes it 0700 and refuses one an earlier vigil left open (0755).
    let _ = std::fs::remove_dir_all(&out);
    let exported = show(vigil, demo, state, &["report", "export", "--from", &from, "--to", &to, "--out", "report"])?;
    if !exported.status.success() {
        bail!("vigil report export failed");
    }
    let vkey = vigil_command(vigil, demo, state).args(["evidence", "pubkey", "--vkey"]).output()?;
    std::fs::write(demo.join("vigil.vkey"), &vkey.stdout)?;
    println!("   open {} in a browser; the JSON, CSV and OSCAL files are beside it", out.join("report.html").display());

    // The auditor's side: a folder with the bundle and the key, no configuration.
    let auditor = demo.join("auditor");
    let _ = std::fs::remove_dir_all(&auditor);
    std::fs::create_dir_all(&auditor)?;
    std::fs::copy(out.join("bundle.tar"), auditor.join("bundle.tar"))?;
    std::fs::copy(demo.join("vigil.vkey"), auditor.join("vigil.vkey"))?;
    let offline = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        println!("   (in {}, no configuration) $ vigil {}", auditor.display(), args.join(" "));
        let output = Command::new(vigil).current_dir(&auditor).env_remove("VIGIL_CONFIG").args(args).output()?;
        for line in
            String::from_utf8_lossy(&output.stdout).lines().chain(String::from_utf8_lossy(&output.stderr).lines())
        {
            println!("     {line}");
        }
        Ok(output)
    };
    if !offline(&["evidence", "verify", "--bundle", "bundle.tar", "--vkey-file", "vigil.vkey"])?.status.success() {
        bail!("the demo's bundle did not verify");
    }
    // A backup's size edited in place in a copy of the bundle.
    let mut bytes = std::fs::read(auditor.join("bundle.tar"))?;
    let marker = b"plaintext_bytes\\\":";
    let at = bytes.windows(marker.len()).position(|w| w == marker).context("a backup record in the bundle")?;
    let digit = at + marker.len();
    bytes[digit] = if bytes[digit] == b'9' { b'8' } else { b'9' };
    std::fs::write(auditor.join("edited.tar"), &bytes)?;
    println!("   a copy with one backup's size changed in records.jsonl:");
    if offline(&["evidence", "verify", "--bundle", "edited.tar", "--vkey-file", "vigil.vkey"])?.status.success() {
        bail!("the edited bundle verified");
    }
    Ok(())
}

/// Steps 7 to 9: the evidence ledger, from its first record to a caught forgery.
fn evidence(vigil: &Path, demo: &Path, state: &State) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        println!("   $ vigil {}", args.join(" "));
        let output = vigil_command(vigil, demo, state).args(["-q"]).args(args).output()?;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            println!("     {line}");
        }
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("     {line}");
        }
        Ok(output)
    };
    let checked = |output: std::process::Output, what: &str| -> anyhow::Result<String> {
        if !output.status.success() {
            bail!("{what} failed");
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };

    step("7. The evidence ledger: records hash-chained, checkpoints signed (Ed25519, C2SP signed notes)");
    let vkey = checked(run(&["evidence", "pubkey", "--vkey"])?, "vigil evidence pubkey")?;
    for (subject, minutes) in [("orders-pg", "11"), ("billing-mariadb", "7")] {
        let detail = format!("minutes={minutes}");
        checked(
            run(&[
                "evidence",
                "append",
                "--kind",
                "manual.restore_test",
                "--subject",
                subject,
                "--outcome",
                "succeeded",
                "--detail",
                &detail,
            ])?,
            "vigil evidence append",
        )?;
    }
    checked(run(&["evidence", "list"])?, "vigil evidence list")?;
    checked(run(&["evidence", "checkpoint"])?, "vigil evidence checkpoint")?;
    checked(run(&["evidence", "prove", "2"])?, "vigil evidence prove")?;

    step("8. vigil evidence verify, trusting only the public key printed above");
    checked(run(&["evidence", "verify", "--vkey", &vkey])?, "vigil evidence verify")?;

    step("9. A copy of the ledger with one record edited: verification names the record");
    let tampered = demo.join("tampered");
    if tampered.exists() {
        std::fs::remove_dir_all(&tampered)?;
    }
    std::fs::create_dir_all(tampered.join("schedules"))?;
    let copy = tampered.join("evidence.db");
    std::fs::copy(demo.join("data/evidence.db"), &copy)?;
    std::fs::write(
        tampered.join("vigil.toml"),
        format!("[controller]\ndata_dir = \"data\"\n\n[evidence]\nurl = \"sqlite://{}\"\n", copy.display()),
    )?;
    std::fs::write(tampered.join("schedules/none.toml"), "")?;
    // Python's sqlite3 module plays the forger: the restore test "took" 1 minute, not 11.
    let forged = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE evidence_records SET details = '{\\\"minutes\\\":\\\"1\\\"}' WHERE seq = 2\"); c.commit()")
        .arg(&copy)
        .status()?;
    if !forged.success() {
        bail!("could not edit the copy with python3's sqlite3 module");
    }
    println!("   (record 2's details changed from minutes=11 to minutes=1 in {})", copy.display());
    let output = vigil_command(vigil, &tampered, state).args(["-q", "evidence", "verify", "--vkey", &vkey]).output()?;
    print!("{}", String::from_utf8_lossy(&output.stderr));
    println!("   (exit code {})", output.status.code().unwrap_or(-1));
    if output.status.success() {
        bail!("the forged ledger verified: this is a bug");
    }
    Ok(())
}

/// Steps 10 to 14: database users and secrets as an operator would have them, then rotations
/// in both stores on both engines while an application-like prober logs in every 50 ms.
fn rotation(root: &Path, vigil: &Path, demo: &Path, state: &State) -> anyhow::Result<()> {
    let (Some(moto), Some(bao), Some(pg), Some(maria)) = (&state.moto, &state.openbao, &state.postgres, &state.mariadb)
    else {
        bail!("services are not all up");
    };
    step("10. An operator's starting point: database users, and their credentials in the stores");
    let password = || services::random_hex(16);
    let (orders_app, orders_reports, billing_app, billing_reports) =
        (password()?, password()?, password()?, password()?);
    let pg_sql = format!(
        "DROP DATABASE IF EXISTS orders; DROP DATABASE IF EXISTS orders_drill;\n\
         DROP ROLE IF EXISTS orders_app; DROP ROLE IF EXISTS orders_app_clone; DROP ROLE IF EXISTS orders_reports; DROP ROLE IF EXISTS orders_rw;\n\
         CREATE ROLE orders_rw; CREATE DATABASE orders; CREATE DATABASE orders_drill;\n\
         CREATE ROLE orders_app LOGIN IN ROLE orders_rw PASSWORD '{orders_app}';\n\
         CREATE ROLE orders_app_clone LOGIN IN ROLE orders_rw PASSWORD '{orders_app}-clone';\n\
         CREATE ROLE orders_reports LOGIN PASSWORD '{orders_reports}';\n"
    );
    feed(psql(pg, &pg.database), &pg_sql, "psql")?;
    println!(
        "   PostgreSQL: roles orders_app and orders_app_clone (both in group orders_rw), orders_reports; databases orders, orders_drill"
    );
    let maria_sql = format!(
        "DROP DATABASE IF EXISTS billing; CREATE DATABASE billing;\n\
         DROP USER IF EXISTS 'billing_app'@'%', 'billing_app_clone'@'%', 'billing_reports'@'%';\n\
         CREATE USER 'billing_app'@'%' IDENTIFIED BY '{billing_app}';\n\
         CREATE USER 'billing_app_clone'@'%' IDENTIFIED BY '{billing_app}-clone';\n\
         CREATE USER 'billing_reports'@'%' IDENTIFIED BY '{billing_reports}';\n\
         GRANT SELECT, INSERT ON billing.* TO 'billing_app'@'%', 'billing_app_clone'@'%';\n\
         GRANT SELECT ON billing.* TO 'billing_reports'@'%';\n\
         USE billing;\n\
         CREATE TABLE billing.invoices (id INT PRIMARY KEY, customer VARCHAR(40) NOT NULL, \
           amount_cents INT NOT NULL, issued_on DATE NOT NULL);\n\
         INSERT INTO billing.invoices SELECT seq, CONCAT('customer-', seq % 500), (seq * 7919) % 100000, \
           DATE '2026-01-01' + INTERVAL (seq % 300) DAY FROM seq_1_to_10000;\n"
    );
    let mut mariadb = Command::new("mariadb");
    mariadb
        .args(["--no-defaults", "-h", "127.0.0.1", "-P", &maria.port.to_string(), "-u", &maria.user])
        .args(["--ssl", "--ssl-verify-server-cert"])
        .arg(format!("--ssl-ca={}", maria.ca_file.display()))
        .env("MYSQL_PWD", &maria.password);
    feed(mariadb, &maria_sql, "mariadb")?;
    println!(
        "   MariaDB: users billing_app and billing_app_clone (same grants), billing_reports; database billing (10,000 invoices)"
    );

    let template = |engine: &str, port: u16, user: &str, password: &str, db: &str| serde_json::json!({ "engine": engine, "host": "127.0.0.1", "port": port, "username": user, "password": password, "dbname": db });
    let seed = serde_json::json!({
        "aws": { "endpoint": moto.endpoint_url, "region": moto.region },
        "vault": { "address": bao.address, "token": bao.token, "ca_file": bao.ca_file },
        "aws_secrets": {
            "prod/orders/app": template("postgres", pg.port, "orders_app", &orders_app, "orders"),
            "prod/billing/reports": template("mysql", maria.port, "billing_reports", &billing_reports, "billing"),
        },
        "vault_secrets": {
            "prod/orders/reports": template("postgres", pg.port, "orders_reports", &orders_reports, "orders"),
            "prod/billing/app": template("mysql", maria.port, "billing_app", &billing_app, "billing"),
            "vigil/admin/orders-pg": { "username": pg.user, "password": pg.password },
            "vigil/admin/drill-pg": { "username": pg.user, "password": pg.password },
            "vigil/admin/billing-mariadb": { "username": maria.user, "password": maria.password },
        },
    });
    seed_stores(root, state, &seed)?;
    println!("   AWS Secrets Manager (moto): prod/orders/app, prod/billing/reports");
    println!(
        "   Vault KV (OpenBao): prod/orders/reports, prod/billing/app, and the targets' admin credentials under vigil/admin/"
    );

    let run = |args: &[&str]| show(vigil, demo, state, args);
    step("11. vigil status: six secrets (four database passwords, an API key, a JWT key), never rotated, so due now");
    run(&["status"])?;

    step("12. Rotations in both stores on both engines, while a prober logs in every 50 ms as an application would");
    let prober = vigil_command(vigil, demo, state)
        .args(["-q", "rotate", "--check", "--watch", "8s", "--interval", "50ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    for args in [
        &["rotate", "orders-app"][..],
        &["rotate", "billing-app"][..],
        &["rotate", "orders-app", "--force"][..],
        &["rotate", "billing-reports"][..],
        &["rotate", "orders-reports"][..],
    ] {
        if !run(args)?.status.success() {
            bail!("vigil {} failed", args.join(" "));
        }
    }
    println!("   (orders-app flipped twice: the second time needs --force, as min_flip_interval is 1h)");
    let probed = prober.wait_with_output()?;
    println!("   the prober (vigil rotate --check --watch 8s), logging in with whatever each store labelled current:");
    for line in String::from_utf8_lossy(&probed.stdout).lines() {
        println!("     {line}");
    }
    println!(
        "   (alternating users never fail; single-user secrets can fail a login inside their ~100 ms window, and a retry succeeds)"
    );

    step("13. vigil status, and a drift check: every current credential logs in");
    run(&["status"])?;
    run(&["rotate", "--check"])?;

    step("14. Every step is in the evidence ledger, and it verifies");
    run(&["evidence", "list", "--kind", "rotation.finished"])?;
    run(&["evidence", "verify"])?;
    Ok(())
}

/// Step 17: encrypted, verified backups of the orders (PostgreSQL) and billing (MariaDB)
/// databases, fetched back and read by pg_restore.
fn backups(root: &Path, vigil: &Path, demo: &Path, state: &State) -> anyhow::Result<()> {
    let (Some(moto), Some(bao), Some(pg)) = (&state.moto, &state.openbao, &state.postgres) else {
        bail!("services are not all up");
    };
    step("17. Backups: pg_dump and mariadb-dump through zstd and AES-256-GCM into S3, read back and verified");
    let seed = serde_json::json!({
        "aws": { "endpoint": moto.endpoint_url, "region": moto.region },
        "vault": { "address": bao.address, "token": bao.token, "ca_file": bao.ca_file },
        "buckets": ["acme-vigil-backups"],
        "kms_aliases": ["alias/vigil-backups"],
        "transit_keys": ["vigil-backups"],
    });
    seed_stores(root, state, &seed)?;
    let status = Command::new("pgbench")
        .args(["-i", "-q", "-s", "2", "-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", &pg.user, "orders"])
        .env("PGPASSWORD", &pg.password)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &pg.ca_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("run pgbench")?;
    if !status.success() {
        bail!("pgbench -i failed");
    }
    println!("   filled the orders database with pgbench's tables (scale 2, 200,000 accounts)");
    let run = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        let output = show(vigil, demo, state, args)?;
        if !output.status.success() {
            bail!("vigil {} failed", args.join(" "));
        }
        Ok(output)
    };
    run(&["backup", "run", "orders-nightly"])?;
    run(&["backup", "run", "billing-nightly"])?;
    run(&["backup", "list"])?;
    let listed = vigil_command(vigil, demo, state)
        .args(["--output", "json", "backup", "list", "--set", "orders-nightly"])
        .output()?;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).context("backup list --output json")?;
    let id = listed[0]["id"].as_str().context("no orders backup listed")?.to_owned();
    run(&["backup", "verify", &id])?;
    let dump = demo.join("orders.dump");
    run(&["backup", "fetch", &id, "-o", &dump.display().to_string()])?;
    let listing = Command::new("pg_restore").arg("--list").arg(&dump).output().context("run pg_restore --list")?;
    let tables: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| l.contains("TABLE DATA"))
        .map(|l| format!("     {}", l.trim()))
        .collect();
    println!("   $ pg_restore --list orders.dump | grep 'TABLE DATA'\n{}", tables.join("\n"));
    run(&["evidence", "list", "--kind", "backup.written"])?;
    Ok(())
}

/// Steps 18 to 20: a restore drill of the backup just taken, one that fails its RPO target as
/// config check said it would, and the drills' last results.
fn drills(vigil: &Path, demo: &Path, state: &State) -> anyhow::Result<()> {
    step(
        "18. A restore drill: the newest verified orders backup restored into a scratch database, every table's rows and an assertion checked, RPO and RTO measured, the database dropped",
    );
    let output = show(vigil, demo, state, &["drill", "run", "orders-restore"])?;
    if !output.status.success() {
        bail!("the orders drill failed");
    }
    step(
        "19. A drill that fails its RPO target: config check predicted it (a nightly schedule leaves day-long gaps), and the drill measures it",
    );
    let warned = vigil_command(vigil, demo, state).args(["config", "check"]).output()?;
    for line in String::from_utf8_lossy(&warned.stderr).lines().filter(|l| l.contains("drills.orders-rpo.rpo")) {
        println!("   {line}");
    }
    // The newest backup must be older than the 1-second target.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let failed = show(vigil, demo, state, &["drill", "run", "orders-rpo"])?;
    if failed.status.success() {
        bail!("the orders-rpo drill was meant to fail its RPO target");
    }
    println!("   (exit code {})", failed.status.code().unwrap_or(-1));
    step("20. vigil drill list: each drill's last result against its targets");
    show(vigil, demo, state, &["drill", "list"])?;
    Ok(())
}

/// The example schedule of a pgbackrest set and its drill.
const PITR_EXAMPLE: &str = "orders-pitr.toml";

/// Steps 21 to 24: the orders cluster backed up by pgBackRest, a row inserted, and a drill that
/// recovers it into a temporary server with an RPO under 15 minutes, beside the nightly dump's
/// drill that missed it. vigil runs as the database's account in a folder of its own, as it
/// would on a database host: pgBackRest reads the data directory, and PostgreSQL will not start
/// a server as root.
fn pitr(root: &Path, vigil: &Path, demo: &Path, state: &State) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::process::CommandExt as _;
    let (Some(pg), Some(repo)) = (&state.postgres, &state.pgbackrest) else {
        bail!("the private PostgreSQL and its pgBackRest repository are not up");
    };
    step(
        "21. Point-in-time recovery: the orders cluster backed up by pgBackRest (vigil runs as the database's account)",
    );
    let dir = demo.join("pitr");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(dir.join("schedules"))?;
    let private =
        |name: &str, text: &str| -> anyhow::Result<()> { services::pgbackrest::write_private(&dir.join(name), text) };
    private("admin.json", &serde_json::json!({ "username": pg.user, "password": pg.password }).to_string())?;
    private("cipher-pass", &repo.cipher_pass)?;
    std::fs::copy(&pg.ca_file, dir.join("ca.pem"))?;
    std::fs::write(
        dir.join("vigil.toml"),
        "# Written by `cargo xtask demo`: vigil on the database host.\n[controller]\ndata_dir = \"data\"\n",
    )?;
    let example = std::fs::read_to_string(root.join("schedules").join(PITR_EXAMPLE))?;
    let mut doc: toml_edit::DocumentMut = example.parse().context("parse the pgbackrest example")?;
    let set = doc["backups"]["orders-pitr"].as_table_like_mut().context("no [backups.orders-pitr]")?;
    set.insert("stanza", toml_edit::value(repo.stanza.clone()));
    set.insert("config_file", toml_edit::value(repo.config.display().to_string()));
    let mut pass = toml_edit::InlineTable::new();
    pass.insert("file", "../cipher-pass".into());
    set.insert("cipher_pass", toml_edit::value(pass));
    let drill = doc["drills"]["orders-pitr"].as_table_like_mut().context("no [drills.orders-pitr]")?;
    let runbook = root.join("runbooks/postgres-point-in-time.md");
    drill.insert("runbook", toml_edit::value(runbook.display().to_string()));
    let mut assertions = toml_edit::Array::new();
    for (sql, expect) in [
        ("SELECT count(*) FROM pgbench_branches WHERE bbalance IS NULL", "0"),
        ("SELECT count(*) FROM demo_pitr_orders WHERE note = 'placed after the backup'", "1"),
    ] {
        let mut assertion = toml_edit::InlineTable::new();
        assertion.insert("sql", sql.into());
        assertion.insert("expect", expect.into());
        assertions.push(assertion);
    }
    drill.insert("assertions", toml_edit::value(assertions));
    let target = format!(
        "[targets.orders-pg]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"orders\"\n\
         admin = {{ file = \"../admin.json\" }}\ntls = {{ mode = \"verify-full\", ca_file = \"../ca.pem\" }}\n\n",
        pg.port
    );
    std::fs::write(dir.join("schedules").join(PITR_EXAMPLE), target + &doc.to_string())?;
    let owner = std::fs::metadata(&pg.data_dir)?;
    let account = (owner.uid() != std::fs::metadata("/proc/self")?.uid()).then(|| (owner.uid(), owner.gid()));
    services::pgbackrest::chown_all(&dir, account.map(|(uid, gid)| services::process::RunAs { uid, gid }))?;
    let run = |args: &[&str], must_pass: bool| -> anyhow::Result<std::process::Output> {
        println!("   $ vigil {}", args.join(" "));
        let mut command = Command::new(vigil);
        command
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["-q"])
            .args(args);
        if let Some((uid, gid)) = account {
            command.uid(uid).gid(gid);
        }
        let output = command.output()?;
        for line in
            String::from_utf8_lossy(&output.stdout).lines().chain(String::from_utf8_lossy(&output.stderr).lines())
        {
            println!("     {line}");
        }
        if must_pass && !output.status.success() {
            bail!("vigil {} failed", args.join(" "));
        }
        Ok(output)
    };
    run(&["backup", "run", "orders-pitr", "--type", "full"], true)?;

    step("22. An order placed after the backup, and a heartbeat; the server archives the WAL on its own");
    feed(
        psql(pg, "orders"),
        "CREATE TABLE IF NOT EXISTS demo_pitr_orders (id serial PRIMARY KEY, note text NOT NULL);\n\
         INSERT INTO demo_pitr_orders (note) VALUES ('placed after the backup');\n",
        "psql",
    )?;
    println!("   inserted one order into demo_pitr_orders, committed after the backup ended");
    run(&["backup", "heartbeat", "orders-pitr"], true)?;
    let wait = repo.archive_timeout_secs + 3;
    println!(
        "   waiting {wait} s: archive_timeout is {} s, after which the server archives the segment",
        repo.archive_timeout_secs
    );
    std::thread::sleep(std::time::Duration::from_secs(u64::from(wait)));

    step("23. vigil status: the archive's last segment, failures, segments waiting, RPO exposure, newest backup");
    run(&["status"], true)?;

    step(
        "24. A point-in-time drill: the cluster restored to the end of its archive into a temporary server; the order is there, RPO well under 15 minutes (the nightly dump's drill in step 19 missed it)",
    );
    run(&["drill", "run", "orders-pitr"], true)?;
    Ok(())
}

/// `psql` on `database` of the private PostgreSQL as its superuser, over verified TLS, stopping
/// at the first error.
fn psql(pg: &services::Database, database: &str) -> Command {
    let mut psql = Command::new("psql");
    psql.args([
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
        "-U",
        &pg.user,
        "-d",
        database,
    ])
    .env("PGPASSWORD", &pg.password)
    .env("PGSSLMODE", "verify-full")
    .env("PGSSLROOTCERT", &pg.ca_file)
    .env("PGOPTIONS", "--client-min-messages=warning");
    psql
}

/// Runs `vigil -q ARGS` in the demo folder, echoing the command and what it printed.
fn show(vigil: &Path, demo: &Path, state: &State, args: &[&str]) -> anyhow::Result<std::process::Output> {
    println!("   $ vigil {}", args.join(" "));
    let output = vigil_command(vigil, demo, state).args(["-q"]).args(args).output()?;
    for line in String::from_utf8_lossy(&output.stdout).lines().chain(String::from_utf8_lossy(&output.stderr).lines()) {
        println!("     {line}");
    }
    Ok(output)
}

/// Seeds the stores (and S3 buckets) from `seed`, the JSON document `SEED_SCRIPT` reads.
fn seed_stores(root: &Path, state: &State, seed: &serde_json::Value) -> anyhow::Result<()> {
    let moto = state.moto.as_ref().context("moto is not up")?;
    let mut python = Command::new(root.join("target/services/venv/bin/python"));
    python
        .arg("-c")
        .arg(SEED_SCRIPT)
        .env("AWS_ACCESS_KEY_ID", &moto.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &moto.secret_access_key);
    feed(python, &seed.to_string(), "seeding the stores")
}

/// Writes one line to a child's standard input and closes it (so no secret is on its command
/// line).
fn feed_line(child: &mut std::process::Child, line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdin = child.stdin.take().context("stdin")?;
    writeln!(stdin, "{line}")?;
    Ok(())
}

/// Writes `input` to a command's standard input (so no secret is on its command line).
fn feed(mut command: Command, input: &str, what: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("start {what}"))?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    if !child.wait()?.success() {
        bail!("{what} failed");
    }
    Ok(())
}

/// Seeds the stores from a JSON document on standard input, replacing what a previous demo left;
/// creates the S3 buckets it lists, emptied.
const SEED_SCRIPT: &str = r#"
import json, ssl, sys, urllib.request, boto3
seed = json.load(sys.stdin)
sm = boto3.client("secretsmanager", endpoint_url=seed["aws"]["endpoint"], region_name=seed["aws"]["region"])
s3 = boto3.client("s3", endpoint_url=seed["aws"]["endpoint"], region_name=seed["aws"]["region"])
for bucket in seed.get("buckets", []):
    try:
        s3.create_bucket(Bucket=bucket)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
kms = boto3.client("kms", endpoint_url=seed["aws"]["endpoint"], region_name=seed["aws"]["region"])
known = {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
for alias in seed.get("kms_aliases", []):
    if alias not in known:
        kms.create_alias(AliasName=alias, TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
for name, value in seed.get("aws_secrets", {}).items():
    try:
        sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    except sm.exceptions.ResourceNotFoundException:
        pass
    sm.create_secret(Name=name, SecretString=json.dumps(value))
vault = seed["vault"]
def call(method, path, body=None):
    request = urllib.request.Request(vault["address"] + path, method=method, headers={"X-Vault-Token": vault["token"]},
                                     data=None if body is None else json.dumps(body).encode())
    try:
        urllib.request.urlopen(request, context=ssl.create_default_context(cafile=vault["ca_file"])).read()
    except urllib.error.HTTPError as err:
        if err.code != 404:
            raise
for key in seed.get("transit_keys", []):
    call("POST", "/v1/transit/keys/" + key)
for path, value in seed.get("vault_secrets", {}).items():
    call("DELETE", "/v1/secret/metadata/" + path + "/vigil-pending")
    call("DELETE", "/v1/secret/metadata/" + path)
    call("POST", "/v1/secret/data/" + path, {"data": value})
"#;

fn step(title: &str) {
    println!("\n== {title}");
}

/// `vigil` run against a demo folder, with the services' credentials in its environment
/// (vigil.toml names them by reference; no secret goes on a command line).
fn vigil_command(vigil: &Path, dir: &Path, state: &State) -> Command {
    let mut command = Command::new(vigil);
    command.current_dir(dir).env("VIGIL_CONFIG", dir.join("vigil.toml")).env_remove("RUST_LOG");
    if let Some(moto) = &state.moto {
        command.env("AWS_ACCESS_KEY_ID", &moto.access_key_id).env("AWS_SECRET_ACCESS_KEY", &moto.secret_access_key);
    }
    if let Some(bao) = &state.openbao {
        command.env("VAULT_TOKEN", &bao.token);
    }
    command
}

fn write_demo_config(root: &Path, demo: &Path, state: &State, issuer_url: &str) -> anyhow::Result<()> {
    let (Some(moto), Some(bao), Some(pg), Some(maria)) = (&state.moto, &state.openbao, &state.postgres, &state.mariadb)
    else {
        bail!("services are not all up");
    };
    let schedules = demo.join("schedules");
    // Each demo starts from a fresh ledger and key.
    for fresh in [&schedules, &demo.join("data")] {
        if fresh.exists() {
            std::fs::remove_dir_all(fresh)?;
        }
    }
    std::fs::create_dir_all(&schedules)?;
    std::fs::write(
        demo.join("vigil.toml"),
        format!(
            "# Written by `cargo xtask demo`: vigil pointed at the local services.\n\
             [controller]\ndata_dir = \"data\"\nschedules = \"schedules\"\n\n\
             [evidence]\nurl = \"sqlite://data/evidence.db\"\n\n\
             [aws]\nregion = \"{region}\"\nendpoint_url = \"{aws}\"\n\
             access_key_id = {{ env = \"AWS_ACCESS_KEY_ID\" }}\nsecret_access_key = {{ env = \"AWS_SECRET_ACCESS_KEY\" }}\n\n\
             [vault]\naddress = \"{vault}\"\ntoken = {{ env = \"VAULT_TOKEN\" }}\nca_file = \"{vault_ca}\"\n",
            region = moto.region,
            aws = moto.endpoint_url,
            vault = bao.address,
            vault_ca = bao.ca_file.display(),
        ),
    )?;
    let source_dir = root.join("schedules");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&source_dir)?.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    // The pgBackRest example runs in a folder of its own, as the database's account (`pitr`).
    for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml") && !p.ends_with(PITR_EXAMPLE))
    {
        let text = std::fs::read_to_string(&path)?;
        let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("parse {}", path.display()))?;
        if let Some(targets) = doc.get_mut("targets").and_then(|t| t.as_table_like_mut()) {
            for (_, target) in targets.iter_mut() {
                let Some(target) = target.as_table_like_mut() else { continue };
                let (port, ca_file) = match target.get("kind").and_then(|k| k.as_str()) {
                    Some("postgres") => (pg.port, &pg.ca_file),
                    Some("mysql") => (maria.port, &maria.ca_file),
                    _ => continue,
                };
                target.insert("host", toml_edit::value("127.0.0.1"));
                target.insert("port", toml_edit::value(i64::from(port)));
                // Verified TLS, as in production, against the services' throwaway CA.
                let mut tls = toml_edit::InlineTable::new();
                tls.insert("mode", "verify-full".into());
                tls.insert("ca_file", ca_file.display().to_string().into());
                target.insert("tls", toml_edit::value(tls));
            }
        }
        if let Some(secrets) = doc.get_mut("secrets").and_then(|t| t.as_table_like_mut()) {
            keys::shorten_waits(secrets, issuer_url);
        }
        if let Some(drills) = doc.get_mut("drills").and_then(|t| t.as_table_like_mut()) {
            for (_, drill) in drills.iter_mut() {
                let Some(drill) = drill.as_table_like_mut() else { continue };
                if let Some(runbook) = drill.get("runbook").and_then(|r| r.as_str()).map(str::to_owned) {
                    let absolute = source_dir.join(runbook);
                    drill.insert("runbook", toml_edit::value(absolute.display().to_string()));
                }
            }
        }
        std::fs::write(schedules.join(path.file_name().context("file name")?), doc.to_string())?;
    }
    // A demo-only drill of the nightly orders backup: its 1-second RPO target stands in for the
    // example's 15 minutes, which a backup taken seconds ago would meet.
    std::fs::write(
        schedules.join("demo-drills.toml"),
        "# Written by `cargo xtask demo`: a drill whose RPO target the nightly backup cannot meet.\n\
         [drills.orders-rpo]\nbackup = \"orders-nightly\"\nscratch = \"orders-pg-scratch\"\nrpo = \"1s\"\n",
    )?;
    Ok(())
}

/// The demo configuration with three typical mistakes: a reference to a target that does not
/// exist, a duration written in words, and a drill that would restore over the database it
/// backs up.
fn write_broken_config(demo: &Path, broken: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(broken.join("schedules"))?;
    std::fs::copy(demo.join("vigil.toml"), broken.join("vigil.toml"))?;
    std::fs::write(
        broken.join("schedules/mistakes.toml"),
        "[targets.inventory-pg]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\n\
         admin = { store = \"vault_kv\", path = \"vigil/admin/inventory\" }\n\n\
         [secrets.inventory-app]\nkind = \"postgres_password\"\nstore = \"vault_kv\"\npath = \"prod/inventory/app\"\n\
         target = \"inventory-db\"\nusername = \"inventory\"\n\n\
         [secrets.inventory-reports]\nkind = \"postgres_password\"\nstore = \"vault_kv\"\npath = \"prod/inventory/reports\"\n\
         target = \"inventory-pg\"\nusername = \"reports\"\ncadence = \"30 days\"\n\n\
         [backups.inventory-nightly]\ntarget = \"inventory-pg\"\nschedule = \"0 2 * * *\"\nstore = \"s3\"\nbucket = \"b\"\n\
         key_service = \"aws_kms\"\nkey_id = \"alias/backups\"\n\n\
         [drills.inventory-restore]\nbackup = \"inventory-nightly\"\nscratch = \"inventory-pg\"\n",
    )?;
    Ok(())
}
