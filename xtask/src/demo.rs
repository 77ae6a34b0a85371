//! `cargo xtask demo`: the whole product as it stands, end to end on the local stack.
//!
//! Every capability vigil gains extends this command, so that it always shows the product as
//! a user would run it: real services, the example schedules, the real `vigil` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

use crate::cargo;
use crate::services::{self, State};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Stop the services when the demo ends (by default they stay up for exploring).
    #[arg(long)]
    down: bool,
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
        write_demo_config(root, &demo, &state)?;
        println!("   wrote {} and {}", demo.join("vigil.toml").display(), demo.join("schedules").display());
        println!(
            "   (the schedules are ./schedules/*.toml with their database targets pointed at the private servers)"
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

        step("10. Commands still to come say so plainly (exit 2)");
        let output = vigil_command(&vigil, &demo, &state).args(["rotate", "orders-app"]).output()?;
        print!("   {}", String::from_utf8_lossy(&output.stderr));

        if self.down {
            step("11. Services down");
            services::down(root)?;
        } else {
            println!(
                "\nThe services are still up: `eval \"$(cargo xtask services env)\"` to use them, `cargo xtask services down` to stop them."
            );
        }
        Ok(ExitCode::SUCCESS)
    }
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

fn write_demo_config(root: &Path, demo: &Path, state: &State) -> anyhow::Result<()> {
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
             [vault]\naddress = \"{vault}\"\ntoken = {{ env = \"VAULT_TOKEN\" }}\n",
            region = moto.region,
            aws = moto.endpoint_url,
            vault = bao.address,
        ),
    )?;
    let source_dir = root.join("schedules");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&source_dir)?.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let text = std::fs::read_to_string(&path)?;
        let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("parse {}", path.display()))?;
        if let Some(targets) = doc.get_mut("targets").and_then(|t| t.as_table_like_mut()) {
            for (_, target) in targets.iter_mut() {
                let Some(target) = target.as_table_like_mut() else { continue };
                let port = match target.get("kind").and_then(|k| k.as_str()) {
                    Some("postgres") => pg.port,
                    Some("mysql") => maria.port,
                    _ => continue,
                };
                target.insert("host", toml_edit::value("127.0.0.1"));
                target.insert("port", toml_edit::value(i64::from(port)));
            }
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
