//! OpenBao's dev server: the Vault API (KV v2, Transit) over TLS on a loopback port, with the
//! CA it generates (`-dev-tls`) recorded for clients.

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::process::{await_ready, is_ours, spawn};
use super::readiness::free_port;
use super::tools::PythonTools;
use super::{Context, random_hex};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenBao {
    pub pid: u32,
    pub port: u16,
    pub address: String,
    /// The root token, generated per run.
    pub token: String,
    pub log: std::path::PathBuf,
    /// The CA of the server's certificate. Empty in a state file from before OpenBao ran TLS,
    /// which restarts it.
    #[serde(default)]
    pub ca_file: std::path::PathBuf,
    /// The `bao` CLI, for health checks.
    #[serde(default)]
    pub bao: std::path::PathBuf,
}

impl OpenBao {
    pub fn marker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub fn start(ctx: &Context, tools: &PythonTools) -> anyhow::Result<OpenBao> {
    let port = free_port()?;
    let token = format!("vigil-dev-{}", random_hex(16)?);
    let log = ctx.log("openbao");
    let certs = ctx.dir.join("openbao-tls");
    if certs.exists() {
        std::fs::remove_dir_all(&certs)?;
    }
    std::fs::create_dir_all(&certs)?;
    let mut command = Command::new(&tools.bao);
    command
        .args(["server", "-dev", "-dev-no-store-token", &format!("-dev-listen-address=127.0.0.1:{port}")])
        .arg("-dev-tls")
        .arg(format!("-dev-tls-cert-dir={}", certs.display()))
        // Through the environment, not argv: a token on the command line shows in `ps`.
        .env("BAO_DEV_ROOT_TOKEN_ID", &token)
        .env_remove("VAULT_TOKEN")
        .env_remove("BAO_TOKEN");
    let pid = spawn(command, &log, None)?;
    let bao = OpenBao {
        pid,
        port,
        address: format!("https://127.0.0.1:{port}"),
        token,
        log: log.clone(),
        ca_file: certs.join("vault-ca.pem"),
        bao: tools.bao.clone(),
    };
    await_ready("OpenBao", pid, &log, Duration::from_secs(60), || healthy(&bao))?;
    // The dev server mounts KV v2 only; backups wrap their data keys with Transit.
    let mounted = cli(&bao, &["secrets", "enable", "transit"]).output()?;
    if !mounted.status.success() {
        anyhow::bail!(
            "OpenBao did not mount Transit: {}; see {}",
            String::from_utf8_lossy(&mounted.stderr).trim(),
            log.display()
        );
    }
    eprintln!("started OpenBao on {}", bao.address);
    Ok(bao)
}

/// The `bao` CLI pointed at `bao`, the token and CA through its environment (never argv).
fn cli(bao: &OpenBao, args: &[&str]) -> Command {
    let mut command = Command::new(&bao.bao);
    command
        .args(args)
        .env("BAO_ADDR", &bao.address)
        .env("BAO_TOKEN", &bao.token)
        .env("BAO_CACERT", &bao.ca_file)
        .env_remove("VAULT_TOKEN")
        .env_remove("BAO_SKIP_VERIFY")
        .env_remove("VAULT_SKIP_VERIFY")
        .stdin(std::process::Stdio::null());
    command
}

pub fn healthy(bao: &OpenBao) -> bool {
    bao.ca_file.is_file()
        && is_ours(bao.pid, &bao.marker())
        && cli(bao, &["status"]).output().is_ok_and(|o| o.status.success())
}
