//! A private PostgreSQL 15 cluster: TLS required on TCP (`hostssl` only) and scram-sha-256
//! password authentication everywhere.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::pgbackrest::{self, PgBackRest};
use super::process::{as_account, await_ready, is_ours, run_checked, spawn};
use super::readiness::free_port;
use super::tls::{Certificates, install};
use super::tools::ensure_debian_packages;
use super::{Context, Database, random_hex};

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn marker(db: &Database) -> String {
    db.data_dir.join("data").display().to_string()
}

/// Starts the server, archiving its WAL into a new pgBackRest repository.
pub fn start(ctx: &mut Context, certs: &Certificates) -> anyhow::Result<(Database, PgBackRest)> {
    pgbackrest::ensure_installed()?;
    ensure_debian_packages(&[
        ("/usr/lib/postgresql/15/bin/initdb", "postgresql-15"),
        ("/usr/lib/postgresql/15/bin/postgres", "postgresql-15"),
        ("/usr/lib/postgresql/15/bin/pg_isready", "postgresql-client-15"),
    ])?;
    let dir = ctx.fresh_private_dir("postgres")?;
    let run_as = ctx.run_as;
    let password = random_hex(24)?;
    let log = ctx.log("postgres");
    let _ = std::fs::remove_file(&log);

    // The superuser password reaches initdb through a 0600 file, never its command line.
    let pwfile = dir.join("pwfile");
    pgbackrest::write_private(&pwfile, &password)?;
    if let Some(account) = run_as {
        std::os::unix::fs::chown(&pwfile, Some(account.uid), Some(account.gid))?;
    }
    let data = dir.join("data");
    let mut initdb = Command::new(Path::new(BIN).join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"])
        // 1 MiB WAL segments: every archive_timeout switch archives a small file, not 16 MiB.
        .arg("--wal-segsize=1")
        .arg(format!("--pwfile={}", pwfile.display()))
        .current_dir(&dir);
    as_account(&mut initdb, run_as);
    let result = run_checked(initdb, "initdb");
    std::fs::remove_file(&pwfile)?;
    result?;

    // TCP only over TLS; the socket (for pg_isready's neighbours and the admin) by password.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostssl all all ::1/128 scram-sha-256\n",
    )?;
    let installed = install(certs, &dir, run_as)?;
    let port = free_port()?;
    let repo = pgbackrest::configure(&dir, port, random_hex(32)?)?;
    pgbackrest::chown_all(&dir.join("pgbackrest"), run_as)?;
    let mut postgres = Command::new(Path::new(BIN).join("postgres"));
    postgres
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        // A throwaway test cluster: durability settings traded for speed.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
        .args(["-c", "max_connections=300", "-c", "ssl=on"])
        .arg("-c")
        .arg(format!("ssl_cert_file={}", installed.cert.display()))
        .arg("-c")
        .arg(format!("ssl_key_file={}", installed.key.display()))
        .args(pgbackrest::server_args(&repo))
        // archive_command's pgbackrest reads the passphrase from here.
        .env(pgbackrest::CIPHER_PASS_VAR, &repo.cipher_pass)
        .current_dir(&dir);
    let pid = spawn(postgres, &log, run_as)?;
    let db = Database {
        pid,
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        url: format!(
            "postgres://postgres:{password}@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            certs.ca.display()
        ),
        password: password.clone(),
        database: "postgres".into(),
        socket: dir.clone(),
        data_dir: dir.clone(),
        log: log.clone(),
        ca_file: certs.ca.clone(),
    };
    await_ready("PostgreSQL", pid, &log, Duration::from_secs(60), || healthy(&db))?;
    let passfile = dir.join("stanza.pgpass");
    pgbackrest::write_private(&passfile, &format!("*:*:*:postgres:{password}\n"))?;
    if let Some(account) = run_as {
        std::os::unix::fs::chown(&passfile, Some(account.uid), Some(account.gid))?;
    }
    let created = pgbackrest::create_stanza(&repo, &passfile, run_as);
    std::fs::remove_file(&passfile)?;
    created?;
    eprintln!("started PostgreSQL 15 on 127.0.0.1:{port}, archiving to pgBackRest stanza {}", repo.stanza);
    Ok((db, repo))
}

pub fn healthy(db: &Database) -> bool {
    super::tls::serves_current(&db.data_dir, &db.ca_file)
        && is_ours(db.pid, &marker(db))
        && Command::new(Path::new(BIN).join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &db.port.to_string(), "-t", "2"])
            .status()
            .is_ok_and(|s| s.success())
}
