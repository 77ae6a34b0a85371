//! A private MariaDB instance: TLS required on TCP (`require_secure_transport`), and root has
//! a generated password and no unix_socket login.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::process::{as_account, await_ready, is_ours, log_tail, run_checked, spawn, stop};
use super::readiness::free_port;
use super::tls::{self, Certificates};
use super::tools::ensure_debian_packages;
use super::{Context, Database, random_hex};

pub fn marker(db: &Database) -> String {
    format!("--datadir={}", db.data_dir.join("data").display())
}

pub fn start(ctx: &mut Context, certs: &Certificates) -> anyhow::Result<Database> {
    ensure_debian_packages(&[
        ("/usr/sbin/mariadbd", "mariadb-server"),
        ("/usr/bin/mariadb-install-db", "mariadb-server"),
        ("/usr/bin/mariadb", "mariadb-client"),
        ("/usr/bin/mariadb-admin", "mariadb-client"),
    ])?;
    let dir = ctx.fresh_private_dir("mariadb")?;
    let run_as = ctx.run_as;
    let data = dir.join("data");
    let socket = dir.join("mariadb.sock");
    let log = ctx.log("mariadb");
    let _ = std::fs::remove_file(&log);

    let mut install = Command::new("/usr/bin/mariadb-install-db");
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"])
        .current_dir(&dir);
    as_account(&mut install, run_as);
    run_checked(install, "mariadb-install-db")?;

    let installed = tls::install(certs, &dir, run_as)?;
    let port = free_port()?;
    let mut server = Command::new("/usr/sbin/mariadbd");
    server
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
        .args(["--skip-name-resolve", "--max-connections=300", "--innodb-buffer-pool-size=128M"])
        // A throwaway test server: durability traded for speed.
        .args(["--innodb-flush-log-at-trx-commit=0", "--sync-binlog=0"])
        // TCP clients must use TLS; the socket counts as secure for the set-up below.
        .arg(format!("--ssl-cert={}", installed.cert.display()))
        .arg(format!("--ssl-key={}", installed.key.display()))
        .arg(format!("--ssl-ca={}", installed.ca.display()))
        .arg("--require-secure-transport=ON")
        .current_dir(&dir);
    let pid = spawn(server, &log, run_as)?;
    let password = random_hex(24)?;
    let db = Database {
        pid,
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
        url: format!(
            "mysql://root:{password}@127.0.0.1:{port}/mysql?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
            certs.ca.display()
        ),
        password,
        database: "mysql".into(),
        socket: socket.clone(),
        data_dir: dir,
        log: log.clone(),
        ca_file: certs.ca.clone(),
    };
    await_ready("MariaDB", pid, &log, Duration::from_secs(60), || socket.exists() && ping(&db))?;
    if let Err(err) = secure(&db) {
        let _ = stop(pid, &marker(&db), libc::SIGTERM, Duration::from_secs(20));
        return Err(err.context(format!("set the root password; the server log ends:\n{}", log_tail(&log, 20))));
    }
    eprintln!("started MariaDB on 127.0.0.1:{port}");
    Ok(db)
}

/// Gives root its generated password for socket and TCP logins and removes every other account.
///
/// The SQL goes through standard input, so the password never appears in a command line, and
/// the client's complaints are shown with the password blanked out.
fn secure(db: &Database) -> anyhow::Result<()> {
    let password = &db.password;
    let mut sql = String::new();
    for host in ["localhost", "127.0.0.1", "::1"] {
        sql.push_str(&format!(
            "CREATE USER IF NOT EXISTS 'root'@'{host}';\n\
             ALTER USER 'root'@'{host}' IDENTIFIED VIA mysql_native_password USING PASSWORD('{password}');\n\
             GRANT ALL PRIVILEGES ON *.* TO 'root'@'{host}' WITH GRANT OPTION;\n"
        ));
    }
    sql.push_str(
        "DELETE FROM mysql.global_priv WHERE NOT (User = 'root' AND Host IN ('localhost', '127.0.0.1', '::1')) AND User <> 'mariadb.sys';\n\
         DELETE FROM mysql.proxies_priv;\n\
         FLUSH PRIVILEGES;\n",
    );
    let mut client = Command::new("/usr/bin/mariadb")
        .args(["--no-defaults", "--protocol=socket", "-u", "root"])
        .arg(format!("--socket={}", db.socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start the mariadb client")?;
    client.stdin.take().context("client stdin")?.write_all(sql.as_bytes())?;
    let output = client.wait_with_output()?;
    if !output.status.success() {
        let complaint = String::from_utf8_lossy(&output.stderr).replace(password.as_str(), "***");
        bail!("mariadb client failed: {complaint}");
    }
    Ok(())
}

fn ping(db: &Database) -> bool {
    // mariadb-admin ping exits 0 whenever the server answers, even with "access denied".
    Command::new("/usr/bin/mariadb-admin")
        .args(["--no-defaults", "--protocol=socket", "-u", "root", "--connect-timeout=2"])
        .arg(format!("--socket={}", db.socket.display()))
        .arg("ping")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn healthy(db: &Database) -> bool {
    super::tls::serves_current(&db.data_dir, &db.ca_file)
        && is_ours(db.pid, &marker(db))
        && Path::new(&db.socket).exists()
        && ping(db)
}
