//! moto's server: the AWS APIs (Secrets Manager, S3, RDS, KMS) on a loopback port.

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Context;
use super::process::{await_ready, is_ours, spawn};
use super::readiness::{free_port, http_status};
use super::tools::PythonTools;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Moto {
    pub pid: u32,
    pub port: u16,
    pub endpoint_url: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub log: std::path::PathBuf,
}

impl Moto {
    /// What `/proc/PID/cmdline` of this server contains.
    pub fn marker(&self) -> String {
        format!("-p {}", self.port)
    }
}

pub fn start(ctx: &Context, tools: &PythonTools) -> anyhow::Result<Moto> {
    let port = free_port()?;
    let log = ctx.log("moto");
    let mut command = Command::new(&tools.moto_server);
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let pid = spawn(command, &log, None)?;
    let moto = Moto {
        pid,
        port,
        endpoint_url: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        // moto accepts any credentials; these are the values its documentation uses.
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
        log: log.clone(),
    };
    await_ready("moto", pid, &log, Duration::from_secs(60), || healthy(&moto))?;
    eprintln!("started moto on {}", moto.endpoint_url);
    Ok(moto)
}

pub fn healthy(moto: &Moto) -> bool {
    is_ours(moto.pid, &moto.marker()) && http_status(moto.port, "/moto-api/").is_some()
}
