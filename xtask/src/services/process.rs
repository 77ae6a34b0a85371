//! Starting service processes detached from the terminal, and stopping exactly those by PID.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Whose identity a service runs under: the caller's, or an unprivileged account when root.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Spawns `command` in its own process group, with output appended to `log`.
///
/// Its own group keeps a Ctrl-C at the terminal from killing it before `down` stops it cleanly.
pub fn spawn(mut command: Command, log: &Path, run_as: Option<RunAs>) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let out =
        OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("open {}", log.display()))?;
    let err = out.try_clone()?;
    command.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    as_account(&mut command, run_as);
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command.spawn().with_context(|| format!("start {program}"))?;
    Ok(child.id())
}

/// Makes `command` run under `run_as`, when given.
pub fn as_account(command: &mut Command, run_as: Option<RunAs>) {
    use std::os::unix::process::CommandExt;
    if let Some(RunAs { uid, gid }) = run_as {
        command.uid(uid).gid(gid);
    }
}

/// Whether `pid` is a live (not zombie) process whose command line contains `marker`.
///
/// The marker (a data folder, a port) guards against a recycled PID now naming someone else's process.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !cmdline.contains(marker) {
        return false;
    }
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state letter follows the parenthesised command name.
    let state = state.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some(Some('Z' | 'X')) | None)
}

/// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    matches!(stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()), Some('Z' | 'X'))
}

/// Waits until `ready()` holds; if the process exits first or `timeout` passes, kills it and
/// fails with the end of its log.
pub fn await_ready(
    name: &str,
    pid: u32,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        let gone = exited(pid);
        if gone || Instant::now() >= deadline {
            if !gone {
                // SAFETY: kill(2) on the child we just started; no memory effects.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            reap(pid as i32);
            let why = if gone { "exited" } else { "did not become ready in time" };
            bail!("{name} {why}; its log ({}) ends:\n{}", log.display(), log_tail(log, 40));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `signal`, waits up to `grace` for the process to go, then kills it.
pub fn stop(pid: u32, marker: &str, signal: i32, grace: Duration) -> anyhow::Result<()> {
    if !is_ours(pid, marker) {
        return Ok(());
    }
    let pid_t = i32::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) with a PID we started and just checked; it has no memory effects.
    unsafe { libc::kill(pid_t, signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_ours(pid, marker) {
            reap(pid_t);
            await_vanish(pid);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid_t, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    reap(pid_t);
    if is_ours(pid, marker) {
        bail!("process {pid} survived SIGKILL");
    }
    Ok(())
}

/// Waits briefly for an ended process to leave the process table, so that `ps` right after
/// `down` shows nothing of ours: an orphan's zombie lasts until init reaps it.
fn await_vanish(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Collects the exit status of a child of ours, so no zombie lingers while xtask runs on.
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid on a specific PID with WNOHANG; fails harmlessly if it is not our child.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// The last `lines` lines of a log file, to show why a service did not start.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(log) else {
        return format!("(no log at {})", log.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command to completion, failing with its output when it fails.
pub fn run_checked(mut command: Command, what: &str) -> anyhow::Result<String> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
