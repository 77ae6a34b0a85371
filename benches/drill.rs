//! `cargo xtask bench drill`: `vigil drill run` on the backup benchmark's generated PostgreSQL
//! database (about 1 GiB of dump), beside what a person would run instead, in one run on the
//! same dump:
//!
//! - `pg_restore --no-owner` of the same dump from a file into an empty database, with one job
//!   and with `-j 2`;
//! - vigil's drill, each phase's share of it, and its restore phase (fetch, authenticate,
//!   decrypt, decompress and restore, streamed) over the best bare `pg_restore`;
//! - the peak RSS of the vigil process (not its pg_restore child).
//!
//! Then the same cluster backed up by pgBackRest (a full backup of the stanza the private server
//! archives to), restored to the end of its archive:
//!
//! - by hand: `pgbackrest restore`, `postgres` started on the restored directory, and
//!   `pg_is_in_recovery()` polled until the server is promoted;
//! - by `vigil drill run`, whose restore phase does the same three things (its restore-to-ready),
//!   with each phase's share.
//!
//! Each figure is the median of `--runs` (3) interleaved runs of the dump case and
//! `--pgbackrest-runs` (8) of the pgBackRest case, whose restores are shorter and noisier; an
//! even number lets bare and vigil go first equally often (the first of a pair was at times the
//! slower here, whichever it was).
//! The private server archives its WAL into the stanza, and every restore into the cluster
//! writes WAL that `archive-push` compresses and encrypts beside it: archiving is stopped during
//! the dump case (a drill's scratch server archives nothing) and let catch up before each
//! pgBackRest measurement. Targets: restore phase <= 1.10x the best bare `pg_restore`; peak RSS
//! <= 64 MiB; pgBackRest restore-to-ready <= 1.05x the bare sequence.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

#[path = "support/mod.rs"]
mod support;
use support::{MIB, Series, Services, ensure_database, measure, median_ratio};

const TARGET_RESTORE: f64 = 1.10;
const TARGET_RSS_MIB: f64 = 64.0;
const TARGET_PGBACKREST: f64 = 1.05;

struct Args {
    size_mib: u64,
    runs: usize,
    /// Runs of the pgBackRest case.
    pgbackrest_runs: usize,
    /// Only the pgBackRest case.
    pgbackrest_only: bool,
}

fn args() -> Args {
    let mut args = Args { size_mib: 1024, runs: 3, pgbackrest_runs: 8, pgbackrest_only: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--size-mib" => args.size_mib = it.next().and_then(|n| n.parse().ok()).expect("a number"),
            "--pgbackrest-only" => args.pgbackrest_only = true,
            "--runs" => args.runs = it.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0).expect("a number"),
            "--pgbackrest-runs" => {
                args.pgbackrest_runs = it.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0).expect("a number");
            }
            // cargo bench passes --bench; nothing else is ours.
            _ => {}
        }
    }
    args
}

/// A folder with `vigil.toml`, a local backup set of `database`, a scratch target on the same
/// server and a drill.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(services: &Services, database: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin.json");
        let credential = serde_json::json!({ "username": services.pg_user, "password": services.pg_password });
        std::fs::write(&admin, credential.to_string()).unwrap();
        std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join("vigil.toml"), "[controller]\ndata_dir = \"data\"\n").unwrap();
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        let target = |name: &str, db: &str| {
            format!(
                "[targets.{name}]\nkind = \"postgres\"\nhost = \"{}\"\nport = {}\ndatabase = \"{db}\"\nadmin = {{ file = \"{}\" }}\ntls = {{ ca_file = \"{}\" }}\n\n",
                services.pg_host,
                services.pg_port,
                admin.display(),
                services.pg_ca
            )
        };
        let schedule = format!(
            "{}{}[backups.local]\ntarget = \"db\"\nschedule = \"0 2 * * *\"\nstore = \"local\"\npath = \"../backups\"\n\
             key_service = \"local\"\nkey_file = \"../keys/backup.key\"\n\n\
             [drills.bench]\nbackup = \"local\"\nscratch = \"scratch\"\nrpo = \"1d\"\n",
            target("db", database),
            target("scratch", "postgres"),
        );
        std::fs::write(dir.path().join("schedules/bench.toml"), schedule).unwrap();
        Self { dir }
    }

    fn vigil(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"));
        command.current_dir(self.dir.path()).args(["--output", "json"]).args(args);
        command
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.vigil(args).output().unwrap();
        assert!(out.status.success(), "vigil {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// `pg_restore --no-owner [-j JOBS]` of `dump` into a fresh, empty database, dropped after.
fn bare_restore(services: &Services, dump: &std::path::Path, jobs: u32) -> Duration {
    let fresh = format!("vigil_bench_restore_{}", std::process::id());
    services.psql("postgres", &format!("DROP DATABASE IF EXISTS {fresh}"));
    services.psql("postgres", &format!("CREATE DATABASE {fresh}"));
    let measured = measure("pg_restore", || {
        let mut restore = services.pg_tool("pg_restore");
        restore
            .args(["--no-owner", "--exit-on-error", "-j", &jobs.to_string(), "-d", &fresh])
            .arg(dump)
            .stdout(Stdio::null());
        vec![restore.spawn().unwrap()]
    });
    services.psql("postgres", &format!("DROP DATABASE {fresh}"));
    measured.elapsed
}

/// One `vigil drill run bench`: the whole run, its phases, and the vigil process's peak RSS.
struct DrillRun {
    elapsed: Duration,
    peak_rss: u64,
    phases: Vec<(String, Duration)>,
}

fn vigil_drill(setup: &Setup, drill: &str) -> DrillRun {
    let mut report_file = tempfile::NamedTempFile::new().unwrap();
    let run = measure("vigil drill run", || {
        vec![
            setup
                .vigil(&["drill", "run", drill])
                .stdout(report_file.reopen().unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ]
    });
    let report: Value = serde_json::from_reader(report_file.as_file_mut()).unwrap();
    assert_eq!(report[0]["passed"], true, "{report}");
    let phases = report[0]["data"]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["phase"].as_str().unwrap().to_owned(), Duration::from_millis(p["millis"].as_u64().unwrap())))
        .collect();
    DrillRun { elapsed: run.elapsed, peak_rss: run.peak_rss, phases }
}

fn row(label: &str, series: &Series, against: Option<(&Series, f64)>) {
    let median = series.median();
    let (min, max) = (series.times.iter().min().unwrap(), series.times.iter().max().unwrap());
    let ratio = against.map_or(String::new(), |(baseline, target)| {
        let r = median_ratio(series, baseline);
        format!("{r:.2}x {}", if r <= target { "ok" } else { "OVER" })
    });
    println!(
        "  {label:<44} {:>7.1} s  {:>5.1}-{:<5.1} {ratio:<9} {}",
        median.as_secs_f64(),
        min.as_secs_f64(),
        max.as_secs_f64(),
        series.peak_rss.map_or(String::new(), |b| format!("{:>5.1} MiB", b as f64 / MIB)),
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    let services = Services::load();
    println!("drill benchmark: a PostgreSQL database of ~{} MiB of dump, {} runs", args.size_mib, args.runs);
    let database = ensure_database(&services, args.size_mib);
    if args.pgbackrest_only {
        pgbackrest_case(&services, &database, args.pgbackrest_runs);
        return;
    }
    let setup = Setup::new(&services, &database);
    let backup = setup.json(&["backup", "run", "local"]);
    let id = backup[0]["backup_id"].as_str().unwrap().to_owned();
    let dump = setup.dir.path().join("bench.dump");
    let fetched = setup.vigil(&["backup", "fetch", &id, "-o", dump.to_str().unwrap()]).output().unwrap();
    assert!(fetched.status.success(), "fetch failed: {}", String::from_utf8_lossy(&fetched.stderr));
    let bytes = std::fs::metadata(&dump).unwrap().len();

    let [mut single, mut two, mut best, mut drill, mut restore] = std::array::from_fn(|_| Series::default());
    let mut shares: Vec<Vec<(String, Duration)>> = Vec::new();
    let paused = ArchivingPaused::new(&services);
    for run in 1..=args.runs {
        eprintln!("  run {run} of {}", args.runs);
        sync();
        let one = bare_restore(&services, &dump, 1);
        sync();
        let jobs = bare_restore(&services, &dump, 2);
        single.push(one, None);
        two.push(jobs, None);
        best.push(one.min(jobs), None);
        sync();
        let ran = vigil_drill(&setup, "bench");
        drill.push(ran.elapsed, Some(ran.peak_rss));
        let phase = |name: &str| ran.phases.iter().find(|(p, _)| p == name).map(|(_, d)| *d).unwrap_or_default();
        restore.push(phase("restore"), None);
        shares.push(ran.phases);
    }

    println!("\n  backup {id}: {:.0} MiB of dump (pg_dump custom format, uncompressed)", bytes as f64 / MIB);
    println!("  medians of {} runs; a ratio is the median of each run's ratio\n", args.runs);
    println!("  {:<44} {:>9}  {:<11} {:<9} peak RSS", "", "time", "spread (s)", "vs best");
    row("pg_restore from a file, 1 job", &single, None);
    row("pg_restore from a file, -j 2", &two, None);
    row("vigil drill: restore phase (streamed, 1 job)", &restore, Some((&best, TARGET_RESTORE)));
    row("vigil drill: whole run", &drill, None);
    let last = shares.last().unwrap();
    let total: Duration = last.iter().map(|(_, d)| *d).sum();
    println!("\n  phases of the last drill:");
    for (phase, took) in last {
        println!(
            "    {phase:<10} {:>7.1} s  {:>5.1}%",
            took.as_secs_f64(),
            100.0 * took.as_secs_f64() / total.as_secs_f64()
        );
    }
    let rss = drill.peak_rss.unwrap_or_default() as f64 / MIB;
    println!(
        "\n  peak RSS of the vigil process: {rss:.1} MiB, target <= {TARGET_RSS_MIB} MiB: {}",
        if rss <= TARGET_RSS_MIB { "ok" } else { "OVER" }
    );
    drop(paused);
    pgbackrest_case(&services, &database, args.pgbackrest_runs);
}

/// A folder the server's account owns, with a pgbackrest set of the private cluster and a drill
/// of it to the end of the archive.
fn pgbackrest_setup(services: &Services, database: &str) -> Setup {
    let setup = Setup::new(services, database);
    let path = setup.dir.path();
    std::fs::write(path.join("cipher-pass"), &services.pgbackrest_cipher_pass).unwrap();
    let set = format!(
        "[backups.pitr]\ntarget = \"db\"\nmethod = \"pgbackrest\"\nstanza = \"{}\"\nconfig_file = \"{}\"\n\
         cipher_pass = {{ file = \"../cipher-pass\" }}\nschedule = \"0 1 * * *\"\n\n\
         [drills.pitr]\nbackup = \"pitr\"\nrpo = \"1d\"\nrto = \"1h\"\n",
        services.pgbackrest_stanza, services.pgbackrest_config
    );
    let schedule = path.join("schedules/bench.toml");
    // The services' CA sits in a folder only its creator reads; the account gets a copy.
    let ca = path.join("ca.pem");
    std::fs::copy(&services.pg_ca, &ca).unwrap();
    let text =
        std::fs::read_to_string(&schedule).unwrap().replace(&services.pg_ca, &ca.display().to_string()) + "\n" + &set;
    std::fs::write(&schedule, text).unwrap();
    for file in ["admin.json", "cipher-pass"] {
        std::fs::set_permissions(path.join(file), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    if let Some((uid, gid)) = services.pg_account() {
        let chown = std::process::Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(path).status();
        assert!(chown.unwrap().success(), "chown the bench folder");
    }
    setup
}

/// By hand: `pgbackrest restore` into `folder/data`, the server started on it (socket only,
/// the source's `max_connections`), and polled until promoted; then stopped and removed.
fn bare_pgbackrest(services: &Services, folder: &std::path::Path, bin: &std::path::Path) -> Duration {
    let data = folder.join("data");
    let _ = std::fs::remove_dir_all(folder);
    let mut mkdir = std::process::Command::new("install");
    mkdir.args(["-d", "-m", "0700"]).arg(folder);
    assert!(services.as_pg_account(mkdir).status().unwrap().success());
    std::fs::write(folder.join("hba.conf"), "local all all trust\n").unwrap();
    let started = std::time::Instant::now();
    let mut restore = pgbackrest(services);
    restore
        .env("PGBACKREST_REPO1_CIPHER_PASS", &services.pgbackrest_cipher_pass)
        .arg(format!("--pg1-path={}", data.display()))
        .args(["--type=default", "--archive-mode=off", "--log-level-console=error", "restore"]);
    let out = restore.output().unwrap();
    assert!(out.status.success(), "pgbackrest restore: {}", String::from_utf8_lossy(&out.stderr));
    let mut postgres = std::process::Command::new(bin.join("postgres"));
    postgres
        .env_clear()
        .env("PGBACKREST_REPO1_CIPHER_PASS", &services.pgbackrest_cipher_pass)
        .arg("-D")
        .arg(&data)
        .args(["-c", "listen_addresses=", "-c", "max_connections=300", "-c", "ssl=off"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", folder.display()))
        .arg("-c")
        .arg(format!("hba_file={}", folder.join("hba.conf").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = services.as_pg_account(postgres).spawn().unwrap();
    loop {
        let mut psql = std::process::Command::new("psql");
        psql.args(["-X", "-A", "-t", "-h"]).arg(folder).args([
            "-U",
            &services.pg_user,
            "-d",
            "postgres",
            "-c",
            "SELECT pg_is_in_recovery()",
        ]);
        let out = psql.output().unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "f" {
            break;
        }
        assert!(server.try_wait().unwrap().is_none(), "the restored server stopped during recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    // SAFETY: our own child's pid.
    unsafe { libc::kill(server.id() as i32, libc::SIGINT) };
    server.wait().unwrap();
    std::fs::remove_dir_all(folder).unwrap();
    elapsed
}

/// Waits until the server has archived every finished WAL segment. The dump case above restores
/// gigabytes into the same cluster, faster than `archive-push` keeps up; a backup started behind
/// that queue fails (pgBackRest waits `archive-timeout` for its own segment), and each restore
/// would replay a different length of archive.
fn await_archive(services: &Services) {
    let waiting = || {
        services
            .psql("postgres", "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let started = std::time::Instant::now();
    let mut shown: Option<std::time::Instant> = None;
    loop {
        let left = waiting();
        if left == 0 {
            break;
        }
        if shown.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            eprintln!("  waiting for the archive to catch up: {left} WAL segment(s) to archive");
            shown = Some(std::time::Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if shown.is_some() {
        eprintln!("  the archive caught up in {:.0} s", started.elapsed().as_secs_f64());
    }
}

/// Writes every dirty page out, so the next measurement starts from a quiet disk.
fn sync() {
    let _ = std::process::Command::new("sync").status();
}

/// The private cluster's archiving, stopped (`pgbackrest stop`) while the dump case restores
/// into it, and started again when dropped, a panic included. Each restore writes about as much
/// WAL as it loads, and `archive-push` compressing and encrypting it takes CPU from the restores
/// that follow, by however far the archive has fallen behind. A drill's scratch target is a
/// server of its own in practice, one that archives nothing. The server keeps the WAL until the
/// archive is started again.
struct ArchivingPaused<'a>(&'a Services);

impl<'a> ArchivingPaused<'a> {
    fn new(services: &'a Services) -> Self {
        pgbackrest_control(services, "stop");
        Self(services)
    }
}

impl Drop for ArchivingPaused<'_> {
    fn drop(&mut self) {
        pgbackrest_control(self.0, "start");
    }
}

/// `pgbackrest` for the services' stanza, as the server's account, in a cleared environment.
fn pgbackrest(services: &Services) -> std::process::Command {
    let mut pgbackrest = std::process::Command::new("pgbackrest");
    pgbackrest
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .arg(format!("--config={}", services.pgbackrest_config))
        .arg(format!("--stanza={}", services.pgbackrest_stanza));
    services.as_pg_account(pgbackrest)
}

/// `pgbackrest stop` or `start` for the services' stanza.
fn pgbackrest_control(services: &Services, command: &str) {
    let out = pgbackrest(services).arg(command).output().unwrap();
    assert!(out.status.success(), "pgbackrest {command}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Lets the machine settle before a measurement: the archive current (its `archive-push`
/// processes would otherwise compete for the two cores with whatever runs next) and every dirty
/// page written out.
fn settle(services: &Services) {
    await_archive(services);
    sync();
}

/// The pgBackRest case: a full backup of the cluster, then bare restores and vigil drills of it,
/// interleaved.
fn pgbackrest_case(services: &Services, database: &str, runs: usize) {
    println!("\npgBackRest: the whole private cluster (with the database above), restored to the end of its archive");
    let setup = pgbackrest_setup(services, database);
    let as_account = |args: &[&str]| {
        let out = services.as_pg_account(setup.vigil(args)).output().unwrap();
        assert!(
            out.status.success(),
            "vigil {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    await_archive(services);
    let backup = as_account(&["backup", "run", "pitr", "--type", "full"]);
    let label = backup[0]["location"].as_str().unwrap().to_owned();
    let bin = std::path::Path::new("/usr/lib/postgresql/15/bin");
    let folder = setup.dir.path().join("bare");
    let [mut bare, mut vigil, mut whole] = std::array::from_fn(|_| Series::default());
    let mut last = Vec::new();
    // The same runs, by who went first: [bare, vigil], each (bare, vigil).
    let mut by_order: [(Series, Series); 2] = Default::default();
    for run in 1..=runs {
        eprintln!("  pgBackRest run {run} of {runs}");
        // Each writes the whole cluster. Both start from a synced disk and a current archive, and
        // they take turns going first: the first of a pair was at times the slower here.
        let bare_run = || {
            settle(services);
            bare_pgbackrest(services, &folder, bin)
        };
        let vigil_run = || {
            settle(services);
            let measured = measure("vigil drill run pitr", || {
                vec![
                    services
                        .as_pg_account(setup.vigil(&["drill", "run", "pitr"]))
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                ]
            });
            let shown = as_account(&["drill", "list"]);
            assert_eq!(shown["pitr"]["status"], "done", "{shown}");
            let phases: Vec<(String, Duration)> = shown["pitr"]["data"]["phases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (p["phase"].as_str().unwrap().to_owned(), Duration::from_millis(p["millis"].as_u64().unwrap()))
                })
                .collect();
            (measured, phases)
        };
        let (bare_time, (measured, phases)) = if run % 2 == 1 {
            let b = bare_run();
            (b, vigil_run())
        } else {
            let v = vigil_run();
            (bare_run(), v)
        };
        bare.push(bare_time, None);
        let restore = phases.iter().find(|(p, _)| p == "restore").map(|(_, d)| *d).unwrap();
        vigil.push(restore, None);
        whole.push(measured.elapsed, Some(measured.peak_rss));
        let vigil_first = run % 2 == 0;
        eprintln!(
            "    bare {:.2} s, vigil restore-to-ready {:.2} s ({} first)",
            bare_time.as_secs_f64(),
            restore.as_secs_f64(),
            if vigil_first { "vigil" } else { "bare" }
        );
        let (order_bare, order_vigil) = &mut by_order[usize::from(vigil_first)];
        order_bare.push(bare_time, None);
        order_vigil.push(restore, None);
        last = phases;
    }
    println!("  backup {label}; medians of {runs} runs\n");
    println!("  {:<44} {:>9}  {:<11} {:<9} peak RSS", "", "time", "spread (s)", "vs bare");
    row("bare: pgbackrest restore + start + recovery", &bare, None);
    row("vigil drill: restore phase (restore-to-ready)", &vigil, Some((&bare, TARGET_PGBACKREST)));
    row("vigil drill: whole run (with checks)", &whole, None);
    if runs >= 2 {
        let [(bare_first, vigil_second), (bare_second, vigil_first)] = &by_order;
        println!(
            "  restore-to-ready over bare, median by order: {:.2}x when bare went first, {:.2}x when vigil did",
            median_ratio(vigil_second, bare_first),
            median_ratio(vigil_first, bare_second)
        );
    }
    let total: Duration = last.iter().filter(|(p, _)| !p.starts_with("restore.")).map(|(_, d)| *d).sum();
    println!("\n  phases of the last drill (restore.* are parts of restore):");
    for (phase, took) in &last {
        println!(
            "    {phase:<20} {:>7.2} s  {:>5.1}%",
            took.as_secs_f64(),
            100.0 * took.as_secs_f64() / total.as_secs_f64()
        );
    }
}
