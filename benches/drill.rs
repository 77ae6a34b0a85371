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
//! Each figure is the median of `--runs` (3) interleaved runs. Targets: restore phase <= 1.10x
//! the best bare `pg_restore`; peak RSS <= 64 MiB.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

#[path = "support/mod.rs"]
mod support;
use support::{MIB, Series, Services, ensure_database, measure, median_ratio};

const TARGET_RESTORE: f64 = 1.10;
const TARGET_RSS_MIB: f64 = 64.0;

struct Args {
    size_mib: u64,
    runs: usize,
}

fn args() -> Args {
    let mut args = Args { size_mib: 1024, runs: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--size-mib" => args.size_mib = it.next().and_then(|n| n.parse().ok()).expect("a number"),
            "--runs" => args.runs = it.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0).expect("a number"),
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

fn vigil_drill(setup: &Setup) -> DrillRun {
    let mut report_file = tempfile::NamedTempFile::new().unwrap();
    let run = measure("vigil drill run", || {
        vec![
            setup
                .vigil(&["drill", "run", "bench"])
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
    let setup = Setup::new(&services, &database);
    let backup = setup.json(&["backup", "run", "local"]);
    let id = backup[0]["backup_id"].as_str().unwrap().to_owned();
    let dump = setup.dir.path().join("bench.dump");
    let fetched = setup.vigil(&["backup", "fetch", &id, "-o", dump.to_str().unwrap()]).output().unwrap();
    assert!(fetched.status.success(), "fetch failed: {}", String::from_utf8_lossy(&fetched.stderr));
    let bytes = std::fs::metadata(&dump).unwrap().len();

    let [mut single, mut two, mut best, mut drill, mut restore] = std::array::from_fn(|_| Series::default());
    let mut shares: Vec<Vec<(String, Duration)>> = Vec::new();
    for run in 1..=args.runs {
        eprintln!("  run {run} of {}", args.runs);
        let one = bare_restore(&services, &dump, 1);
        let jobs = bare_restore(&services, &dump, 2);
        single.push(one, None);
        two.push(jobs, None);
        best.push(one.min(jobs), None);
        let ran = vigil_drill(&setup);
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
}
