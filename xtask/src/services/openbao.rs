//! OpenBao's dev server: the Vault API (KV v2, Transit) on a loopback port.

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::process::{await_ready, is_ours, spawn};
use super::readiness::{free_port, http_status, vault_post};
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
    let mut command = Command::new(&tools.bao);
    command
        .args(["server", "-dev", "-dev-no-store-token", &format!("-dev-listen-address=127.0.0.1:{port}")])
        // Through the environment, not argv: a token on the command line shows in `ps`.
        .env("BAO_DEV_ROOT_TOKEN_ID", &token)
        .env_remove("VAULT_TOKEN")
        .env_remove("BAO_TOKEN");
    let pid = spawn(command, &log, None)?;
    let bao = OpenBao { pid, port, address: format!("http://127.0.0.1:{port}"), token, log: log.clone() };
    await_ready("OpenBao", pid, &log, Duration::from_secs(60), || healthy(&bao))?;
    // The dev server mounts KV v2 only; backups wrap their data keys with Transit.
    match vault_post(port, "/v1/sys/mounts/transit", &bao.token, r#"{"type":"transit"}"#) {
        Some(204 | 200) => {}
        other => anyhow::bail!("OpenBao did not mount Transit (HTTP {other:?}); see {}", log.display()),
    }
    eprintln!("started OpenBao on {}", bao.address);
    Ok(bao)
}

pub fn healthy(bao: &OpenBao) -> bool {
    is_ours(bao.pid, &bao.marker()) && http_status(bao.port, "/v1/sys/health") == Some(200)
}
