//! `cargo xtask services up|down|env|status`: the real services tests and the demo use.
//!
//! moto (AWS APIs) and OpenBao (Vault API) come from PyPI into a virtualenv under
//! `target/services/venv`; PostgreSQL 15 and MariaDB are private instances on free loopback
//! ports with generated passwords and password authentication for every connection. The
//! machine's own servers on the standard ports (often trust auth) are never touched.
//!
//! Everything `up` started is recorded, PID and all, in `target/services/services.json`
//! (mode 0600), which is also what tests and the demo read; `down` stops exactly those PIDs.

mod mariadb;
mod moto;
mod openbao;
pub mod pgbackrest;
mod postgres;
pub mod process;
mod readiness;
mod tls;
mod tools;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use process::RunAs;

/// What `up` started, as written to `services.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub moto: Option<moto::Moto>,
    pub openbao: Option<openbao::OpenBao>,
    pub postgres: Option<Database>,
    pub mariadb: Option<Database>,
    /// The repository the private PostgreSQL archives its WAL to; recreated with it.
    #[serde(default)]
    pub pgbackrest: Option<pgbackrest::PgBackRest>,
    /// Tools, not processes: the OSCAL validator and the browser the report tests use.
    #[serde(default)]
    pub report_tools: Option<tools::ReportTools>,
}

/// A private database server and its superuser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Database {
    pub pid: u32,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The database to connect to by default.
    pub database: String,
    /// A connection URL with the password in it, for tests.
    pub url: String,
    /// The server's unix socket (MariaDB) or socket folder (PostgreSQL).
    pub socket: PathBuf,
    /// This server's private folder: data, socket, pid file. Removed by `down`.
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The CA that signed the server's certificate: clients connect with `verify-full` against
    /// it. Empty in a state file from before the services ran TLS, which restarts them.
    #[serde(default)]
    pub ca_file: PathBuf,
}

/// Paths and identity shared by every service.
pub struct Context {
    /// `target/services`: state file, logs, virtualenv.
    pub dir: PathBuf,
    /// A 0700 folder under the system temp dir that the database user can enter even when the
    /// checkout sits in a home folder it cannot.
    pub private_root: PathBuf,
    /// The unprivileged account database servers run as when xtask runs as root.
    pub run_as: Option<RunAs>,
}

impl Context {
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("target/services");
        std::fs::create_dir_all(dir.join("logs"))?;
        let private_root =
            std::env::temp_dir().join(format!("vigil-services-{:016x}", fnv1a(root.as_os_str().as_encoded_bytes())));
        Ok(Self { dir, private_root, run_as: None })
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("services.json")
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// The private folder for one database server, created fresh and owned by its user.
    fn fresh_private_dir(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        let run_as = self.database_user()?;
        std::fs::create_dir_all(&self.private_root)?;
        std::fs::set_permissions(&self.private_root, std::fs::Permissions::from_mode(0o711))?;
        let dir = self.private_root.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("remove stale {}", dir.display()))?;
        }
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some(RunAs { uid, gid }) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(dir)
    }

    /// The account database servers run as: initdb and mariadbd refuse root.
    fn database_user(&mut self) -> anyhow::Result<Option<RunAs>> {
        if self.run_as.is_none() && is_root() {
            self.run_as = Some(tools::service_account()?);
        }
        Ok(self.run_as)
    }

    pub fn load(&self) -> anyhow::Result<State> {
        match std::fs::read_to_string(self.state_file()) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("parse {}", self.state_file().display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(err) => Err(err).with_context(|| format!("read {}", self.state_file().display())),
        }
    }

    /// Writes the state file with mode 0600: it holds the generated passwords.
    pub fn save(&self, state: &State) -> anyhow::Result<()> {
        use std::io::Write;
        let path = self.state_file();
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A stable 64-bit hash of the checkout path, so that two checkouts get two private roots.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// A random lowercase hex string of `bytes` bytes from the kernel's CSPRNG.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    #[command(subcommand)]
    command: ServicesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ServicesCommand {
    /// Start every service, reusing healthy ones; installs what is missing.
    Up,
    /// Stop exactly the processes `up` started, and remove their data.
    Down,
    /// Print connection settings as shell exports (`eval "$(cargo xtask services env)"`) or JSON.
    Env {
        /// Print the services JSON file instead.
        #[arg(long)]
        json: bool,
    },
    /// Show whether each service is running and healthy.
    Status,
}

impl ServicesArgs {
    pub fn run(self, root: &Path) -> anyhow::Result<ExitCode> {
        match self.command {
            ServicesCommand::Up => {
                let state = up(root)?;
                print_summary(&state);
                eprintln!(
                    "services are up; `cargo xtask services env` prints their settings, `cargo xtask services down` stops them"
                );
            }
            ServicesCommand::Down => down(root)?,
            ServicesCommand::Env { json } => {
                let ctx = Context::new(root)?;
                let state = ctx.load()?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&state)?);
                } else {
                    print!("{}", exports(&ctx, &state));
                }
            }
            ServicesCommand::Status => {
                let ctx = Context::new(root)?;
                let state = ctx.load()?;
                let healthy = print_status(&state);
                return Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Starts every service that is not already running and healthy, and records them all.
/// What the backup benchmark's shell pipeline runs beside vigil: zstd and openssl from Debian,
/// and the AWS CLI, whose path this returns.
pub fn backup_bench_tools(ctx: &Context) -> anyhow::Result<PathBuf> {
    tools::ensure_debian_packages(&[("/usr/bin/zstd", "zstd"), ("/usr/bin/openssl", "openssl")])?;
    tools::aws_cli(ctx)
}

pub fn up(root: &Path) -> anyhow::Result<State> {
    let mut ctx = Context::new(root)?;
    let mut state = ctx.load()?;
    let tools = tools::python_tools(&ctx)?;
    // Before the health checks: a database still serving a certificate other than the current
    // one is restarted.
    let certs = tls::certificates(&ctx)?;
    // Checked once: each check runs a client or an HTTP request.
    let healthy = [
        ("moto", state.moto.as_ref().is_some_and(moto::healthy)),
        ("OpenBao", state.openbao.as_ref().is_some_and(openbao::healthy)),
        // A server from before the archive was set up has none: restarted with one.
        ("PostgreSQL", state.pgbackrest.is_some() && state.postgres.as_ref().is_some_and(postgres::healthy)),
        ("MariaDB", state.mariadb.as_ref().is_some_and(mariadb::healthy)),
    ];
    for (name, _) in healthy.iter().filter(|(_, healthy)| *healthy) {
        eprintln!("reusing {name}, already running and healthy");
    }
    let result = (|| -> anyhow::Result<()> {
        if !healthy[0].1 {
            stop_recorded(state.moto.take().map(|m| (m.pid, m.marker(), libc::SIGTERM)));
            state.moto = Some(moto::start(&ctx, &tools)?);
            ctx.save(&state)?;
        }
        if !healthy[1].1 {
            stop_recorded(state.openbao.take().map(|b| (b.pid, b.marker(), libc::SIGTERM)));
            state.openbao = Some(openbao::start(&ctx, &tools)?);
            ctx.save(&state)?;
        }
        if !healthy[2].1 {
            stop_recorded(state.postgres.take().map(|d| (d.pid, postgres::marker(&d), libc::SIGINT)));
            state.pgbackrest = None;
            let (db, repo) = postgres::start(&mut ctx, &certs)?;
            state.postgres = Some(db);
            state.pgbackrest = Some(repo);
            ctx.save(&state)?;
        }
        if !healthy[3].1 {
            stop_recorded(state.mariadb.take().map(|d| (d.pid, mariadb::marker(&d), libc::SIGTERM)));
            state.mariadb = Some(mariadb::start(&mut ctx, &certs)?);
            ctx.save(&state)?;
        }
        state.report_tools = Some(tools::report_tools(&ctx)?);
        ctx.save(&state)?;
        Ok(())
    })();
    ctx.save(&state)?;
    result.map(|()| state)
}

fn stop_recorded(recorded: Option<(u32, String, i32)>) {
    if let Some((pid, marker, signal)) = recorded
        && let Err(err) = process::stop(pid, &marker, signal, std::time::Duration::from_secs(20))
    {
        eprintln!("xtask: warning: {err:#}");
    }
}

/// Stops what `up` recorded, removes the private data folders and the state file.
pub fn down(root: &Path) -> anyhow::Result<()> {
    let ctx = Context::new(root)?;
    let state = ctx.load()?;
    let mut stopped = Vec::new();
    let mut failures = Vec::new();
    let mut stop = |name: &str, pid: u32, marker: String, signal: i32| match process::stop(
        pid,
        &marker,
        signal,
        std::time::Duration::from_secs(20),
    ) {
        Ok(()) => stopped.push(format!("{name} (pid {pid})")),
        Err(err) => failures.push(format!("{name}: {err:#}")),
    };
    if let Some(m) = &state.moto {
        stop("moto", m.pid, m.marker(), libc::SIGTERM);
    }
    if let Some(b) = &state.openbao {
        stop("openbao", b.pid, b.marker(), libc::SIGTERM);
    }
    if let Some(d) = &state.postgres {
        stop("postgres", d.pid, postgres::marker(d), libc::SIGINT);
    }
    if let Some(d) = &state.mariadb {
        stop("mariadb", d.pid, mariadb::marker(d), libc::SIGTERM);
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "some services did not stop; state kept in {}:\n{}",
            ctx.state_file().display(),
            failures.join("\n")
        );
    }
    if ctx.private_root.exists() {
        std::fs::remove_dir_all(&ctx.private_root).with_context(|| format!("remove {}", ctx.private_root.display()))?;
    }
    match std::fs::remove_file(ctx.state_file()) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
        _ => {}
    }
    if stopped.is_empty() {
        eprintln!("no services were running");
    } else {
        eprintln!("stopped {}", stopped.join(", "));
    }
    Ok(())
}

fn print_summary(state: &State) {
    if let Some(m) = &state.moto {
        eprintln!("  moto      {}  (pid {})", m.endpoint_url, m.pid);
    }
    if let Some(b) = &state.openbao {
        eprintln!("  openbao   {}  (pid {})", b.address, b.pid);
    }
    if let Some(d) = &state.postgres {
        eprintln!("  postgres  127.0.0.1:{} user {}  (pid {})", d.port, d.user, d.pid);
    }
    if let Some(r) = &state.pgbackrest {
        eprintln!("  pgbackrest stanza {}  {}", r.stanza, r.config.display());
    }
    if let Some(t) = &state.report_tools {
        eprintln!("  report    {}  {}", t.trestle.display(), t.chromium.display());
    }
    if let Some(d) = &state.mariadb {
        eprintln!("  mariadb   127.0.0.1:{} user {}  (pid {})", d.port, d.user, d.pid);
    }
}

/// Prints one line per service; true when all four are up and healthy.
fn print_status(state: &State) -> bool {
    let line = |name: &str, recorded: Option<(u32, String)>, healthy: bool| {
        match recorded {
            None => println!("{name:<9} not started"),
            Some((pid, endpoint)) => {
                println!("{name:<9} {}  pid {pid}  {endpoint}", if healthy { "healthy" } else { "DOWN   " })
            }
        }
        healthy
    };
    let results = [
        line(
            "moto",
            state.moto.as_ref().map(|m| (m.pid, m.endpoint_url.clone())),
            state.moto.as_ref().is_some_and(moto::healthy),
        ),
        line(
            "openbao",
            state.openbao.as_ref().map(|b| (b.pid, b.address.clone())),
            state.openbao.as_ref().is_some_and(openbao::healthy),
        ),
        line(
            "postgres",
            state.postgres.as_ref().map(|d| (d.pid, format!("127.0.0.1:{}", d.port))),
            state.postgres.as_ref().is_some_and(postgres::healthy),
        ),
        line(
            "mariadb",
            state.mariadb.as_ref().map(|d| (d.pid, format!("127.0.0.1:{}", d.port))),
            state.mariadb.as_ref().is_some_and(mariadb::healthy),
        ),
    ];
    results.iter().all(|healthy| *healthy)
}

/// Shell exports for the running services: the variables the AWS SDK, Vault clients and tests read.
pub fn exports(ctx: &Context, state: &State) -> String {
    let mut vars: Vec<(&str, String)> = vec![("VIGIL_SERVICES_FILE", ctx.state_file().display().to_string())];
    if let Some(m) = &state.moto {
        vars.extend([
            ("AWS_ENDPOINT_URL", m.endpoint_url.clone()),
            ("AWS_REGION", m.region.clone()),
            ("AWS_ACCESS_KEY_ID", m.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", m.secret_access_key.clone()),
        ]);
    }
    if let Some(b) = &state.openbao {
        vars.extend([
            ("VAULT_ADDR", b.address.clone()),
            ("VAULT_TOKEN", b.token.clone()),
            ("VAULT_CACERT", b.ca_file.display().to_string()),
            ("BAO_ADDR", b.address.clone()),
            ("BAO_TOKEN", b.token.clone()),
            ("BAO_CACERT", b.ca_file.display().to_string()),
        ]);
    }
    if let Some(d) = &state.postgres {
        // What psql and every libpq tool read.
        vars.extend([
            ("PGHOST", d.host.clone()),
            ("PGPORT", d.port.to_string()),
            ("PGUSER", d.user.clone()),
            ("PGPASSWORD", d.password.clone()),
            ("PGDATABASE", d.database.clone()),
            ("PGSSLMODE", "verify-full".into()),
            ("PGSSLROOTCERT", d.ca_file.display().to_string()),
            ("VIGIL_PG_URL", d.url.clone()),
        ]);
    }
    if let Some(r) = &state.pgbackrest {
        // The stanza the private PostgreSQL archives to; the passphrase is for tests and the
        // demo, which hand it to vigil by file.
        vars.extend([
            ("VIGIL_PGBACKREST_CONFIG", r.config.display().to_string()),
            ("VIGIL_PGBACKREST_STANZA", r.stanza.clone()),
        ]);
    }
    if let Some(d) = &state.mariadb {
        // The mariadb client reads host, port and password from these; TLS options have no
        // variables, so `mariadb $MARIADB_TLS` passes them.
        vars.extend([
            ("MYSQL_HOST", d.host.clone()),
            ("MYSQL_TCP_PORT", d.port.to_string()),
            ("MYSQL_PWD", d.password.clone()),
            ("MARIADB_USER", d.user.clone()),
            ("MARIADB_TLS", format!("--ssl --ssl-ca={} --ssl-verify-server-cert", d.ca_file.display())),
            ("VIGIL_MARIADB_URL", d.url.clone()),
        ]);
    }
    vars.iter().map(|(name, value)| format!("export {name}='{value}'\n")).collect()
}
