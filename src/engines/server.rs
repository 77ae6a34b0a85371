//! A temporary PostgreSQL server over a restored data directory, for drills of physical backups.
//!
//! Its folder (`root`) is vigil's own, 0700: `data/` (the restored cluster), `s/` (the server's
//! socket), `hba.conf` and `server.log`. The server listens on no TCP address at all
//! (`listen_addresses = ''`): it is reached through the socket in that private folder, which
//! only vigil's account (and root) can open. That is also why most roles log in without a
//! password there, as `pg_upgrade` does with the servers it starts; the roles whose passwords
//! a drill checks are asked for them.
//!
//! Stopping is by the data directory (the PID in its `postmaster.pid`), not by a process
//! handle, so a drill resumed after a crash stops the server the crashed process started.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};

use super::Endpoint;
use crate::tls::{Tls, TlsMode};

/// Why the temporary server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A PostgreSQL binary could not be run.
    #[error("cannot run {program}: {reason}; set postgres_bin to the folder of the PostgreSQL {version} binaries")]
    Spawn {
        /// The binary.
        program: String,
        /// Why.
        reason: String,
        /// The major version wanted.
        version: String,
    },
    /// Its folder could not be prepared or removed.
    #[error("cannot prepare {path}: {reason}")]
    Folder {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server stopped during recovery, or did not finish it in time.
    #[error("{what}: {log}")]
    Recovery {
        /// What happened.
        what: String,
        /// The end of its log.
        log: String,
    },
    /// The server would not stop.
    #[error("cannot stop the server on {data}: {reason}")]
    Stop {
        /// Its data directory.
        data: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The port in the socket's name; no TCP port is opened.
const PORT: u16 = 5432;
/// The longest Unix socket path the kernel takes (`sun_path`, less the terminating NUL).
const SOCKET_PATH_MAX: usize = 107;

/// A temporary server in `root`.
#[derive(Debug, Clone)]
pub struct TempServer {
    bin_dir: PathBuf,
    root: PathBuf,
    version: String,
}

impl TempServer {
    /// A server of PostgreSQL `version` whose binaries are in `bin_dir`, in folder `root`.
    pub fn new(bin_dir: PathBuf, root: PathBuf, version: String) -> Self {
        Self { bin_dir, root, version }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.join("s")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// How to reach `database` on it: the socket, no TLS (nothing leaves the machine).
    pub fn endpoint(&self, database: Option<String>) -> Endpoint {
        Endpoint {
            host: self.socket_dir().display().to_string(),
            port: PORT,
            database,
            tls: Tls { mode: TlsMode::Disable, ca_file: None },
        }
    }

    /// Creates `root` empty and 0700 (removing what a crashed drill left), and checks that the
    /// socket's path fits. A `root` already there is removed only when it is a real folder of
    /// this account's, 0700, as a crashed drill leaves it; a symbolic link, another account's
    /// folder or one others may enter is refused, never followed or emptied. `root` itself is
    /// made non-recursively (its parents may be made), so nothing another account made in the
    /// meantime is taken for it, and is checked again once made.
    pub fn prepare(&self) -> Result<(), ServerError> {
        let socket = self.socket_dir().join(format!(".s.PGSQL.{PORT}"));
        if socket.as_os_str().len() > SOCKET_PATH_MAX {
            return Err(self.folder_error(format!(
                "the server's socket {} would be longer than {SOCKET_PATH_MAX} bytes; set the drill's scratch_dir to a shorter path",
                socket.display()
            )));
        }
        if std::fs::symlink_metadata(&self.root).is_ok() {
            self.check_root()?;
            self.remove()?;
        }
        use std::os::unix::fs::DirBuilderExt as _;
        if let Some(parent) = self.root.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|err| self.folder_error(err.to_string()))?;
        }
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        builder.create(&self.root).map_err(|err| self.folder_error(err.to_string()))?;
        self.check_root()?;
        builder.create(self.socket_dir()).map_err(|err| self.folder_error(err.to_string()))?;
        Ok(())
    }

    /// Refuses `root` unless it is a folder (not a link to one) of this process's account, which
    /// no one else may enter: the server's socket, configuration and data live there.
    fn check_root(&self) -> Result<(), ServerError> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::symlink_metadata(&self.root).map_err(|err| self.folder_error(err.to_string()))?;
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let refuse = |why: String| {
            Err(self.folder_error(format!(
                "{why}; vigil makes this folder itself: remove it (or choose another scratch_dir) and run the drill again"
            )))
        };
        if meta.file_type().is_symlink() {
            return refuse("it is a symbolic link".into());
        }
        if !meta.is_dir() {
            return refuse("it is not a folder".into());
        }
        if meta.uid() != me {
            return refuse(format!("it belongs to uid {}, not to vigil's account (uid {me})", meta.uid()));
        }
        if meta.mode() & 0o077 != 0 {
            return refuse(format!("its mode is {:o}; others may enter it", meta.mode() & 0o7777));
        }
        Ok(())
    }

    fn folder_error(&self, reason: String) -> ServerError {
        ServerError::Folder { path: self.root.clone(), reason }
    }

    /// Starts the server on the restored data directory; `password_roles` must give passwords,
    /// every other role logs in over the private socket without one. `env` is the server's
    /// whole environment besides `PATH` (its `restore_command` may need a passphrase). Returns
    /// the running server, for [`Self::await_promoted`].
    pub fn start(
        &self,
        password_roles: &[String],
        env: &[(&'static str, SecretString)],
    ) -> Result<Started, ServerError> {
        use std::os::unix::process::CommandExt as _;
        let data = self.data_dir();
        // A cluster whose configuration lived outside its data directory (Debian's
        // /etc/postgresql) was backed up without one: the server needs the file to exist.
        let config = data.join("postgresql.conf");
        if std::fs::symlink_metadata(&config).is_err() {
            write_new(&config, "").map_err(|err| self.folder_error(err.to_string()))?;
        }
        let mut hba = String::new();
        for role in password_roles {
            hba.push_str(&format!("local all \"{}\" scram-sha-256\n", role.replace('"', "")));
        }
        hba.push_str("local all all trust\n");
        let hba_file = self.root.join("hba.conf");
        write_new(&hba_file, &hba).map_err(|err| self.folder_error(err.to_string()))?;
        // An empty ident map: the source's may name OS users this host does not have.
        write_new(&self.root.join("ident.conf"), "").map_err(|err| self.folder_error(err.to_string()))?;
        let settings = self.recovery_settings()?;
        let log = open_new(&self.log_path()).map_err(|err| self.folder_error(err.to_string()))?;
        let log_err = log.try_clone().map_err(|err| self.folder_error(err.to_string()))?;
        let program = self.bin_dir.join("postgres");
        let mut command = std::process::Command::new(&program);
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .arg("-D")
            .arg(&data)
            .args(["-p", &PORT.to_string(), "-c", "listen_addresses="])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.socket_dir().display()))
            .arg("-c")
            .arg(format!("hba_file={}", hba_file.display()))
            .arg("-c")
            .arg(format!("ident_file={}", self.root.join("ident.conf").display()))
            // Never archive into the stanza it came from, never serve TLS with the source's
            // certificate paths, never read the source's include files.
            .args(["-c", "archive_mode=off", "-c", "ssl=off", "-c", "logging_collector=off"])
            .args(settings.iter().flat_map(|(name, value)| ["-c".to_owned(), format!("{name}={value}")]))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C meant for vigil does not stop it mid-recovery;
            // the drill's teardown stops it.
            .process_group(0);
        for (name, value) in env {
            command.env(name, value.expose_secret());
        }
        let child = command.spawn().map_err(|err| ServerError::Spawn {
            program: program.display().to_string(),
            reason: err.to_string(),
            version: self.version.clone(),
        })?;
        Ok(Started(Some(child)))
    }

    /// The settings recovery requires to be at least the source's (`max_connections` and the
    /// like), as `pg_controldata` reads them from the restored control file: the source may
    /// have set them on its command line, which a backup does not carry.
    fn recovery_settings(&self) -> Result<Vec<(&'static str, String)>, ServerError> {
        const REQUIRED: [(&str, &str); 5] = [
            ("max_connections setting:", "max_connections"),
            ("max_worker_processes setting:", "max_worker_processes"),
            ("max_wal_senders setting:", "max_wal_senders"),
            ("max_prepared_xacts setting:", "max_prepared_transactions"),
            ("max_locks_per_xact setting:", "max_locks_per_transaction"),
        ];
        let program = self.bin_dir.join("pg_controldata");
        let output = std::process::Command::new(&program)
            .env_clear()
            .env("LC_ALL", "C")
            .arg(self.data_dir())
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|err| ServerError::Spawn {
                program: program.display().to_string(),
                reason: err.to_string(),
                version: self.version.clone(),
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text
            .lines()
            .filter_map(|line| {
                let (label, setting) = REQUIRED.iter().find(|(label, _)| line.starts_with(label))?;
                let value = line[label.len()..].trim();
                value.parse::<u64>().is_ok().then(|| (*setting, value.to_owned()))
            })
            .collect())
    }

    /// Waits until recovery has ended and the server accepts writes, logging in as `user`, for
    /// at most `within`. A server that exits first (a recovery target the archive never reaches,
    /// a missing WAL segment) is reported with the end of its log.
    pub async fn await_promoted(&self, started: &mut Started, user: &str, within: Duration) -> Result<(), ServerError> {
        use sqlx::Connection as _;
        let deadline = tokio::time::Instant::now() + within;
        let options = sqlx::postgres::PgConnectOptions::new()
            .host(&self.socket_dir().display().to_string())
            .port(PORT)
            .username(user)
            .database("postgres")
            .application_name("vigil-drill");
        loop {
            if let Ok(mut conn) = sqlx::PgConnection::connect_with(&options).await
                && let Ok(false) =
                    sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await
            {
                return Ok(());
            }
            if started.exited() {
                return Err(ServerError::Recovery {
                    what: "the restored server stopped before recovery ended".into(),
                    log: self.log_tail(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ServerError::Recovery {
                    what: format!("recovery did not end within {}s", within.as_secs()),
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The postmaster running on the data directory: the PID its `postmaster.pid` names, when
    /// that process lives and was started on this directory (a recycled PID is someone else's).
    fn postmaster(&self) -> Option<i32> {
        let data = self.data_dir();
        let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
        let pid = pid_file.lines().next()?.trim().parse::<i32>().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, Some('Z' | 'X') | None) {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&*data.to_string_lossy());
        ours.then_some(pid)
    }

    /// The last lines of the server's log, for an error.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> =
            text.lines().filter(|l| l.contains("FATAL") || l.contains("ERROR") || l.contains("PANIC")).collect();
        let chosen = if lines.is_empty() { text.lines().collect() } else { lines };
        let tail = chosen[chosen.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() { "the server wrote no log".to_owned() } else { tail }
    }

    /// Stops the server if one runs on the data directory: a fast shutdown (SIGINT to the
    /// postmaster `postmaster.pid` names), then an immediate one (SIGQUIT), then SIGKILL. No
    /// binary is needed, so a drill resumed on a machine whose configuration changed still
    /// stops what it started. Nothing running is success.
    pub async fn stop(&self) -> Result<(), ServerError> {
        for (signal, wait) in [(libc::SIGINT, 30), (libc::SIGQUIT, 10), (libc::SIGKILL, 5)] {
            let Some(pid) = self.postmaster() else { return Ok(()) };
            // SAFETY: kill(2) with a pid read from our own data directory's postmaster.pid,
            // checked above to be a live process started on that directory.
            unsafe { libc::kill(pid, signal) };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
            while self.postmaster().is_some() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        match self.postmaster() {
            Some(pid) => {
                Err(ServerError::Stop { data: self.data_dir(), reason: format!("process {pid} survived SIGKILL") })
            }
            None => Ok(()),
        }
    }

    /// Removes the folder; gone already is success.
    pub fn remove(&self) -> Result<(), ServerError> {
        match std::fs::remove_dir_all(&self.root) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(self.folder_error(err.to_string())),
            _ => Ok(()),
        }
    }
}

/// Opens `path` for writing, 0600, created or emptied, never through a symbolic link
/// (`O_NOFOLLOW`): a restored data directory is the source's, and a link in it must not make
/// vigil write elsewhere.
fn open_new(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Writes `text` to `path` as [`open_new`] opens it.
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    open_new(path)?.write_all(text.as_bytes())
}

/// A server this process started. It runs until teardown stops it by its data directory; when
/// this is dropped a thread reaps it once it exits, so it never lingers as a zombie of a
/// long-lived daemon.
pub struct Started(Option<std::process::Child>);

impl Started {
    /// Whether the server process has exited.
    fn exited(&mut self) -> bool {
        self.0.as_mut().is_none_or(|child| !matches!(child.try_wait(), Ok(None)))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            std::thread::spawn(move || child.wait());
        }
    }
}

/// Debian's folder of PostgreSQL `version`'s server binaries.
pub fn default_bin_dir(version: &str) -> PathBuf {
    Path::new("/usr/lib/postgresql").join(version).join("bin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_whose_socket_path_would_not_fit_is_refused_before_anything_is_made() {
        let root = std::env::temp_dir().join("v".repeat(120));
        let server = TempServer::new(PathBuf::from("/nonexistent"), root.clone(), "15".into());
        let err = server.prepare().unwrap_err();
        assert!(err.to_string().contains("scratch_dir to a shorter path"), "{err}");
        assert!(!root.exists());
    }

    /// A root already there is refused unless it is this account's own 0700 folder: a
    /// symbolic link is neither followed nor emptied, a folder others may enter (or another
    /// account's, when the test runs as root and can make one) is left as it is.
    #[test]
    fn a_root_that_is_a_link_or_not_private_is_refused_and_left_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = tempfile::tempdir().unwrap();
        let elsewhere = base.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("keep"), "someone's").unwrap();
        let linked = base.path().join("linked");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        let server = TempServer::new(PathBuf::from("/nonexistent"), linked.clone(), "15".into());
        let err = server.prepare().unwrap_err().to_string();
        assert!(err.contains("symbolic link") && err.contains("remove it"), "{err}");
        assert!(elsewhere.join("keep").exists() && std::fs::symlink_metadata(&linked).unwrap().is_symlink());

        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(open.join("keep"), "").unwrap();
        let server = TempServer::new(PathBuf::from("/nonexistent"), open.clone(), "15".into());
        let err = server.prepare().unwrap_err().to_string();
        assert!(err.contains("mode is 755"), "{err}");
        assert!(open.join("keep").exists());

        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = base.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let server = TempServer::new(PathBuf::from("/nonexistent"), theirs.clone(), "15".into());
            let err = server.prepare().unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534"), "{err}");
        }

        // Its own 0700 folder, as a crashed drill leaves it, is emptied and made again.
        let own = base.path().join("own");
        std::fs::create_dir(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(own.join("left"), "").unwrap();
        TempServer::new(PathBuf::from("/nonexistent"), own.clone(), "15".into()).prepare().unwrap();
        assert!(!own.join("left").exists() && own.join("s").is_dir());
    }

    /// The server's configuration files are never written through a link a restored data
    /// directory (or anything else in the folder) holds.
    #[test]
    fn configuration_is_not_written_through_a_link() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("target");
        std::fs::write(&target, "untouched").unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_new(&link, "overwritten").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    }

    #[tokio::test]
    async fn stopping_and_removing_what_is_not_there_is_success() {
        let root = std::env::temp_dir().join(format!("vigil-server-test-{}", std::process::id()));
        let server = TempServer::new(PathBuf::from("/nonexistent"), root.clone(), "15".into());
        server.prepare().unwrap();
        assert!(root.exists() && server.postmaster().is_none());
        // A postmaster.pid naming a process that is not a server on this directory (this test)
        // is not ours to signal.
        std::fs::create_dir_all(server.data_dir()).unwrap();
        std::fs::write(server.data_dir().join("postmaster.pid"), format!("{}\n", std::process::id())).unwrap();
        assert!(server.postmaster().is_none());
        server.stop().await.unwrap();
        server.remove().unwrap();
        server.remove().unwrap();
        assert!(!root.exists());
    }
}
