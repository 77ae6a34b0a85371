//! Step 25: `vigil run` on the demo's state: the catch-up runs what fell due (a new hourly set
//! never backed up, its drill), the RPO watch raises the demo drill's 1-second target as an
//! alert that a webhook receiver here prints, `/status` and `/metrics` answer, and SIGTERM stops
//! it cleanly.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{State, step, vigil_command};

/// The demo's daemon: listening on a free port, an hourly set and a drill of it that no run has
/// touched, so the catch-up has work to show.
fn configure(demo: &Path, hook_port: u16) -> anyhow::Result<u16> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // A webhook URL carries a token, so it is a secret: a 0600 file the configuration names.
    let url = demo.join("alert-webhook-url");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&url)?;
    writeln!(file, "http://127.0.0.1:{hook_port}/demo-hook")?;
    // /status names every secret and what fails: it asks for a bearer token, kept like one.
    let token = demo.join("status-token");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&token)?;
    writeln!(file, "{STATUS_TOKEN}")?;
    let config = demo.join("vigil.toml");
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(&format!(
        "\n[daemon]\nlisten = \"127.0.0.1:{port}\"\njitter = \"1s\"\nshutdown_grace = \"30s\"\n\
         status_token = {{ file = \"{}\" }}\n\n[alerts.webhooks.demo]\nurl = {{ file = \"{}\" }}\n",
        token.display(),
        url.display()
    ));
    std::fs::write(&config, text)?;
    std::fs::write(
        demo.join("schedules/demo-daemon.toml"),
        "# Written by `cargo xtask demo`: an hourly set and drill that the daemon finds never run.\n\
         [backups.orders-hourly]\ntarget = \"orders-pg\"\nschedule = \"0 * * * *\"\nstore = \"s3\"\n\
         bucket = \"acme-vigil-backups\"\nprefix = \"orders-hourly/\"\nkey_service = \"aws_kms\"\n\
         key_id = \"alias/vigil-backups\"\nretention = { keep_last = 24 }\n\n\
         [drills.orders-hourly-restore]\nbackup = \"orders-hourly\"\nscratch = \"orders-pg-scratch\"\n\
         schedule = \"15 * * * *\"\nrpo = \"2h\"\nrto = \"10m\"\n",
    )?;
    Ok(port)
}

/// The demo's bearer token for `/status` (a throwaway: the demo's services are too).
const STATUS_TOKEN: &str = "demo-status-token";

/// A plain HTTP GET on loopback: the status code and body.
fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    get_as(port, path, None)
}

/// [`get`] with a bearer token.
fn get_as(port: u16, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// A webhook receiver on loopback: each POST's JSON body, answered 200.
fn receive_alerts() -> anyhow::Result<(u16, Receiver<serde_json::Value>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (sender, bodies) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Ok(body) = serde_json::from_slice(&body)
                && sender.send(body).is_err()
            {
                break;
            }
        }
    });
    Ok((port, bodies))
}

/// Prints the daemon's log lines as they come until one contains `marker`.
fn follow(lines: &Receiver<String>, marker: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).with_context(|| format!("the daemon never logged {marker:?}"))?;
        println!("   | {line}");
        if line.contains(marker) {
            return Ok(());
        }
    }
}

pub(super) fn run(vigil: &Path, demo: &Path, state: &State, serve: bool) -> anyhow::Result<()> {
    step(
        "25. vigil run: the daemon catches up on what fell due, alerts a webhook, serves /status (to its token) and /metrics, and stops on SIGTERM",
    );
    let (hook_port, alerts) = receive_alerts()?;
    let port = configure(demo, hook_port)?;
    println!(
        "   (added [daemon] listen = 127.0.0.1:{port}, status_token and [alerts.webhooks.demo] (a receiver on port {hook_port})\n    to vigil.toml, and an hourly set and drill never run)"
    );
    println!("   $ vigil run");
    let started = Instant::now();
    let mut child =
        vigil_command(vigil, demo, state).arg("run").stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let stderr = child.stderr.take().context("stderr is piped")?;
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Drop the timestamp: the demo's reader wants the event.
            let shown = line.split_once("Z ").map_or(line.as_str(), |(_, rest)| rest.trim_start()).to_owned();
            if sender.send(shown).is_err() {
                break;
            }
        }
    });
    let ready = loop {
        if let Ok((200, _)) = get(port, "/readyz") {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            bail!("/readyz never answered 200");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("   (/readyz answered 200 after {} ms)", ready.as_millis());
    follow(&lines, "job=drill:orders-hourly-restore", Duration::from_secs(300))?;
    follow(&lines, "job=drill:orders-hourly-restore", Duration::from_secs(300))?;

    println!(
        "\n   The webhook receiver got (the demo drill's RPO target is 1 second, so its set's exposure is over it):"
    );
    let first = alerts.recv_timeout(Duration::from_secs(120)).context("no alert reached the webhook")?;
    for alert in std::iter::once(first).chain(std::iter::from_fn(|| alerts.recv_timeout(Duration::from_secs(3)).ok())) {
        println!(
            "     {} {} {}: {}",
            alert["status"].as_str().unwrap_or_default(),
            alert["kind"].as_str().unwrap_or_default(),
            alert["subject"].as_str().unwrap_or_default(),
            alert["summary"].as_str().unwrap_or_default()
        );
    }

    println!("\n   $ curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/status   (no token)");
    let (refused, _) = get(port, "/status")?;
    println!("     {refused}   ([daemon] status_token is set: /status names every secret and what fails)");
    if refused != 401 {
        bail!("/status answered {refused} without its token");
    }
    println!(
        "\n   $ curl -s -H \"Authorization: Bearer $(cat status-token)\" http://127.0.0.1:{port}/status   (the secrets, as `vigil status --output json` gives them)"
    );
    let (_, status) = get_as(port, "/status", Some(STATUS_TOKEN))?;
    let status: serde_json::Value = serde_json::from_str(&status).context("/status is not JSON")?;
    for secret in status["secrets"].as_array().into_iter().flatten() {
        println!(
            "     {:<20} next due {}  (in {} s)",
            secret["secret"].as_str().unwrap_or_default(),
            secret["next_due"].as_str().unwrap_or_default(),
            secret["due_in_secs"]
        );
    }
    println!("\n   $ curl -s http://127.0.0.1:{port}/metrics | grep …");
    let (_, metrics) = get(port, "/metrics")?;
    let wanted = [
        "vigil_backups_total",
        "vigil_drills_total",
        "vigil_backup_recovery_point_age_seconds",
        "vigil_backup_rpo_target_seconds",
        "vigil_secret_due_seconds{secret=\"orders-app\"",
        "vigil_leader ",
        "vigil_evidence_records_appended_total",
        "vigil_alerts_firing",
    ];
    for line in metrics.lines().filter(|l| !l.starts_with('#') && wanted.iter().any(|w| l.starts_with(w))) {
        println!("     {line}");
    }

    if serve {
        println!(
            "\n   vigil run is serving:\n     http://127.0.0.1:{port}/status\n     http://127.0.0.1:{port}/metrics\n     http://127.0.0.1:{port}/readyz\n   Ctrl-C stops it."
        );
        // Ctrl-C reaches the daemon too (one process group); it finishes its steps and exits.
        let status = child.wait()?;
        println!("   (vigil run exited with {})", status.code().unwrap_or(-1));
        return Ok(());
    }
    println!("\n   $ kill -TERM <vigil run>");
    let signalled = Instant::now();
    let sent = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    if !sent.success() {
        bail!("kill -TERM failed");
    }
    let status = child.wait()?;
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
        println!("   | {line}");
    }
    println!("   (exit code {} after {} ms)", status.code().unwrap_or(-1), signalled.elapsed().as_millis());
    if status.code() != Some(0) {
        bail!("vigil run did not exit 0 on SIGTERM");
    }
    Ok(())
}
