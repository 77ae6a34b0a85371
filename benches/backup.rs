//! `cargo xtask bench backup`: `vigil backup run` on a generated PostgreSQL database of about
//! 1 GiB that compresses like real data, beside the baselines a user would otherwise run, all in
//! one run on the same database:
//!
//! - to the local store (local key) against `pg_dump -Fc > /dev/null`;
//! - to S3 on moto (KMS on moto) against the shell pipeline
//!   `pg_dump -Fc -Z0 | zstd -3 -T2 | openssl enc -aes-256-ctr -pbkdf2 | aws s3 cp - s3://…`
//!   to the same endpoint;
//! - the peak RSS of the vigil process (not its pg_dump child) on a ~50 MB and the ~1 GiB
//!   database.
//!
//! The write phase (catalog `started_at` to `finished_at`) is what compares with the baselines,
//! which neither read back nor check what they wrote; the whole run, verification included, is
//! printed beside it. Each figure is the median of `--runs` (3) interleaved runs, and each ratio
//! the median of the runs' own ratios: a 2-core machine's timings drift by 10% or more.
//!
//! Targets: write <= 1.10x `pg_dump -Fc` to the local store, <= 1.0x the shell pipeline to S3,
//! peak RSS <= 64 MiB whatever the database size.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What the generated data is made of, as a version: a database built by an older generator is
/// dropped and built again.
const GENERATOR: &str = "pgbench+events v1";
/// Rows of `events` per MiB of dump and MiB of dump per pgbench scale step, as measured: an
/// `events` row dumps to about 205 bytes, pgbench to about 10 MiB per scale step.
const EVENT_ROWS_PER_MIB: u64 = 5_100;
const MIB_PER_PGBENCH_SCALE: u64 = 10;
const TARGET_LOCAL: f64 = 1.10;
const TARGET_S3: f64 = 1.0;
const TARGET_RSS_MIB: f64 = 64.0;

struct Args {
    /// MiB of the large database's dump.
    size_mib: u64,
    /// MiB of the small database's dump.
    small_mib: u64,
    /// Runs of each measurement on the large database.
    runs: usize,
}

fn args() -> Args {
    let mut args = Args { size_mib: 1024, small_mib: 50, runs: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--size-mib" => args.size_mib = it.next().and_then(|n| n.parse().ok()).expect("a number"),
            "--small-mib" => args.small_mib = it.next().and_then(|n| n.parse().ok()).expect("a number"),
            "--runs" => args.runs = it.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0).expect("a number"),
            // cargo bench passes --bench; nothing else is ours.
            _ => {}
        }
    }
    args
}

/// The private PostgreSQL server and moto, from `target/services/services.json`.
struct Services {
    pg_host: String,
    pg_port: u16,
    pg_user: String,
    pg_password: String,
    /// The CA of the private server's certificate: every connection is verify-full.
    pg_ca: String,
    moto_endpoint: String,
    moto_region: String,
    moto_key_id: String,
    moto_secret: String,
}

impl Services {
    fn load() -> Self {
        let file = std::env::var("VIGIL_SERVICES_FILE").expect("run through `cargo xtask bench backup`");
        let v: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let s = |v: &Value| v.as_str().unwrap().to_owned();
        let (pg, moto) = (&v["postgres"], &v["moto"]);
        Self {
            pg_host: s(&pg["host"]),
            pg_port: u16::try_from(pg["port"].as_u64().unwrap()).unwrap(),
            pg_user: s(&pg["user"]),
            pg_password: s(&pg["password"]),
            pg_ca: s(&pg["ca_file"]),
            moto_endpoint: s(&moto["endpoint_url"]),
            moto_region: s(&moto["region"]),
            moto_key_id: s(&moto["access_key_id"]),
            moto_secret: s(&moto["secret_access_key"]),
        }
    }

    /// A PostgreSQL client tool pointed at the private server, its password in its environment.
    fn pg_tool(&self, tool: &str) -> Command {
        let mut command = Command::new(tool);
        command
            .env("PGHOST", &self.pg_host)
            .env("PGPORT", self.pg_port.to_string())
            .env("PGUSER", &self.pg_user)
            .env("PGPASSWORD", &self.pg_password)
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &self.pg_ca);
        command
    }

    fn psql(&self, database: &str, sql: &str) -> String {
        let out = self
            .pg_tool("psql")
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// A database of about `mib` MiB of dump: pgbench's tables (which compress over 100x) and an
/// `events` table of timestamps, names, hex tokens, amounts and random bytes (about 2.2x), built
/// once and kept while the services run.
fn ensure_database(services: &Services, mib: u64) -> String {
    let name = format!("vigil_bench_{mib}");
    let built = services.psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")) == "1"
        && services.psql(&name, "SELECT coalesce(obj_description(to_regclass('events')), '')") == GENERATOR;
    if built {
        return name;
    }
    let started = Instant::now();
    // A fifth pgbench, the rest events.
    let scale = (mib / 5 / MIB_PER_PGBENCH_SCALE).max(1);
    let rows = mib.saturating_sub(scale * MIB_PER_PGBENCH_SCALE) * EVENT_ROWS_PER_MIB;
    eprintln!("  building database {name}: pgbench scale {scale} and {rows} event rows (once while the services run)");
    services.psql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
    services.psql("postgres", &format!("CREATE DATABASE {name}"));
    let status = services
        .pg_tool("pgbench")
        .args(["-i", "-q", "-I", "dtGvp", "-s", &scale.to_string(), &name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pgbench -i failed");
    services.psql(
        &name,
        &format!(
            "CREATE TABLE events AS SELECT g AS id, \
               timestamptz '2025-01-01' + g * interval '7 seconds' + random() * interval '5 seconds' AS at, \
               (ARRAY['signup','login','purchase','refund','logout','password_reset'])[1 + g % 6] AS kind, \
               'customer-' || (random() * 100000)::int AS customer, \
               md5(random()::text) || ' ' || md5(random()::text) AS token, \
               round((random() * 1000)::numeric, 2) AS amount, \
               decode(md5(random()::text) || md5(random()::text), 'hex') AS blob \
             FROM generate_series(1, {rows}) g; \
             ALTER TABLE events ADD PRIMARY KEY (id); \
             COMMENT ON TABLE events IS '{GENERATOR}';"
        ),
    );
    services.psql(&name, "VACUUM ANALYZE");
    eprintln!("  (built in {:.0} s)", started.elapsed().as_secs_f64());
    name
}

/// Wall time of a group of processes, and the sum of each one's peak RSS.
struct Measured {
    elapsed: Duration,
    peak_rss: u64,
}

/// The peak resident set of a live process, from `/proc/PID/status`.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Runs the processes `spawn` starts until all exit, sampling each one's peak RSS every 5 ms
/// (the kernel forgets it at exit). Panics if any fails.
fn measure(label: &str, spawn: impl FnOnce() -> Vec<Child>) -> Measured {
    let started = Instant::now();
    let mut children = spawn();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let done = done.clone();
        move || {
            let mut peaks = vec![0u64; pids.len()];
            while !done.load(Ordering::Relaxed) {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    *peak = (*peak).max(vm_hwm(*pid).unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peaks.iter().sum()
        }
    });
    for child in children.iter_mut().rev() {
        let status = child.wait().unwrap();
        assert!(status.success(), "{label}: a process failed: {status}");
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    Measured { elapsed, peak_rss: sampler.join().unwrap() }
}

/// A folder with `vigil.toml` and a schedule of two backup sets of `database`: `local` (local
/// store, local key) and `s3` (S3 on moto, KMS on moto).
struct Setup {
    dir: tempfile::TempDir,
    s3: aws_sdk_s3::Client,
    bucket: String,
    kms_key: String,
    admin: String,
}

impl Setup {
    async fn new(services: &Services) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bucket = format!("vigil-bench-{}", std::process::id());
        let secret = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path.display().to_string()
        };
        let key_id = secret("aws-id", &services.moto_key_id);
        let secret_key = secret("aws-secret", &services.moto_secret);
        let admin = secret(
            "admin.json",
            &serde_json::json!({ "username": services.pg_user, "password": services.pg_password }).to_string(),
        );
        std::fs::write(
            dir.path().join("vigil.toml"),
            format!(
                "[controller]\ndata_dir = \"data\"\n\n[aws]\nregion = \"{}\"\nendpoint_url = \"{}\"\n\
                 access_key_id = {{ file = \"{key_id}\" }}\nsecret_access_key = {{ file = \"{secret_key}\" }}\n",
                services.moto_region, services.moto_endpoint
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        // The bench's own clients are made as vigil makes its own, from the same `[aws]`.
        let aws = vigil::config::load(&dir.path().join("vigil.toml")).unwrap().plan.aws.unwrap();
        let s3 = vigil::aws::s3_client(&aws).await.unwrap();
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        let kms = aws_sdk_kms::Client::new(&vigil::aws::sdk_config(&aws).await.unwrap());
        let kms_key = kms.create_key().send().await.unwrap().key_metadata.unwrap().key_id;
        Self { dir, s3, bucket, kms_key, admin }
    }

    /// Empties and removes the bucket, which moto would otherwise keep until it stops.
    async fn remove_bucket(&self) {
        let listed = self.s3.list_objects_v2().bucket(&self.bucket).send().await.unwrap();
        for object in listed.contents() {
            self.s3.delete_object().bucket(&self.bucket).key(object.key().unwrap()).send().await.unwrap();
        }
        self.s3.delete_bucket().bucket(&self.bucket).send().await.unwrap();
    }

    /// Points both sets at `database`.
    fn write_schedule(&self, services: &Services, database: &str) {
        let text = format!(
            "[targets.db]\nkind = \"postgres\"\nhost = \"{}\"\nport = {}\ndatabase = \"{database}\"\nadmin = {{ file = \"{}\" }}\ntls = {{ ca_file = \"{}\" }}\n\n\
             [backups.local]\ntarget = \"db\"\nschedule = \"0 2 * * *\"\nstore = \"local\"\npath = \"../backups\"\n\
             key_service = \"local\"\nkey_file = \"../keys/backup.key\"\n\n\
             [backups.s3]\ntarget = \"db\"\nschedule = \"0 2 * * *\"\nstore = \"s3\"\nbucket = \"{}\"\nprefix = \"vigil/\"\n\
             key_service = \"aws_kms\"\nkey_id = \"{}\"\n",
            services.pg_host, services.pg_port, self.admin, services.pg_ca, self.bucket, self.kms_key
        );
        std::fs::write(self.dir.path().join("schedules/bench.toml"), text).unwrap();
    }

    fn vigil(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vigil"));
        command.current_dir(self.dir.path()).args(["--output", "json"]).args(args);
        command
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.vigil(args).output().unwrap();
        assert!(out.status.success(), "vigil {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// One `vigil backup run SET`: the whole run, the write phase and the dump's size.
struct VigilRun {
    run: Measured,
    write: Duration,
    plaintext_bytes: u64,
    stored_bytes: u64,
}

fn vigil_backup(setup: &Setup, set: &str) -> VigilRun {
    let mut id_file = tempfile::NamedTempFile::new().unwrap();
    let run = measure(&format!("vigil backup run {set}"), || {
        vec![
            setup
                .vigil(&["backup", "run", set])
                .stdout(id_file.reopen().unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ]
    });
    let report: Value = serde_json::from_reader(id_file.as_file_mut()).unwrap();
    assert_eq!(report[0]["verified"], true, "{report}");
    let id = report[0]["backup_id"].as_str().unwrap();
    let list = setup.json(&["backup", "list", "--set", set]);
    let entry = list.as_array().unwrap().iter().find(|e| e["id"] == id).unwrap();
    let time = |field: &str| chrono::DateTime::parse_from_rfc3339(entry[field].as_str().unwrap()).unwrap();
    let write = (time("finished_at") - time("started_at")).to_std().unwrap();
    let verified = setup.json(&["backup", "verify", id]);
    VigilRun {
        run,
        write,
        plaintext_bytes: verified["stream"]["plaintext_bytes"].as_u64().unwrap(),
        stored_bytes: entry["bytes"].as_u64().unwrap(),
    }
}

/// `pg_dump -Fc > /dev/null`: what the server and pg_dump's own compression cost.
fn pg_dump_to_null(services: &Services, database: &str, compress: Option<&str>) -> Measured {
    measure("pg_dump -Fc", || {
        let mut dump = services.pg_tool("pg_dump");
        dump.args(["-Fc", "-d", database]).args(compress.map(|z| format!("-Z{z}"))).stdout(Stdio::null());
        vec![dump.spawn().unwrap()]
    })
}

/// The pipeline a user would write instead of vigil, to the same S3 endpoint.
fn shell_pipeline_to_s3(services: &Services, setup: &Setup, database: &str, aws: &Path) -> Measured {
    measure("shell pipeline", || {
        let mut dump =
            services.pg_tool("pg_dump").args(["-Fc", "-Z0", "-d", database]).stdout(Stdio::piped()).spawn().unwrap();
        let mut zstd = Command::new("zstd")
            .args(["-3", "-T2", "-q", "-c"])
            .stdin(dump.stdout.take().unwrap())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut openssl = Command::new("openssl")
            .args(["enc", "-aes-256-ctr", "-pbkdf2", "-pass", "env:VIGIL_BENCH_PASSPHRASE"])
            .env("VIGIL_BENCH_PASSPHRASE", format!("bench-{}", std::process::id()))
            .stdin(zstd.stdout.take().unwrap())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let upload = Command::new(aws)
            .args(["s3", "cp", "--only-show-errors", "-", &format!("s3://{}/shell/{database}.zst.enc", setup.bucket)])
            .args(["--endpoint-url", &services.moto_endpoint])
            .env("AWS_ACCESS_KEY_ID", &services.moto_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &services.moto_secret)
            .env("AWS_DEFAULT_REGION", &services.moto_region)
            .stdin(openssl.stdout.take().unwrap())
            .spawn()
            .unwrap();
        vec![dump, zstd, openssl, upload]
    })
}

const MB: f64 = 1e6;
const MIB: f64 = 1024.0 * 1024.0;

/// One figure over the runs: its times and the highest peak RSS.
#[derive(Default)]
struct Series {
    times: Vec<Duration>,
    peak_rss: Option<u64>,
}

impl Series {
    fn push(&mut self, time: Duration, rss: Option<u64>) {
        self.times.push(time);
        self.peak_rss = self.peak_rss.max(rss);
    }

    fn median(&self) -> Duration {
        let mut times = self.times.clone();
        times.sort();
        times[times.len() / 2]
    }
}

/// The median over the runs of each run's `series` time over its `baseline` time: pairs taken
/// minutes apart, so the machine's drift cancels out.
fn median_ratio(series: &Series, baseline: &Series) -> f64 {
    let mut ratios: Vec<f64> =
        series.times.iter().zip(&baseline.times).map(|(s, b)| s.as_secs_f64() / b.as_secs_f64()).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// A line of the table: the median time, the dump rate, the spread, the ratio to the baseline
/// against the target, and the peak RSS.
fn row(label: &str, series: &Series, bytes: u64, against: Option<(&Series, f64)>) {
    let median = series.median();
    let (min, max) = (series.times.iter().min().unwrap(), series.times.iter().max().unwrap());
    let ratio = against.map_or(String::new(), |(baseline, target)| {
        let r = median_ratio(series, baseline);
        format!("{r:.2}x {}", if r <= target { "ok" } else { "OVER" })
    });
    println!(
        "  {label:<40} {:>6.1} s {:>6.1} MB/s  {:>5.1}-{:<5.1} {ratio:<9} {}",
        median.as_secs_f64(),
        bytes as f64 / MB / median.as_secs_f64(),
        min.as_secs_f64(),
        max.as_secs_f64(),
        series.peak_rss.map_or(String::new(), |b| format!("{:>5.1} MiB", b as f64 / MIB)),
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    let services = Services::load();
    let aws = PathBuf::from(std::env::var("VIGIL_BENCH_AWS").expect("run through `cargo xtask bench backup`"));
    println!(
        "backup benchmark: PostgreSQL databases of ~{} MiB and ~{} MiB of dump, {} runs",
        args.size_mib, args.small_mib, args.runs
    );
    let large = ensure_database(&services, args.size_mib);
    let small = ensure_database(&services, args.small_mib);
    let setup = Setup::new(&services).await;

    // The small database first: it warms the binary, and its peak RSS is the first figure.
    setup.write_schedule(&services, &small);
    let small_local = vigil_backup(&setup, "local");
    let small_s3 = vigil_backup(&setup, "s3");

    setup.write_schedule(&services, &large);
    // An uncompressed dump first reads the whole database into the page cache, so that every
    // figure after it starts alike; it is also the server's own dump rate.
    let mut server = Series::default();
    server.push(pg_dump_to_null(&services, &large, Some("0")).elapsed, None);
    let [mut bare, mut local_write, mut local_run, mut shell, mut s3_write, mut s3_run] =
        std::array::from_fn(|_| Series::default());
    let mut sizes = (0, 0);
    for run in 1..=args.runs {
        eprintln!("  run {run} of {}", args.runs);
        bare.push(pg_dump_to_null(&services, &large, None).elapsed, None);
        let local = vigil_backup(&setup, "local");
        local_write.push(local.write, None);
        local_run.push(local.run.elapsed, Some(local.run.peak_rss));
        let pipeline = shell_pipeline_to_s3(&services, &setup, &large, &aws);
        shell.push(pipeline.elapsed, Some(pipeline.peak_rss));
        let s3 = vigil_backup(&setup, "s3");
        s3_write.push(s3.write, None);
        s3_run.push(s3.run.elapsed, Some(s3.run.peak_rss));
        sizes = (local.plaintext_bytes, local.stored_bytes);
    }
    setup.remove_bucket().await;

    let (bytes, stored) = sizes;
    println!(
        "\n  database {large}: {:.0} MiB of dump, stored as {:.0} MiB ({:.2}x: zstd -3, then AES-256-GCM)",
        bytes as f64 / MIB,
        stored as f64 / MIB,
        bytes as f64 / stored as f64
    );
    println!("  medians of {} runs; the ratio is the median of each run's ratio\n", args.runs);
    println!("  {:<40} {:>8} {:>11}  {:<11} {:<9} peak RSS", "", "time", "dump rate", "spread (s)", "vs base");
    row("pg_dump -Fc -Z0 > /dev/null (server)", &server, bytes, None);
    row("pg_dump -Fc > /dev/null (baseline)", &bare, bytes, None);
    row("vigil -> local store: write", &local_write, bytes, Some((&bare, TARGET_LOCAL)));
    row("vigil -> local store: write + verify", &local_run, bytes, None);
    println!();
    row("shell pipeline -> S3 (baseline)", &shell, bytes, None);
    row("vigil -> S3: write", &s3_write, bytes, Some((&shell, TARGET_S3)));
    row("vigil -> S3: write + verify", &s3_run, bytes, None);
    println!("\n  (the shell pipeline's RSS is the sum of its four processes' peaks; S3 is moto)");
    println!("\n  peak RSS of the vigil process, target <= {TARGET_RSS_MIB} MiB:");
    let small_mib = small_local.plaintext_bytes as f64 / MIB;
    let large_mib = bytes as f64 / MIB;
    for (label, rss) in [
        (format!("{small_mib:.0} MiB database -> local store"), small_local.run.peak_rss),
        (format!("{small_mib:.0} MiB database -> S3"), small_s3.run.peak_rss),
        (format!("{large_mib:.0} MiB database -> local store"), local_run.peak_rss.unwrap()),
        (format!("{large_mib:.0} MiB database -> S3"), s3_run.peak_rss.unwrap()),
    ] {
        let mib = rss as f64 / MIB;
        println!("    {label:<40} {mib:>5.1} MiB {}", if mib <= TARGET_RSS_MIB { "ok" } else { "OVER" });
    }
}
