//! The demo's API-key and JWT signing-key rotations, and the small issuer they rotate keys at.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{feed_line, seed_stores, show, step};
use crate::services::{self, State};

/// How long the demo waits where production waits hours: the overlap of an API key, and a JWT
/// key's JWKS cache time, token lifetime and clock skew.
const OVERLAP: &str = "3s";
const JWKS_CACHE: &str = "2s";
const MAX_TOKEN_LIFETIME: &str = "2s";
const CLOCK_SKEW: &str = "1s";

/// A process implementing `docs/api-key-issuer.md` on loopback, as the partner gateway would:
/// it issued the key the demo starts from, and logs what vigil asks of it.
pub struct DemoIssuer {
    child: Child,
    /// Its base URL.
    pub url: String,
    admin: String,
    first: serde_json::Value,
    log: std::path::PathBuf,
}

impl DemoIssuer {
    /// Starts the issuer with a fresh admin token (given on stdin) and one key already issued.
    pub fn start(root: &Path, demo: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(demo)?;
        let log = demo.join("issuer.log");
        std::fs::write(&log, "")?;
        let admin = services::random_hex(24)?;
        let mut child = Command::new(root.join("target/services/venv/bin/python"))
            .arg("-c")
            .arg(ISSUER_SCRIPT)
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the demo API-key issuer")?;
        feed_line(&mut child, &admin)?;
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().context("issuer stdout")?).read_line(&mut ready)?;
        let ready: serde_json::Value = serde_json::from_str(&ready).context("the demo issuer did not start")?;
        let url = format!("http://127.0.0.1:{}", ready["port"]);
        Ok(Self { child, url, admin, first: ready["first"].clone(), log })
    }

    /// The lines the issuer logged since the last call.
    fn news(&self, seen: &mut usize) -> anyhow::Result<Vec<String>> {
        let lines: Vec<String> = std::fs::read_to_string(&self.log)?.lines().map(str::to_owned).collect();
        let fresh = lines[(*seen).min(lines.len())..].to_vec();
        *seen = lines.len();
        Ok(fresh)
    }
}

impl Drop for DemoIssuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points the example API-key secrets at the demo issuer and cuts the waits to seconds.
pub fn shorten_waits(secrets: &mut dyn toml_edit::TableLike, issuer_url: &str) {
    for (_, secret) in secrets.iter_mut() {
        let Some(secret) = secret.as_table_like_mut() else { continue };
        match secret.get("kind").and_then(|k| k.as_str()) {
            Some("api_key") => {
                secret.insert("overlap", toml_edit::value(OVERLAP));
                if let Some(issuer) = secret.get_mut("issuer").and_then(|i| i.as_table_like_mut()) {
                    issuer.insert("url", toml_edit::value(issuer_url));
                }
            }
            Some("jwt_signing_key") => {
                secret.insert("jwks_cache", toml_edit::value(JWKS_CACHE));
                secret.insert("max_token_lifetime", toml_edit::value(MAX_TOKEN_LIFETIME));
                secret.insert("clock_skew", toml_edit::value(CLOCK_SKEW));
            }
            _ => {}
        }
    }
}

/// Steps 15 and 16: an API key and a JWT signing key rotated with their overlaps.
pub fn rotate(root: &Path, vigil: &Path, demo: &Path, state: &State, issuer: &DemoIssuer) -> anyhow::Result<()> {
    let (Some(moto), Some(bao)) = (&state.moto, &state.openbao) else { bail!("services are not all up") };
    let seed = serde_json::json!({
        "aws": { "endpoint": moto.endpoint_url, "region": moto.region },
        "vault": { "address": bao.address, "token": bao.token, "ca_file": bao.ca_file },
        "buckets": ["acme-auth-public"],
        "aws_secrets": { "prod/partner-gateway/api-key": issuer.first },
        "vault_secrets": {
            "vigil/issuers/partner-gateway": { "token": issuer.admin },
            "prod/auth/jwt-signing-key": {},
        },
    });
    seed_stores(root, state, &seed)?;
    let run = |args: &[&str]| -> anyhow::Result<()> {
        if !show(vigil, demo, state, args)?.status.success() {
            bail!("vigil {} failed", args.join(" "));
        }
        Ok(())
    };
    let wait = |what: &str, seconds: f32| {
        println!("   ... {seconds}s pass ({what})");
        std::thread::sleep(Duration::from_secs_f32(seconds));
    };
    let mut seen = 0;
    let issuer_log = |seen: &mut usize| -> anyhow::Result<()> {
        for line in issuer.news(seen)? {
            println!("     issuer: {line}");
        }
        Ok(())
    };

    step(&format!(
        "15. API-key rotation: a new key issued and tested, the old one valid through the overlap ({OVERLAP} here, 24h in schedules/platform.toml), then revoked"
    ));
    println!("   AWS Secrets Manager holds prod/partner-gateway/api-key, a key the issuer on {} issued", issuer.url);
    run(&["rotate", "partner-api-key"])?;
    issuer_log(&mut seen)?;
    wait("the overlap", 3.5);
    run(&["rotate", "--resume"])?;
    issuer_log(&mut seen)?;

    step(&format!(
        "16. JWT signing-key rotation: next, current, previous, retired (JWKS cache {JWKS_CACHE}, tokens {MAX_TOKEN_LIFETIME}, skew {CLOCK_SKEW} here; 1h, 1h, 5m in schedules/platform.toml)"
    ));
    println!("   Vault holds prod/auth/jwt-signing-key as {{}}: the first rotation makes the first key");
    run(&["rotate", "auth-jwt"])?;
    wait("the JWKS cache time: the first key is published before it signs", 2.2);
    run(&["rotate", "--resume"])?;
    wait("the token lifetime and skew", 3.2);
    run(&["rotate", "--resume"])?;
    println!("   The JWKS before the rotation: one key, served with Cache-Control from jwks_cache");
    run(&["jwks", "show", "auth-jwt"])?;
    run(&["rotate", "auth-jwt"])?;
    println!("   During it: the next key is published beside the current one, which still signs");
    run(&["jwks", "show", "auth-jwt"])?;
    wait("the JWKS cache time", 2.2);
    run(&["rotate", "--resume"])?;
    wait("the token lifetime and skew: the previous key verifies the tokens it signed until now", 3.2);
    run(&["rotate", "--resume"])?;
    println!("   After it: the new key alone; tokens from the old one have expired");
    run(&["jwks", "show", "auth-jwt"])?;
    run(&["status"])?;
    run(&["evidence", "verify"])?;
    Ok(())
}

/// The demo issuer: `docs/api-key-issuer.md` over Python's http.server. Reads its admin token
/// from stdin; prints its port and the first key (the state a real gateway starts in) on
/// stdout; logs issues, tests and revocations, by key id only.
const ISSUER_SCRIPT: &str = r#"
import json, secrets, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
admin = sys.stdin.readline().strip()
log = open(sys.argv[1], "a", buffering=1)
keys, seen = {}, {}
def issue():
    key_id = "key_" + secrets.token_hex(4)
    keys[key_id] = {"secret": secrets.token_urlsafe(24), "active": True}
    return key_id
first = issue()
class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def reply(self, code, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def bearer(self):
        value = self.headers.get("Authorization", "")
        return value[7:] if value.startswith("Bearer ") else None
    def do_POST(self):
        if self.path != "/keys":
            return self.reply(404)
        if self.bearer() != admin:
            return self.reply(401)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        token = body["idempotency_key"]
        code = 200 if token in seen else 201
        if token not in seen:
            seen[token] = issue()
            log.write(f"issued {seen[token]} for rotation {token}\n")
        self.reply(code, {"id": seen[token], "secret": keys[seen[token]]["secret"]})
    def do_GET(self):
        if self.path != "/whoami":
            return self.reply(404)
        for key_id, key in keys.items():
            if key["active"] and key["secret"] == self.bearer():
                log.write(f"accepted {key_id}\n")
                return self.reply(200, {"id": key_id})
        self.reply(401)
    def do_DELETE(self):
        key_id = self.path.rsplit("/", 1)[-1]
        if self.bearer() != admin:
            return self.reply(401)
        if not self.path.startswith("/keys/") or not keys.get(key_id, {}).get("active"):
            return self.reply(404)
        keys[key_id]["active"] = False
        log.write(f"revoked {key_id}\n")
        self.reply(204)
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"port": server.server_address[1], "first": {"id": first, "key": keys[first]["secret"]}}), flush=True)
server.serve_forever()
"#;
