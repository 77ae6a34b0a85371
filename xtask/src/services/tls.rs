//! A throwaway certificate authority for the private services, and the server certificate it
//! signs (names `localhost` and `127.0.0.1`), so that every test, bench and demo connects with
//! `verify-full` as production would.
//!
//! Made once per checkout under `target/services/tls` and kept while it is valid, so that a
//! service reused by a later `up` still matches the CA the tests trust. The CA's private key is
//! deleted as soon as it has signed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use super::Context;
use super::process::{RunAs, run_checked};
use super::tools::ensure_debian_packages;

/// The CA and the server's certificate and key.
pub struct Certificates {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key (0600).
    pub key: PathBuf,
}

/// The certificates under `target/services/tls`, made if missing or expiring within a day.
pub fn certificates(ctx: &Context) -> anyhow::Result<Certificates> {
    ensure_debian_packages(&[("/usr/bin/openssl", "openssl")])?;
    let dir = ctx.dir.join("tls");
    let certs = Certificates { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") };
    if [&certs.ca, &certs.cert, &certs.key].iter().all(|p| p.exists()) && valid_for_a_day(&certs.cert) {
        return Ok(certs);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let openssl = |args: &[&str], what: &str| {
        let mut command = Command::new("/usr/bin/openssl");
        command.args(args).current_dir(&dir);
        run_checked(command, what)
    };
    // A P-256 key and a request for it (`extra` makes it a self-signed CA certificate instead).
    let new_key = |key: &str, out: &str, subject: &str, extra: &[&str], what: &str| {
        let mut args = vec!["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-keyout", key, "-out", out, "-subj", subject]);
        openssl(&args, what)
    };
    new_key("ca.key", "ca.pem", "/CN=vigil test services CA", &["-x509", "-days", "30"], "make the test CA")?;
    new_key("server.key", "server.csr", "/CN=localhost", &[], "make the server key")?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\nbasicConstraints = CA:FALSE\n",
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
        "sign the server certificate",
    )?;
    for leftover in ["ca.key", "ca.srl", "server.csr", "server.ext"] {
        let _ = std::fs::remove_file(dir.join(leftover));
    }
    std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(0o600))?;
    std::fs::set_permissions(&certs.ca, std::fs::Permissions::from_mode(0o644))?;
    Ok(certs)
}

fn valid_for_a_day(cert: &Path) -> bool {
    Command::new("/usr/bin/openssl")
        .args(["x509", "-checkend", "86400", "-noout", "-in"])
        .arg(cert)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The server's certificate, key and CA as copied into its private folder.
pub struct Installed {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Copies the server's certificate, key and the CA into a server's private folder, owned by
/// the account it runs as (which cannot enter `target/`): PostgreSQL refuses a key others can
/// read or that it does not own.
pub fn install(certs: &Certificates, dir: &Path, run_as: Option<RunAs>) -> anyhow::Result<Installed> {
    let installed = Installed { cert: dir.join("server.pem"), key: dir.join("server.key"), ca: dir.join("ca.pem") };
    std::fs::copy(&certs.cert, &installed.cert).context("copy the server certificate")?;
    std::fs::copy(&certs.key, &installed.key).context("copy the server key")?;
    std::fs::copy(&certs.ca, &installed.ca).context("copy the CA certificate")?;
    std::fs::set_permissions(&installed.key, std::fs::Permissions::from_mode(0o600))?;
    if let Some(RunAs { uid, gid }) = run_as {
        for file in [&installed.cert, &installed.key, &installed.ca] {
            std::os::unix::fs::chown(file, Some(uid), Some(gid))?;
        }
    }
    Ok(installed)
}

/// Whether the server whose private folder is `dir` serves the certificate the CA beside
/// `ca_file` last signed.
pub fn serves_current(dir: &Path, ca_file: &Path) -> bool {
    let current = ca_file.with_file_name("server.pem");
    match (std::fs::read(dir.join("server.pem")), std::fs::read(current)) {
        (Ok(served), Ok(current)) => served == current,
        _ => false,
    }
}
