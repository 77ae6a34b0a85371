//! What the benchmarks share: the services file, the generated ~1 GiB database that the backup
//! and drill benchmarks both use, and timing with peak RSS.

#![allow(dead_code, reason = "each benchmark uses part of what they share")]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What the generated data is made of, as a version: a database built by an older generator is
/// dropped and built again.
pub const GENERATOR: &str = "pgbench+events v1";
/// Rows of `events` per MiB of dump and MiB of dump per pgbench scale step, as measured: an
/// `events` row dumps to about 205 bytes, pgbench to about 10 MiB per scale step.
const EVENT_ROWS_PER_MIB: u64 = 5_100;
const MIB_PER_PGBENCH_SCALE: u64 = 10;
/// The private PostgreSQL server and moto, from `target/services/services.json`.
pub struct Services {
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_password: String,
    /// The CA of the private server's certificate: every connection is verify-full.
    pub pg_ca: String,
    pub moto_endpoint: String,
    pub moto_region: String,
    pub moto_key_id: String,
    pub moto_secret: String,
    /// The private server's folder (its data in `data/`), whose owner pgBackRest runs as.
    pub pg_dir: String,
    /// The pgBackRest stanza the server archives to: configuration file, name, passphrase.
    pub pgbackrest_config: String,
    pub pgbackrest_stanza: String,
    pub pgbackrest_cipher_pass: String,
}

impl Services {
    pub fn load() -> Self {
        let file = std::env::var("VIGIL_SERVICES_FILE").expect("run through `cargo xtask bench`");
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
            pg_dir: s(&pg["data_dir"]),
            pgbackrest_config: s(&v["pgbackrest"]["config"]),
            pgbackrest_stanza: s(&v["pgbackrest"]["stanza"]),
            pgbackrest_cipher_pass: s(&v["pgbackrest"]["cipher_pass"]),
        }
    }

    /// A PostgreSQL client tool pointed at the private server, its password in its environment.
    pub fn pg_tool(&self, tool: &str) -> Command {
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

    /// The server's account (uid, gid) when it is not this process's: what pgBackRest and a
    /// restored server run as.
    pub fn pg_account(&self) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt as _;
        let owner = std::fs::metadata(&self.pg_dir).unwrap();
        (owner.uid() != std::fs::metadata("/proc/self").unwrap().uid()).then(|| (owner.uid(), owner.gid()))
    }

    /// `command` run as the server's account.
    pub fn as_pg_account(&self, mut command: Command) -> Command {
        use std::os::unix::process::CommandExt as _;
        if let Some((uid, gid)) = self.pg_account() {
            command.uid(uid).gid(gid);
        }
        command
    }

    pub fn psql(&self, database: &str, sql: &str) -> String {
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
pub fn ensure_database(services: &Services, mib: u64) -> String {
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
pub struct Measured {
    pub elapsed: Duration,
    pub peak_rss: u64,
}

/// The peak resident set of a live process, from `/proc/PID/status`.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Runs the processes `spawn` starts until all exit, sampling each one's peak RSS every 5 ms
/// (the kernel forgets it at exit). Panics if any fails.
pub fn measure(label: &str, spawn: impl FnOnce() -> Vec<Child>) -> Measured {
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

/// One figure over the runs: its times and the highest peak RSS.
#[derive(Default)]
pub struct Series {
    pub times: Vec<Duration>,
    pub peak_rss: Option<u64>,
}

impl Series {
    pub fn push(&mut self, time: Duration, rss: Option<u64>) {
        self.times.push(time);
        self.peak_rss = self.peak_rss.max(rss);
    }

    pub fn median(&self) -> Duration {
        let mut times = self.times.clone();
        times.sort();
        times[times.len() / 2]
    }
}

/// The median over the runs of each run's `series` time over its `baseline` time: pairs taken
/// minutes apart, so the machine's drift cancels out.
pub fn median_ratio(series: &Series, baseline: &Series) -> f64 {
    let mut ratios: Vec<f64> =
        series.times.iter().zip(&baseline.times).map(|(s, b)| s.as_secs_f64() / b.as_secs_f64()).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

pub const MB: f64 = 1e6;
pub const MIB: f64 = 1024.0 * 1024.0;
