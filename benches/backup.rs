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
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

#[path = "support/mod.rs"]
mod support;
use support::{MB, MIB, Measured, Series, Services, ensure_database, measure, median_ratio};

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
