//! `cargo xtask bench daemon`: `vigil run` with 100 configured secrets (none due), idling:
//! time from start to `/readyz` answering 200, peak and steady RSS, and CPU over a minute,
//! beside a bare daemon measured the same way in the same run: this benchmark's own binary
//! serving `/readyz` from a tokio runtime and axum (the same crates, the same release build),
//! the floor any Rust HTTP daemon starts from.
//!
//! Targets: `/readyz` within 200 ms, steady RSS at most 25 MiB, under 1 % of a core.
//! `--secrets N` (default 100), `--idle-secs S` (default 60), `--runs N` (default 3; medians).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    secrets: usize,
    idle: Duration,
    runs: usize,
}

fn args() -> Args {
    let mut args = Args { secrets: 100, idle: Duration::from_secs(60), runs: 3 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = || it.next().and_then(|n| n.parse::<u64>().ok()).expect("a number");
        match arg.as_str() {
            "--secrets" => args.secrets = number() as usize,
            "--idle-secs" => args.idle = Duration::from_secs(number()),
            "--runs" => args.runs = number() as usize,
            _ => {}
        }
    }
    args
}

/// What one process measured.
struct Figures {
    ready: Duration,
    peak_rss_kib: u64,
    steady_rss_kib: u64,
    cpu_percent: f64,
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after `) state`.
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn ready(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET /readyz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

fn measure(mut child: Child, port: u16, idle: Duration) -> Figures {
    let pid = child.id();
    let started = Instant::now();
    while !ready(port) {
        assert!(started.elapsed() < Duration::from_secs(30), "/readyz never answered 200");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the daemon exited with {status}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let ready = started.elapsed();
    let ticks_before = cpu_ticks(pid);
    let idle_started = Instant::now();
    let mut samples = Vec::new();
    while idle_started.elapsed() < idle {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(status_field(pid, "VmRSS:"));
    }
    let ticks = cpu_ticks(pid) - ticks_before;
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_percent = ticks as f64 / per_second / idle_started.elapsed().as_secs_f64() * 100.0;
    let peak_rss_kib = status_field(pid, "VmHWM:");
    let half = samples.len() / 2;
    let steady = &mut samples[half..];
    steady.sort_unstable();
    let steady_rss_kib = steady[steady.len() / 2];
    let _ = child.kill();
    let _ = child.wait();
    Figures { ready, peak_rss_kib, steady_rss_kib, cpu_percent }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A configuration with `secrets` API keys, each rotated a minute ago (none due), in a fresh
/// SQLite state store; no service is contacted until one is due.
async fn configure(dir: &Path, secrets: usize, port: u16) {
    std::fs::create_dir_all(dir.join("schedules")).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "bench-token").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.join("vigil.toml"),
        format!(
            "[controller]\ndata_dir = \"data\"\n\n[vault]\naddress = \"http://127.0.0.1:1\"\ntoken = {{ file = \"{}\" }}\n\n\
             [daemon]\nlisten = \"127.0.0.1:{port}\"\n",
            token.display()
        ),
    )
    .unwrap();
    let mut schedule = String::new();
    for i in 0..secrets {
        schedule.push_str(&format!(
            "[secrets.key-{i}]\nkind = \"api_key\"\nstore = \"vault_kv\"\npath = \"bench/key-{i}\"\n\
             issuer = {{ url = \"http://127.0.0.1:1\", token = {{ file = \"{}\" }} }}\n\n",
            token.display()
        ));
    }
    std::fs::write(dir.join("schedules/keys.toml"), schedule).unwrap();
    let plan = vigil::config::load(&dir.join("vigil.toml")).unwrap_or_else(|d| panic!("{d:?}")).plan;
    let db = vigil::state::Db::open(&plan.evidence.store).await.unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for i in 0..secrets {
        let vigil::state::Pool::Sqlite(pool) = db.pool() else { unreachable!("the bench's store is SQLite") };
        sqlx::query(
            "INSERT INTO secret_status (subject, last_rotated, last_rotation, updated_at) VALUES ($1, $2, 'bench', $2)",
        )
        .bind(format!("secret:key-{i}"))
        .bind(&now)
        .execute(pool)
        .await
        .unwrap();
    }
    db.close().await;
}

/// The baseline: this binary, re-run with `--bare PORT`, serving `/readyz` with axum.
fn bare(port: u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let app = axum::Router::new().route("/readyz", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--bare") {
        bare(argv.next().and_then(|p| p.parse().ok()).expect("a port"));
        return;
    }
    let args = args();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "vigil run, {} secrets configured (none due), idling {} s; {} runs each, taking turns",
        args.secrets,
        args.idle.as_secs(),
        args.runs
    );
    let mut vigil_runs = Vec::new();
    let mut bare_runs = Vec::new();
    for _ in 0..args.runs {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        runtime.block_on(configure(dir.path(), args.secrets, port));
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("run")
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        vigil_runs.push(measure(child, port, args.idle));
        let port = free_port();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--bare", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        bare_runs.push(measure(child, port, args.idle));
    }
    let row = |name: &str, runs: &[Figures]| {
        let ready = median(runs.iter().map(|f| f.ready.as_secs_f64() * 1000.0).collect());
        let peak = median(runs.iter().map(|f| f.peak_rss_kib as f64 / 1024.0).collect());
        let steady = median(runs.iter().map(|f| f.steady_rss_kib as f64 / 1024.0).collect());
        let cpu = median(runs.iter().map(|f| f.cpu_percent).collect());
        println!("{name:<28} {ready:>10.1} {peak:>14.1} {steady:>16.1} {cpu:>12.3}");
        (ready, steady, cpu)
    };
    println!("{:<28} {:>10} {:>14} {:>16} {:>12}", "", "ready ms", "peak RSS MiB", "steady RSS MiB", "CPU %");
    let (ready, steady, cpu) = row("vigil run", &vigil_runs);
    row("bare tokio + axum (baseline)", &bare_runs);
    println!(
        "targets: ready <= 200 ms ({}), steady RSS <= 25 MiB ({}), CPU < 1 % ({})",
        if ready <= 200.0 { "met" } else { "MISSED" },
        if steady <= 25.0 { "met" } else { "MISSED" },
        if cpu < 1.0 { "met" } else { "MISSED" }
    );
}
