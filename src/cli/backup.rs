//! `vigil backup`: encrypted, verified backups.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::evidence::open_ledger;
use super::output::{print_json, table};
use super::{Exit, GlobalArgs, OutputFormat, load_plan};
use crate::backup::{BackupReport, Backups};
use crate::clock::SystemClock;
use crate::context::Ctx;
use crate::saga::Ended;
use crate::state::Db;

/// Take, verify, fetch, list and prune encrypted backups.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  vigil backup run orders-nightly
  vigil backup list --set orders-nightly --output json
  vigil backup verify 20261124T020000Z-0a1b2c3d
  vigil backup fetch 20261124T020000Z-0a1b2c3d -o orders.dump
  vigil backup fetch 20261124T020000Z-0a1b2c3d | pg_restore -d orders_restored
  vigil backup fetch 20261124T020000Z-0a1b2c3d --globals -o roles.sql
  vigil backup prune --dry-run
  vigil backup run orders-pitr --type incr
  vigil backup heartbeat orders-pitr
  vigil backup archive orders-pitr --output json

A dump backup streams pg_dump (custom format) or mariadb-dump through zstd and AES-256-GCM into
the set's store, under a fresh data key wrapped by the set's key service, then reads it back:
every segment authenticated, both SHA-256s compared with the manifest, and pg_restore --list
run on the dump. Only then is it verified. An rds target is backed up by DB snapshot instead.
A set of method = \"pgbackrest\" runs `pgbackrest backup` (full, diff or incr) and then
`pgbackrest verify` on the new backup; its WAL archive allows point-in-time drills.
Every backup, verification and prune is recorded in the evidence ledger.")]
pub struct BackupArgs {
    #[command(subcommand)]
    command: BackupCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BackupCommand {
    /// Back up a backup set now and verify it.
    Run {
        /// The backup set, as named in a schedule file.
        name: String,
        /// pgbackrest sets: the backup type (the set's `type` when absent).
        #[arg(long = "type", value_name = "full|diff|incr")]
        backup_type: Option<crate::pgbackrest::BackupType>,
    },
    /// Write a pgbackrest set's heartbeat row on its source now: a restored copy then says how
    /// recent it is. The daemon writes it on the set's `heartbeat` interval.
    Heartbeat {
        /// The pgbackrest set.
        name: String,
    },
    /// Show a pgbackrest set's WAL archiving: failures, segments waiting, RPO exposure, and the
    /// newest backup's age; exits 1 when something is wrong.
    Archive {
        /// The pgbackrest set.
        name: String,
    },
    /// Finish or roll back backups a crash left in flight.
    Resume,
    /// Re-read a backup and check every segment and checksum; exits 1 if any check fails.
    Verify {
        /// The backup id.
        id: String,
    },
    /// Write a backup's decrypted dump to a file or standard output, checked as it streams.
    Fetch {
        /// The backup id.
        id: String,
        /// Where to write: a file (written whole or not at all), or `-` for standard output.
        #[arg(short, long, default_value = "-", value_name = "FILE")]
        output_file: String,
        /// Write the cluster's globals instead of the dump (PostgreSQL: roles, memberships and
        /// role settings as SQL, without passwords), to run before restoring onto a new server.
        #[arg(long)]
        globals: bool,
    },
    /// List backups, newest first.
    List {
        /// Only this backup set.
        #[arg(long)]
        set: Option<String>,
    },
    /// Delete verified backups beyond each set's retention; the newest is always kept.
    Prune {
        /// Show what would be deleted, and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

impl BackupArgs {
    pub(super) async fn run(&self, global: &GlobalArgs, cancel: &CancellationToken) -> anyhow::Result<Exit> {
        let plan = load_plan(global)?;
        let db = Db::open(&plan.evidence.store).await?;
        let ledger = open_ledger(&plan, &db).await?;
        let mut backups = Backups::new(Ctx::new(&plan, &db, &ledger, &SystemClock, cancel.child_token()));
        if global.output == OutputFormat::Human && std::io::stderr().is_terminal() && global.quiet == 0 {
            backups.progress = Some(progress());
        }
        let exit = self.dispatch(&backups, global.output).await;
        db.close().await;
        exit
    }

    async fn dispatch(&self, backups: &Backups<'_>, output: OutputFormat) -> anyhow::Result<Exit> {
        match &self.command {
            BackupCommand::Run { name, backup_type } => {
                let report = backups.run_typed(name, *backup_type).await?;
                show_reports(std::slice::from_ref(&report), output)?;
                finished(&[report])
            }
            BackupCommand::Heartbeat { name } => {
                let at = backups.heartbeat(name).await?;
                match output {
                    OutputFormat::Json => print_json(&serde_json::json!({ "set": name, "beat_at": at }))?,
                    OutputFormat::Human => println!("{name}: heartbeat written at {at} (source clock)"),
                }
                Ok(Exit::Success)
            }
            BackupCommand::Archive { name } => {
                let health = backups.archive_health(name).await?;
                match output {
                    OutputFormat::Json => print_json(&health)?,
                    OutputFormat::Human => print!("{}", super::status::archive_lines(std::slice::from_ref(&health))),
                }
                Ok(if health.problems.is_empty() { Exit::Success } else { Exit::Failure })
            }
            BackupCommand::Resume => {
                let reports = backups.resume().await?;
                show_reports(&reports, output)?;
                finished(&reports)
            }
            BackupCommand::Verify { id } => {
                let report = backups.verify(id).await?;
                match output {
                    OutputFormat::Json => print_json(&report)?,
                    OutputFormat::Human => println!(
                        "backup {id} verified: {} bytes stored, {} bytes of dump, SHA-256 {}; {}",
                        report.stream.ciphertext_bytes,
                        report.stream.plaintext_bytes,
                        report.stream.plaintext_sha256,
                        report.restore_check
                    ),
                }
                Ok(Exit::Success)
            }
            BackupCommand::Fetch { id, output_file, globals } => fetch(backups, id, output_file, *globals).await,
            BackupCommand::List { set } => {
                let entries = backups.list(set.as_deref()).await?;
                match output {
                    OutputFormat::Json => print_json(&entries)?,
                    OutputFormat::Human => {
                        let mut rows =
                            vec![["ID", "SET", "STATUS", "STARTED", "SIZE", "WHERE"].map(String::from).to_vec()];
                        for e in &entries {
                            rows.push(vec![
                                e.id.clone(),
                                e.set.clone(),
                                e.status.as_str().into(),
                                e.started_at.clone(),
                                e.bytes.map(human_bytes).unwrap_or_default(),
                                match &e.physical {
                                    Some(p) => format!(
                                        "{} ({}, WAL {} to {})",
                                        e.location,
                                        p["type"].as_str().unwrap_or("?"),
                                        p["wal_start"].as_str().unwrap_or("?"),
                                        p["wal_stop"].as_str().unwrap_or("?")
                                    ),
                                    None => e.location.clone(),
                                },
                            ]);
                        }
                        print!("{}", table("", &rows));
                    }
                }
                Ok(Exit::Success)
            }
            BackupCommand::Prune { dry_run } => {
                let reports = backups.prune(*dry_run).await?;
                match output {
                    OutputFormat::Json => print_json(&reports)?,
                    OutputFormat::Human => {
                        let verb = if *dry_run { "would delete" } else { "deleted" };
                        for r in &reports {
                            println!("{}: keeps {}, {verb} {}", r.set, r.kept.len(), r.deleted.len());
                            for id in &r.deleted {
                                println!("  {verb} {id}");
                            }
                        }
                    }
                }
                Ok(Exit::Success)
            }
        }
    }
}

/// Writes the dump to standard output, or to a file through a `.partial` sibling renamed over
/// it only once every check passed.
///
/// The sibling gets a random name, is created new with mode 0600 (`O_EXCL` never follows a
/// symlink, so one planted at a predictable name cannot redirect the write, run as root, onto
/// another file), and is synced before the rename, which replaces `FILE` itself, never what a
/// symlink there points to.
async fn fetch(backups: &Backups<'_>, id: &str, output_file: &str, globals: bool) -> anyhow::Result<Exit> {
    let fetch = |sink: Box<dyn std::io::Write + Send>| async move {
        if globals { backups.fetch_globals(id, sink).await } else { backups.fetch(id, sink).await }
    };
    if output_file == "-" {
        if std::io::stdout().is_terminal() && !globals {
            anyhow::bail!("refusing to write a binary dump to a terminal; pass -o FILE or pipe it (| pg_restore ...)");
        }
        let facts = fetch(Box::new(std::io::stdout())).await?;
        tracing::info!(bytes = facts.plaintext_bytes, "fetched and checked");
        return Ok(Exit::Success);
    }
    let path = PathBuf::from(output_file);
    let mut partial = path.clone().into_os_string();
    partial.push(format!(".{:016x}.partial", {
        use rand_core::RngCore as _;
        rand_core::OsRng.next_u64()
    }));
    let partial = PathBuf::from(partial);
    let file = crate::secret::create_private(&partial)
        .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", partial.display()))?;
    match fetch(Box::new(std::io::BufWriter::with_capacity(1 << 20, file))).await {
        Ok(facts) => {
            let synced = std::fs::File::open(&partial).and_then(|f| f.sync_all());
            if let Err(err) = synced.and_then(|()| std::fs::rename(&partial, &path)) {
                let _ = std::fs::remove_file(&partial);
                anyhow::bail!("cannot put the dump in place at {}: {err}", path.display());
            }
            eprintln!(
                "wrote {} ({}), SHA-256 {}",
                path.display(),
                human_bytes(facts.plaintext_bytes),
                facts.plaintext_sha256
            );
            Ok(Exit::Success)
        }
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            Err(err.into())
        }
    }
}

fn show_reports(reports: &[BackupReport], output: OutputFormat) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => print_json(&reports),
        OutputFormat::Human => {
            for r in reports {
                match &r.ended {
                    Ended::Done => println!(
                        "{}: backup {} {} at {}{}",
                        r.set,
                        r.backup_id,
                        match r.method {
                            "dump" => "written and verified",
                            "pgbackrest" => "taken and verified",
                            _ => "snapshot available",
                        },
                        r.location,
                        r.bytes.map(|b| format!(" ({})", human_bytes(b))).unwrap_or_default()
                    ),
                    Ended::Waiting { step, until } => {
                        println!("{}: backup {} waits at {step} until {until}", r.set, r.backup_id)
                    }
                    Ended::RolledBack { step, reason } => {
                        println!("{}: backup {} FAILED at {step} and was removed: {reason}", r.set, r.backup_id)
                    }
                    Ended::Stuck { step, reason } => {
                        println!("{}: backup {} is STUCK at {step}: {reason}", r.set, r.backup_id)
                    }
                }
            }
            Ok(())
        }
    }
}

fn finished(reports: &[BackupReport]) -> anyhow::Result<Exit> {
    let failed = reports.iter().filter(|r| !matches!(r.ended, Ended::Done)).count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} backup(s) did not complete; `vigil backup list` and `vigil evidence list --kind backup.step` say why"
        );
    }
    Ok(Exit::Success)
}

/// Sizes for people: KiB, MiB, GiB.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A progress line on standard error, redrawn at most five times a second.
fn progress() -> crate::backup::Progress {
    let start = std::time::Instant::now();
    let state = std::sync::Mutex::new((0u64, start));
    Arc::new(move |n| {
        let mut state = state.lock().expect("not poisoned");
        state.0 += n;
        if state.1.elapsed() >= std::time::Duration::from_millis(200) {
            state.1 = std::time::Instant::now();
            let rate = state.0 as f64 / start.elapsed().as_secs_f64().max(0.001);
            eprint!("\r  {} dumped, {}/s   ", human_bytes(state.0), human_bytes(rate as u64));
        }
    })
}
