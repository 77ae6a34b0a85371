//! The dump tools: `pg_dump` in custom format from a snapshot vigil exports (so row counts come
//! from the same snapshot), and `mariadb-dump --single-transaction`. Each starts with a
//! cleared environment (only `PATH`, the locale and its TLS settings), gets its password
//! through a 0600 file removed when the dump ends (`PGPASSFILE`, MariaDB's option file), never
//! its environment or command line, and writes the dump to a pipe the backup stream reads. The engine's own reader of a
//! dump ([`Reader`]) is here too: what proves a dump is one the engine can restore.

use std::collections::BTreeMap;
use std::io::{self, Read as _, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use sqlx::{Connection as _, Row as _};

use super::{Credential, Endpoint, Engine, EngineError};

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The database refused or failed a query.
    #[error(transparent)]
    Database(#[from] EngineError),
    /// The dump tool could not start.
    #[error("cannot run {tool}: {reason}; install the client tools of the server's version")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Why.
        reason: String,
    },
    /// The dump tool failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// The tool.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// The end of what it printed on standard error.
        stderr: String,
    },
    /// A user name or password that a client tool's password file cannot carry.
    #[error(
        "the {what} of {user} holds a line break or NUL, which {tool}'s password file cannot carry; rotate it to one without"
    )]
    Unsafe {
        /// `user name` or `password`.
        what: &'static str,
        /// The user (shown only when the user name itself is fine).
        user: String,
        /// The tool.
        tool: &'static str,
    },
    /// The password file could not be written.
    #[error("cannot write the dump tool's password file in {dir}: {reason}")]
    OptionFile {
        /// The folder.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

impl DumpError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database(err) if err.is_transient())
    }
}

/// What the manifest records of the database at the moment of the dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consistency {
    /// The server's version string.
    pub server_version: String,
    /// When the snapshot was taken, by the server's clock (RFC 3339).
    pub snapshot_time: String,
    /// The consistent point: PostgreSQL's WAL LSN and exported snapshot id, or MariaDB's GTID
    /// position.
    pub point: BTreeMap<String, String>,
    /// Rows per table (`schema.table`), for the drill to compare a restore against.
    pub row_counts: BTreeMap<String, u64>,
    /// Whether the counts come from the dump's own snapshot (PostgreSQL), or from a snapshot
    /// taken just before it (MariaDB, whose dump tool cannot import one).
    pub counts_from_dump_snapshot: bool,
}

/// A running dump: the tool's output, and the session holding the snapshot open.
pub struct Dump {
    /// The tool.
    pub tool: &'static str,
    child: Child,
    session: Session,
    consistency: Consistency,
    /// Removed when the dump is dropped: the file with the password.
    _password_file: PasswordFile,
}

enum Session {
    Postgres(sqlx::PgConnection),
    Mysql(sqlx::MySqlConnection),
}

/// Starts dumping `database` at `endpoint` as `admin`. Returns the dump and the pipe its output
/// arrives on. `scratch` is a private folder for the option file.
pub async fn start(
    engine: Engine,
    endpoint: &Endpoint,
    admin: &Credential,
    scratch: &Path,
) -> Result<(Dump, ChildStdout), DumpError> {
    match engine {
        Engine::Postgres => start_postgres(endpoint, admin, scratch).await,
        Engine::Mysql => start_mysql(endpoint, admin, scratch).await,
    }
}

fn db_error(what: &str, admin: &Credential) -> impl Fn(sqlx::Error) -> DumpError {
    let (what, user) = (what.to_owned(), admin.username.clone());
    move |err| DumpError::Database(EngineError::from_sqlx(&what, &user, err))
}

async fn start_postgres(
    endpoint: &Endpoint,
    admin: &Credential,
    scratch: &Path,
) -> Result<(Dump, ChildStdout), DumpError> {
    // Row security off, as pg_dump sets it: a table with policies makes the count fail, as it
    // makes the dump fail, rather than count fewer rows or evaluate a policy's functions.
    let options = crate::engines::postgres_options(endpoint, admin).options([("row_security", "off")]);
    let mut conn = sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(|err| EngineError::connecting(endpoint, "connect for the dump", &admin.username, err))?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut conn)
        .await
        .map_err(db_error("begin the snapshot", admin))?;
    let row = sqlx::query(
        "SELECT pg_export_snapshot(), to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
         current_setting('server_version'), \
         (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(db_error("export a snapshot", admin))?;
    let snapshot: String = row.try_get(0).map_err(db_error("export a snapshot", admin))?;
    let consistency = Consistency {
        server_version: row.try_get(2).map_err(db_error("read the server version", admin))?,
        snapshot_time: row.try_get(1).map_err(db_error("read the snapshot time", admin))?,
        point: BTreeMap::from([
            ("lsn".to_owned(), row.try_get::<Option<String>, _>(3).ok().flatten().unwrap_or_default()),
            ("snapshot".to_owned(), snapshot.clone()),
        ]),
        row_counts: BTreeMap::new(),
        counts_from_dump_snapshot: true,
    };
    let password_file = PasswordFile::pgpass(scratch, admin)?;
    let mut command = tool("pg_dump");
    command
        .args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--host={}", endpoint.host))
        .arg(format!("--port={}", endpoint.port))
        .arg(format!("--username={}", admin.username))
        // The database by variable: a name given as --dbname would be parsed as a connection
        // string if it looked like one.
        .env("PGDATABASE", endpoint.database.as_deref().unwrap_or("postgres"))
        .env("PGPASSFILE", &password_file.0)
        .env("PGAPPNAME", "vigil-backup")
        .envs(endpoint.tls.libpq_env());
    let (child, stdout) = spawn(command, "pg_dump")?;
    let dump =
        Dump { tool: "pg_dump", child, session: Session::Postgres(conn), consistency, _password_file: password_file };
    Ok((dump, stdout))
}

async fn start_mysql(
    endpoint: &Endpoint,
    admin: &Credential,
    scratch: &Path,
) -> Result<(Dump, ChildStdout), DumpError> {
    let options = crate::engines::mysql_options(endpoint, admin);
    let mut conn = sqlx::MySqlConnection::connect_with(&options)
        .await
        .map_err(|err| EngineError::connecting(endpoint, "connect for the dump", &admin.username, err))?;
    sqlx::raw_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .execute(&mut conn)
        .await
        .map_err(db_error("begin the snapshot", admin))?;
    let row = sqlx::query("SELECT VERSION(), DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%fZ')")
        .fetch_one(&mut conn)
        .await
        .map_err(db_error("read the server version", admin))?;
    let mut point = BTreeMap::new();
    // MariaDB's GTID position; MySQL has none by this name, and the dump does not need it.
    if let Ok(gtid) = sqlx::query_scalar::<_, String>("SELECT @@GLOBAL.gtid_current_pos").fetch_one(&mut conn).await {
        point.insert("gtid_current_pos".to_owned(), gtid);
    }
    let consistency = Consistency {
        server_version: row.try_get(0).map_err(db_error("read the server version", admin))?,
        snapshot_time: row.try_get(1).map_err(db_error("read the snapshot time", admin))?,
        point,
        row_counts: BTreeMap::new(),
        counts_from_dump_snapshot: false,
    };
    let password_file = PasswordFile::mariadb(scratch, admin)?;
    let mut command = tool("mariadb-dump");
    // The option file must be the first argument.
    command
        .arg(format!("--defaults-extra-file={}", password_file.0.display()))
        .args(["--protocol=TCP", "--single-transaction", "--quick", "--routines", "--triggers", "--hex-blob"])
        .arg("--no-tablespaces")
        .args(endpoint.tls.mariadb_args())
        .arg(format!("--host={}", endpoint.host))
        .arg(format!("--port={}", endpoint.port))
        .arg("--")
        .arg(endpoint.database.as_deref().unwrap_or_default());
    let (child, stdout) = spawn(command, "mariadb-dump")?;
    let dump =
        Dump { tool: "mariadb-dump", child, session: Session::Mysql(conn), consistency, _password_file: password_file };
    Ok((dump, stdout))
}

/// A client tool with a cleared environment: `PATH` and the locale only, so that no variable of
/// vigil's (a token, a cloud credential) reaches it; callers add what the tool needs.
fn tool(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    for kept in ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ"] {
        if let Some(value) = std::env::var_os(kept) {
            command.env(kept, value);
        }
    }
    command
}

fn spawn(mut command: Command, tool: &'static str) -> Result<(Child, ChildStdout), DumpError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| DumpError::Tool { tool, reason: err.to_string() })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    Ok((child, stdout))
}

impl Dump {
    /// Counts every table's rows in the snapshot, while the tool dumps.
    pub async fn count_rows(&mut self, admin: &Credential) -> Result<(), DumpError> {
        let failed = db_error("count rows", admin);
        let counts = match &mut self.session {
            Session::Postgres(conn) => crate::engines::postgres::count_rows(conn).await,
            Session::Mysql(conn) => crate::engines::mysql::count_rows(conn).await,
        }
        .map_err(&failed)?;
        self.consistency.row_counts = counts;
        Ok(())
    }

    /// Waits for the tool to exit, ends the snapshot, and returns what was recorded; fails if
    /// the tool did.
    pub async fn finish(mut self) -> Result<Consistency, DumpError> {
        let tool = self.tool;
        let mut child = self.child;
        let waited = tokio::task::spawn_blocking(move || {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            child.wait().map(|status| (status, stderr))
        })
        .await
        .map_err(|err| DumpError::Tool { tool, reason: err.to_string() })?
        .map_err(|err| DumpError::Tool { tool, reason: err.to_string() })?;
        let _ = match &mut self.session {
            Session::Postgres(conn) => sqlx::raw_sql("COMMIT").execute(conn).await.map(drop),
            Session::Mysql(conn) => sqlx::raw_sql("COMMIT").execute(conn).await.map(drop),
        };
        let (status, stderr) = waited;
        if !status.success() {
            return Err(DumpError::Failed { tool, status: status.to_string(), stderr: last_lines(&stderr) });
        }
        Ok(self.consistency)
    }

    /// The tool's process id, for logs and for checks of what it was given.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the tool: the stream it fed has failed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pg_restore`'s flags for a drill. `--no-owner`: objects are owned by the restoring role, so
/// no superuser is needed to restore. `--no-acl` unless `grants`: the dump's grants name roles
/// of the source, and the same names on the scratch server may be other people's; a drill
/// whose `check_credentials` probes read tables asks for them (`restore_grants`).
fn pg_restore_args(grants: bool) -> Vec<&'static str> {
    let mut args = vec!["--format=custom", "--no-password", "--exit-on-error", "--no-owner"];
    if !grants {
        args.push("--no-acl");
    }
    args
}

/// A running restore: the engine's own tool reading a dump on its standard input into the
/// database its endpoint names (`pg_restore` for a custom archive, `mariadb` for SQL), with the
/// same cleared environment and 0600 password file as a dump.
pub struct Restore {
    tool: &'static str,
    child: Child,
    _password_file: PasswordFile,
}

impl Restore {
    /// Starts restoring into `endpoint.database` as `credential`; returns where to write the
    /// dump. `scratch` is a private folder for the password file; `grants` restores the dump's
    /// grants (PostgreSQL; see [`pg_restore_args`]).
    pub fn start(
        engine: Engine,
        endpoint: &Endpoint,
        credential: &Credential,
        scratch: &Path,
        grants: bool,
    ) -> Result<(Box<dyn Write + Send>, Self), DumpError> {
        let database = endpoint.database.as_deref().unwrap_or_default();
        let (mut command, tool, password_file) = match engine {
            Engine::Postgres => {
                let password_file = PasswordFile::pgpass(scratch, credential)?;
                let mut command = tool("pg_restore");
                command
                    .args(pg_restore_args(grants))
                    .arg(format!("--host={}", endpoint.host))
                    .arg(format!("--port={}", endpoint.port))
                    .arg(format!("--username={}", credential.username))
                    .arg(format!("--dbname={database}"))
                    .env("PGPASSFILE", &password_file.0)
                    .env("PGAPPNAME", "vigil-drill")
                    .envs(endpoint.tls.libpq_env());
                (command, "pg_restore", password_file)
            }
            Engine::Mysql => {
                let password_file = PasswordFile::mariadb(scratch, credential)?;
                let mut command = tool("mariadb");
                // The option file must be the first argument.
                command
                    .arg(format!("--defaults-extra-file={}", password_file.0.display()))
                    .args(["--protocol=TCP", "--batch"])
                    .args(endpoint.tls.mariadb_args())
                    .arg(format!("--host={}", endpoint.host))
                    .arg(format!("--port={}", endpoint.port))
                    .arg(format!("--database={database}"));
                (command, "mariadb", password_file)
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| DumpError::Tool { tool, reason: err.to_string() })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        Ok((Box::new(stdin), Self { tool, child, _password_file: password_file }))
    }

    /// Starts `pg_restore -j JOBS` of the PostgreSQL custom archive `file` into
    /// `endpoint.database` as `credential`: a parallel restore seeks in its archive, so it
    /// reads a file, not a pipe. `grants` as for [`Self::start`].
    pub fn start_parallel(
        endpoint: &Endpoint,
        credential: &Credential,
        scratch: &Path,
        file: &Path,
        jobs: u32,
        grants: bool,
    ) -> Result<Self, DumpError> {
        const TOOL: &str = "pg_restore";
        let password_file = PasswordFile::pgpass(scratch, credential)?;
        let child = tool(TOOL)
            .args(pg_restore_args(grants))
            .arg(format!("--jobs={jobs}"))
            .arg(format!("--host={}", endpoint.host))
            .arg(format!("--port={}", endpoint.port))
            .arg(format!("--username={}", credential.username))
            .arg(format!("--dbname={}", endpoint.database.as_deref().unwrap_or_default()))
            .arg(file)
            .env("PGPASSFILE", &password_file.0)
            .env("PGAPPNAME", "vigil-drill")
            .envs(endpoint.tls.libpq_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| DumpError::Tool { tool: TOOL, reason: err.to_string() })?;
        Ok(Self { tool: TOOL, child, _password_file: password_file })
    }

    /// Waits for the tool, whose input has been closed; fails if it did.
    pub fn finish(mut self) -> Result<(), DumpError> {
        let tool = self.tool;
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        let status = self.child.wait().map_err(|err| DumpError::Tool { tool, reason: err.to_string() })?;
        if !status.success() {
            return Err(DumpError::Failed { tool, status: status.to_string(), stderr: last_lines(&stderr) });
        }
        Ok(())
    }
}

/// The most cluster globals a backup carries: far more than any real cluster's roles.
const MAX_GLOBALS: usize = 64 << 20;

/// The cluster's globals that a database needs to be restored onto a new server (roles, their
/// memberships and settings, tablespaces) as SQL: `pg_dumpall --globals-only
/// --no-role-passwords`, which reads `pg_roles` rather than `pg_authid` and so needs no
/// superuser, and carries no password hash. Blocking: call it on a blocking thread.
pub fn pg_globals(endpoint: &Endpoint, credential: &Credential, scratch: &Path) -> Result<Vec<u8>, DumpError> {
    const TOOL: &str = "pg_dumpall";
    let password_file = PasswordFile::pgpass(scratch, credential)?;
    let output = tool(TOOL)
        .args(["--globals-only", "--no-role-passwords", "--no-password"])
        .arg(format!("--host={}", endpoint.host))
        .arg(format!("--port={}", endpoint.port))
        .arg(format!("--username={}", credential.username))
        .env("PGPASSFILE", &password_file.0)
        .env("PGAPPNAME", "vigil-backup")
        .envs(endpoint.tls.libpq_env())
        .stdin(Stdio::null())
        .output()
        .map_err(|err| DumpError::Tool { tool: TOOL, reason: err.to_string() })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(DumpError::Failed { tool: TOOL, status: output.status.to_string(), stderr: last_lines(&stderr) });
    }
    if output.stdout.len() > MAX_GLOBALS {
        return Err(DumpError::Failed {
            tool: TOOL,
            status: "too large".into(),
            stderr: format!("the globals are {} bytes; at most {MAX_GLOBALS} are kept", output.stdout.len()),
        });
    }
    Ok(output.stdout)
}

/// What `pg_amcheck` found in a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// No corruption; what was checked.
    Clean(String),
    /// Corruption, in pg_amcheck's words (the first lines).
    Corrupt(String),
}

/// Runs `pg_amcheck --heapallindexed` on `endpoint.database` as `credential`: every table's
/// heap and every B-tree index, and that each index holds every heap tuple. The database must
/// have the `amcheck` extension. Blocking: call it on a blocking thread.
pub fn pg_amcheck(endpoint: &Endpoint, credential: &Credential, scratch: &Path) -> Result<Integrity, DumpError> {
    const TOOL: &str = "pg_amcheck";
    let program = find_tool(TOOL).ok_or_else(|| DumpError::Tool {
        tool: TOOL,
        reason: "not found on PATH or under /usr/lib/postgresql/*/bin".into(),
    })?;
    let password_file = PasswordFile::pgpass(scratch, credential)?;
    let database = endpoint.database.as_deref().unwrap_or_default();
    let output = tool(&program.to_string_lossy())
        .args(["--no-password", "--heapallindexed", "--progress"])
        .arg(format!("--host={}", endpoint.host))
        .arg(format!("--port={}", endpoint.port))
        .arg(format!("--username={}", credential.username))
        .arg(database)
        .env("PGPASSFILE", &password_file.0)
        .env("PGAPPNAME", "vigil-drill")
        .envs(endpoint.tls.libpq_env())
        .stdin(Stdio::null())
        .output()
        .map_err(|err| DumpError::Tool { tool: TOOL, reason: err.to_string() })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Exit 2 is pg_amcheck's "corruption found"; its findings are on standard output.
    match output.status.code() {
        Some(0) => {
            // --progress redraws its line with carriage returns; the last drawing is the total.
            let checked =
                stderr.split(['\n', '\r']).rev().find(|l| l.contains("relations")).unwrap_or("every relation").trim();
            Ok(Integrity::Clean(format!("pg_amcheck --heapallindexed: no corruption ({checked})")))
        }
        Some(2) => {
            let found: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).take(4).collect();
            Ok(Integrity::Corrupt(found.join(" | ")))
        }
        _ => Err(DumpError::Failed { tool: TOOL, status: output.status.to_string(), stderr: last_lines(&stderr) }),
    }
}

/// A PostgreSQL client tool on `PATH`, else the newest of Debian's
/// `/usr/lib/postgresql/VERSION/bin` (which puts only some tools on `PATH`).
fn find_tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let candidate = entry.path().join("bin").join(name);
                candidate.is_file().then_some((version, candidate))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, path)| path)
    })
}

/// The last few lines of a tool's error output, for an error message.
pub(crate) fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() { "no error output".to_owned() } else { tail }
}

/// The engine's own reader of a dump, fed as the dump streams: `pg_restore --list` for a
/// PostgreSQL custom archive, the closing line for a MariaDB dump.
pub struct Reader(ReaderKind);

enum ReaderKind {
    PgRestore(std::process::Child),
    MariaDb(Arc<Mutex<Tail>>),
}

/// Where the dump goes while it is checked.
enum Sink {
    Pipe(std::process::ChildStdin),
    Tail(Arc<Mutex<Tail>>),
}

impl Sink {
    fn writer(self) -> Box<dyn Write + Send> {
        match self {
            Self::Pipe(stdin) => Box::new(UntilClosed::new(stdin)),
            Self::Tail(tail) => Box::new(SharedTail(tail)),
        }
    }
}

struct SharedTail(Arc<Mutex<Tail>>);

impl Write for SharedTail {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Reader {
    /// Starts the reader for `engine`'s dumps; returns where to write the dump and the reader.
    pub fn start(engine: Engine) -> Result<(Box<dyn Write + Send>, Self), String> {
        match engine {
            Engine::Postgres => {
                let mut child = tool("pg_restore")
                    .args(["--list", "--format=custom"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|err| format!("pg_restore check failed: cannot run pg_restore: {err}"))?;
                let stdin = child.stdin.take().expect("piped");
                Ok((Sink::Pipe(stdin).writer(), Self(ReaderKind::PgRestore(child))))
            }
            Engine::Mysql => {
                let tail = Arc::new(Mutex::new(Tail::default()));
                Ok((Sink::Tail(tail.clone()).writer(), Self(ReaderKind::MariaDb(tail))))
            }
        }
    }

    /// Stops the reader: the stream failed before it was all fed.
    pub fn abandon(self) {
        if let ReaderKind::PgRestore(mut child) = self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the reader made of the dump, once it has all been fed.
    pub fn finish(self) -> Result<String, String> {
        match self.0 {
            ReaderKind::PgRestore(child) => {
                let output = child.wait_with_output().map_err(|err| format!("pg_restore check failed: {err}"))?;
                let listing = String::from_utf8_lossy(&output.stdout);
                let entries = listing.lines().filter(|l| !l.starts_with(';') && !l.trim().is_empty()).count();
                // An empty database dumps to an archive of no entries: its header (the `;`
                // lines) is what shows pg_restore read the archive.
                let header = listing.lines().any(|l| l.starts_with(';'));
                if !output.status.success() || !header {
                    return Err(format!(
                        "pg_restore check failed: pg_restore --list could not read the dump ({}): {}",
                        output.status,
                        last_lines(&String::from_utf8_lossy(&output.stderr))
                    ));
                }
                Ok(format!("pg_restore --list read {entries} entries"))
            }
            ReaderKind::MariaDb(tail) => {
                if tail.lock().unwrap_or_else(|p| p.into_inner()).is_complete_mariadb_dump() {
                    Ok("the dump ends with mariadb-dump's completion line".to_owned())
                } else {
                    Err("dump completeness check failed: the dump does not end with `-- Dump completed`".to_owned())
                }
            }
        }
    }
}

/// A sink that passes bytes on until its reader stops taking them, then discards the rest:
/// `pg_restore --list` reads only the table of contents, but every segment must still be
/// authenticated and hashed.
pub(crate) struct UntilClosed<W> {
    inner: Option<W>,
}

impl<W: Write> UntilClosed<W> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: W) -> Self {
        Self { inner: Some(inner) }
    }
}

impl<W: Write> Write for UntilClosed<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(inner) = &mut self.inner
            && let Err(err) = inner.write_all(data)
        {
            if err.kind() != io::ErrorKind::BrokenPipe {
                return Err(err);
            }
            self.inner = None;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Keeps the last bytes written: how a MariaDB dump is checked complete (it ends with
/// `-- Dump completed`).
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    const KEEP: usize = 256;

    /// Whether the dump ends the way `mariadb-dump` ends a complete dump.
    fn is_complete_mariadb_dump(&self) -> bool {
        String::from_utf8_lossy(&self.0)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.starts_with("-- Dump completed"))
    }
}

impl Write for Tail {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(&data[data.len().saturating_sub(Self::KEEP)..]);
        let excess = self.0.len().saturating_sub(Self::KEEP);
        self.0.drain(..excess);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A client tool's password file (libpq's `.pgpass` format, or a MariaDB option file): mode
/// 0600 in vigil's private scratch folder, removed when dropped.
pub struct PasswordFile(PathBuf);

impl PasswordFile {
    /// Where it is: what a tool's `PGPASSFILE` names.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `*:*:*:user:password`, with `\` and `:` escaped as libpq reads them.
    pub fn pgpass(dir: &Path, admin: &Credential) -> Result<Self, DumpError> {
        let (user, password) = line_safe(admin, "pg_dump")?;
        let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
        let text = zeroize::Zeroizing::new(format!("*:*:*:{}:{}\n", escape(user), escape(password)));
        Self::write(dir, "pgpass", &text)
    }

    /// `[client]` with the user and password quoted, backslash-escaped.
    fn mariadb(dir: &Path, admin: &Credential) -> Result<Self, DumpError> {
        let (user, password) = line_safe(admin, "mariadb-dump")?;
        let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let text = zeroize::Zeroizing::new(format!(
            "[client]\nuser=\"{}\"\npassword=\"{}\"\n",
            escape(user),
            escape(password)
        ));
        Self::write(dir, "cnf", &text)
    }

    fn write(dir: &Path, extension: &str, text: &str) -> Result<Self, DumpError> {
        use rand_core::RngCore as _;
        let failed = |err: std::io::Error| DumpError::OptionFile { dir: dir.to_owned(), reason: err.to_string() };
        let path = dir.join(format!("dump-{:016x}.{extension}", rand_core::OsRng.next_u64()));
        crate::secret::write_private(&path, text.as_bytes()).map_err(failed)?;
        Ok(Self(path))
    }
}

/// The user name and password, when neither holds what would end a line of a password file.
fn line_safe<'a>(admin: &'a Credential, tool: &'static str) -> Result<(&'a str, &'a str), DumpError> {
    let unsafe_text = |s: &str| s.contains(['\r', '\n', '\0']);
    if unsafe_text(&admin.username) {
        return Err(DumpError::Unsafe { what: "user name", user: "the admin".into(), tool });
    }
    let password = admin.password.expose_secret();
    if unsafe_text(password) {
        return Err(DumpError::Unsafe { what: "password", user: admin.username.clone(), tool });
    }
    Ok((&admin.username, password))
}

impl Drop for PasswordFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_recognises_a_complete_mariadb_dump() {
        let mut tail = Tail::default();
        tail.write_all(&vec![b'x'; 10_000]).unwrap();
        tail.write_all(b"\n-- Dump completed on 2026-11-24 10:00:00\n").unwrap();
        assert!(tail.is_complete_mariadb_dump());
        tail.write_all(b"INSERT INTO t VALUES (1);\n").unwrap();
        assert!(!tail.is_complete_mariadb_dump());
    }
}
