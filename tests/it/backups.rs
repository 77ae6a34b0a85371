//! Backups against the real services: pg_dump and mariadb-dump streamed into S3 (moto) and a
//! local folder under KMS (moto), Transit (OpenBao) and a local key; verified, fetched and
//! restored with the standard tools; tampered with; killed part-way; and RDS snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{Database, Run, Services, admin_sql, unique, vigil};

/// A test folder with `vigil.toml` and one schedule file of backup sets.
pub(crate) struct Setup {
    pub(crate) services: Services,
    dir: tempfile::TempDir,
    bucket: String,
    kms_key: String,
    transit_key: String,
}

impl Setup {
    pub(crate) async fn new() -> Self {
        let services = Services::load();
        let dir = tempfile::tempdir().unwrap();
        services.write_controller_config(dir.path());
        std::fs::create_dir_all(dir.path().join("schedules")).unwrap();
        let bucket = unique("backups").to_lowercase();
        services.s3().await.create_bucket().bucket(&bucket).send().await.unwrap();
        let kms_key = aws_sdk_kms::Client::new(&services.sdk_config().await)
            .create_key()
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .key_id;
        let transit_key = unique("backups");
        let created = services
            .openbao
            .http()
            .post(format!("{}/v1/transit/keys/{transit_key}", services.openbao.address))
            .header("X-Vault-Token", &services.openbao.token)
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "create the Transit key: {}", created.status());
        Self { services, dir, bucket, kms_key, transit_key }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn vigil(&self, args: &[&str]) -> Run {
        vigil(self.path(), args)
    }

    /// A target for database `name` on the private server of `engine`, its admin credential in
    /// a file.
    pub(crate) fn target(&self, engine: &str, db: &Database, name: &str) -> String {
        let admin = crate::support::secret_file(
            self.path(),
            &format!("admin-{name}"),
            &serde_json::json!({ "username": db.user, "password": db.password }).to_string(),
        );
        let vigil::secret::SecretRef::File { path } = admin else { unreachable!() };
        format!(
            "[targets.{name}]\nkind = \"{engine}\"\nhost = \"{}\"\nport = {}\ndatabase = \"{name}\"\nadmin = {{ file = \"{}\" }}\n{}\n\n",
            db.host,
            db.port,
            path.display(),
            db.tls_toml()
        )
    }

    /// A backup set of `target` to `store` (`s3` or `local`) under `keys` (`aws_kms`,
    /// `vault_transit` or `local`).
    pub(crate) fn set(&self, name: &str, target: &str, store: &str, keys: &str) -> String {
        let store = match store {
            "s3" => format!("store = \"s3\"\nbucket = \"{}\"\nprefix = \"vigil/\"", self.bucket),
            _ => "store = \"local\"\npath = \"../backups\"".to_owned(),
        };
        let keys = match keys {
            "aws_kms" => format!("key_service = \"aws_kms\"\nkey_id = \"{}\"", self.kms_key),
            "vault_transit" => format!("key_service = \"vault_transit\"\nkey_id = \"{}\"", self.transit_key),
            _ => "key_service = \"local\"\nkey_file = \"../keys/backup.key\"".to_owned(),
        };
        format!("[backups.{name}]\ntarget = \"{target}\"\nschedule = \"0 2 * * *\"\n{store}\n{keys}\n\n")
    }

    pub(crate) fn write_schedule(&self, text: &str) {
        std::fs::write(self.path().join("schedules/backups.toml"), text).unwrap();
    }

    /// Backs up `set`; returns the backup id.
    pub(crate) fn backup(&self, set: &str) -> String {
        let run = self.vigil(&["--output", "json", "backup", "run", set]);
        run.assert_code(0);
        let report = run.json();
        assert_eq!(report[0]["ended"]["outcome"], "done", "{report}");
        assert_eq!(report[0]["verified"], true, "{report}");
        report[0]["backup_id"].as_str().unwrap().to_owned()
    }

    fn entry(&self, id: &str) -> Value {
        let list = self.vigil(&["--output", "json", "backup", "list"]).json();
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))
    }

    /// The manifest beside a local-store backup.
    fn local_manifest(&self, set: &str, id: &str) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.local_object(set, id).with_extension("manifest.json")).unwrap(),
        )
        .unwrap()
    }

    /// Every file of backup `id` in the local store, of any attempt: dump, globals, manifest,
    /// a partial write.
    pub(crate) fn local_files(&self, set: &str, id: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.path().join(format!("backups/{set}"))) else { return Vec::new() };
        entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{id}.")))
            .collect()
    }

    /// Backup `id`'s dump object in the local store: `SET/ID.ATTEMPT.vbk`, the one attempt
    /// written.
    pub(crate) fn local_object(&self, set: &str, id: &str) -> PathBuf {
        let folder = self.path().join(format!("backups/{set}"));
        let objects: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.strip_prefix(&format!("{id}.")).is_some_and(|rest| {
                    rest.strip_suffix(".vbk").is_some_and(|attempt| attempt.len() == 8 && !attempt.contains('.'))
                })
            })
            .collect();
        assert_eq!(objects.len(), 1, "one object of backup {id} in {}: {objects:?}", folder.display());
        objects.into_iter().next().unwrap()
    }
}

/// A fresh PostgreSQL database filled by pgbench at `scale` plus a table of random text and
/// bytea that compresses like real data.
pub(crate) async fn postgres_database(services: &Services, scale: u32) -> String {
    let pg = &services.postgres;
    let name = unique("bk").replace('-', "_");
    admin_sql(vigil::engines::Engine::Postgres, pg, &[format!("CREATE DATABASE {name}")]).await;
    let status = Command::new("pgbench")
        .args(["-i", "-q", "-s", &scale.to_string(), "-h", &pg.host, "-p", &pg.port.to_string(), "-U", &pg.user, &name])
        .env("PGPASSWORD", &pg.password)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &pg.ca_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pgbench -i failed");
    let db = Database { database: name.clone(), ..pg.clone() };
    admin_sql(
        vigil::engines::Engine::Postgres,
        &db,
        &["CREATE TABLE notes AS SELECT g AS id, md5(random()::text) || repeat(chr(65 + (g % 26)), g % 50) AS body, \
           decode(md5(g::text), 'hex') AS digest, \
           decode(md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex') AS noise \
           FROM generate_series(1, 50000) g"
            .to_owned()],
    )
    .await;
    name
}

/// Row counts of every table in `database`, as `schema.table`.
async fn postgres_counts(services: &Services, database: &str) -> BTreeMap<String, u64> {
    use sqlx::Connection as _;
    let pg = &services.postgres;
    let options = pg.pg_options().database(database);
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut counts = BTreeMap::new();
    for (schema, table) in tables {
        let sql = format!("SELECT count(*) FROM \"{schema}\".\"{table}\"");
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut conn).await.unwrap();
        counts.insert(format!("{schema}.{table}"), count as u64);
    }
    counts
}

fn counts_of(manifest_counts: &Value) -> BTreeMap<String, u64> {
    manifest_counts.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
}

/// `vigil backup fetch ID | pg_restore -d FRESH`: the operator's restore by hand.
async fn restore_postgres(setup: &Setup, id: &str) -> String {
    let pg = &setup.services.postgres;
    let fresh = unique("restored").replace('-', "_");
    admin_sql(vigil::engines::Engine::Postgres, pg, &[format!("CREATE DATABASE {fresh}")]).await;
    let mut fetch = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["backup", "fetch", id])
        .current_dir(setup.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let restore = Command::new("pg_restore")
        .args(["--no-owner", "-h", &pg.host, "-p", &pg.port.to_string(), "-U", &pg.user, "-d", &fresh])
        .env("PGPASSWORD", &pg.password)
        .stdin(fetch.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(fetch.wait().unwrap().success(), "vigil backup fetch failed");
    assert!(restore.status.success(), "pg_restore failed: {}", String::from_utf8_lossy(&restore.stderr));
    fresh
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn postgres_backups_to_both_stores_under_every_key_service_restore_with_matching_counts() {
    let setup = Setup::new().await;
    let database = postgres_database(&setup.services, 2).await;
    let mut schedule = setup.target("postgres", &setup.services.postgres, &database);
    let combos = [
        ("s3", "aws_kms"),
        ("s3", "vault_transit"),
        ("s3", "local"),
        ("local", "aws_kms"),
        ("local", "vault_transit"),
        ("local", "local"),
    ];
    for (store, keys) in combos {
        schedule.push_str(&setup.set(&format!("pg-{store}-{keys}"), &database, store, keys));
    }
    setup.write_schedule(&schedule);
    let source = postgres_counts(&setup.services, &database).await;
    assert!(source["public.pgbench_accounts"] == 200_000 && source["public.notes"] == 50_000, "{source:?}");
    for (store, keys) in combos {
        let set = format!("pg-{store}-{keys}");
        let id = setup.backup(&set);
        let entry = setup.entry(&id);
        assert_eq!(entry["status"], "verified", "{entry}");
        // Tens of MB of dump, compressed well below that but not absurdly (random text).
        let verified = setup.vigil(&["--output", "json", "backup", "verify", &id]);
        verified.assert_code(0);
        let report = verified.json();
        let (plain, stored) = (
            report["stream"]["plaintext_bytes"].as_u64().unwrap(),
            report["stream"]["ciphertext_bytes"].as_u64().unwrap(),
        );
        assert!(plain > 20 << 20, "{set}: a dump of only {plain} bytes");
        assert!(stored < plain / 2, "{set}: {stored} stored for {plain}");
        assert!(report["restore_check"].as_str().unwrap().contains("pg_restore --list read"), "{report}");
        let restored = restore_postgres(&setup, &id).await;
        let manifest_counts = match store {
            "local" => counts_of(&setup.local_manifest(&set, &id)["consistency"]["row_counts"]),
            _ => {
                let evidence =
                    setup.vigil(&["--output", "json", "evidence", "list", "--kind", "backup.written"]).json();
                let record = evidence
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["details"].as_str().unwrap().contains(&id))
                    .unwrap()
                    .clone();
                let details: Value = serde_json::from_str(record["details"].as_str().unwrap()).unwrap();
                counts_of(&details["row_counts"])
            }
        };
        assert_eq!(manifest_counts, source, "{set}: manifest counts");
        assert_eq!(postgres_counts(&setup.services, &restored).await, manifest_counts, "{set}: restored counts");
    }
    // Every backup, verification and fetch is evidence, and the ledger verifies.
    setup.vigil(&["evidence", "verify"]).assert_code(0);
    let written = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "backup.written"]).json();
    assert_eq!(written.as_array().unwrap().len(), combos.len());
}

/// A MariaDB database with a few tables of tens of thousands of rows.
pub(crate) async fn mariadb_database(services: &Services) -> String {
    let maria = &services.mariadb;
    let name = unique("bk").replace('-', "_");
    admin_sql(vigil::engines::Engine::Mysql, maria, &[format!("CREATE DATABASE {name}")]).await;
    let db = Database { database: name.clone(), ..maria.clone() };
    admin_sql(
        vigil::engines::Engine::Mysql,
        &db,
        &[
            "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(64), notes TEXT)".to_owned(),
            "INSERT INTO customers SELECT seq, CONCAT('customer ', seq), REPEAT(MD5(seq), 1 + seq % 8) FROM seq_1_to_40000".to_owned(),
            "CREATE TABLE orders (id INT PRIMARY KEY, customer INT, total DECIMAL(10,2), blob_col BLOB)".to_owned(),
            "INSERT INTO orders SELECT seq, seq % 40000, seq * 1.5, UNHEX(MD5(seq)) FROM seq_1_to_120000".to_owned(),
        ],
    )
    .await;
    name
}

async fn mariadb_counts(services: &Services, database: &str) -> BTreeMap<String, u64> {
    use sqlx::Connection as _;
    let m = &services.mariadb;
    let options = m.mysql_options().database(database);
    let mut conn = sqlx::MySqlConnection::connect_with(&options).await.unwrap();
    let mut counts = BTreeMap::new();
    for table in ["customers", "orders"] {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        counts.insert(format!("{database}.{table}"), count as u64);
    }
    counts
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn mariadb_backups_restore_with_the_mariadb_client_and_matching_counts() {
    let setup = Setup::new().await;
    let database = mariadb_database(&setup.services).await;
    let mut schedule = setup.target("mysql", &setup.services.mariadb, &database);
    schedule.push_str(&setup.set("maria-s3", &database, "s3", "vault_transit"));
    schedule.push_str(&setup.set("maria-local", &database, "local", "aws_kms"));
    setup.write_schedule(&schedule);
    let source = mariadb_counts(&setup.services, &database).await;
    for set in ["maria-s3", "maria-local"] {
        let id = setup.backup(set);
        let verified = setup.vigil(&["--output", "json", "backup", "verify", &id]);
        verified.assert_code(0);
        assert!(verified.json()["restore_check"].as_str().unwrap().contains("completion line"));
        let dump = setup.path().join(format!("{set}.sql"));
        setup.vigil(&["backup", "fetch", &id, "-o", dump.to_str().unwrap()]).assert_code(0);
        let fresh = unique("restored").replace('-', "_");
        let m = &setup.services.mariadb;
        admin_sql(vigil::engines::Engine::Mysql, m, &[format!("CREATE DATABASE {fresh}")]).await;
        let restore = Command::new("mariadb")
            .args(["--protocol=TCP", "-h", &m.host, "-P", &m.port.to_string(), "-u", &m.user])
            .args(["--ssl", "--ssl-verify-server-cert"])
            .arg(format!("--ssl-ca={}", m.ca_file.display()))
            .arg(&fresh)
            .env("MYSQL_PWD", &m.password)
            .stdin(std::fs::File::open(&dump).unwrap())
            .output()
            .unwrap();
        assert!(restore.status.success(), "mariadb < dump: {}", String::from_utf8_lossy(&restore.stderr));
        let restored: BTreeMap<String, u64> = mariadb_counts(&setup.services, &fresh)
            .await
            .into_iter()
            .map(|(k, v)| (k.replace(&fresh, &database), v))
            .collect();
        assert_eq!(restored, source, "{set}");
        let evidence = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "backup.written"]).json();
        let record =
            evidence.as_array().unwrap().iter().find(|r| r["details"].as_str().unwrap().contains(&id)).unwrap().clone();
        let details: Value = serde_json::from_str(record["details"].as_str().unwrap()).unwrap();
        assert_eq!(counts_of(&details["row_counts"]), source, "{set}: manifest counts");
    }
}

/// One small backup in the local store, for tampering.
async fn tamper_setup() -> (Setup, String, Vec<u8>) {
    let setup = Setup::new().await;
    let database = postgres_database(&setup.services, 2).await;
    let mut schedule = setup.target("postgres", &setup.services.postgres, &database);
    schedule.push_str(&setup.set("t", &database, "local", "local"));
    setup.write_schedule(&schedule);
    let id = setup.backup("t");
    let object = std::fs::read(setup.local_object("t", &id)).unwrap();
    assert!(object.len() > 3 * (1 << 20), "need several segments, have {} bytes", object.len());
    (setup, id, object)
}

/// Verifies `id` with its object replaced by `bytes`; returns the error line.
fn verify_tampered(setup: &Setup, id: &str, bytes: &[u8]) -> String {
    std::fs::write(setup.local_object("t", id), bytes).unwrap();
    let run = setup.vigil(&["backup", "verify", id]);
    run.assert_code(1);
    run.stderr()
}

const SEGMENT: usize = (1 << 20) + 16;

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn every_kind_of_tampering_is_rejected_naming_the_failed_check() {
    let (setup, id, object) = tamper_setup().await;
    let header = 15 + id.len() + 32;
    // 100 single-byte flips spread over the whole object, header included.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..100 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = (seed % object.len() as u64) as usize;
        let mut bad = object.clone();
        bad[at] ^= 1 << (seed % 8);
        let err = verify_tampered(&setup, &id, &bad);
        let expected = if at < 8 {
            "header check failed"
        } else if at < header {
            "check failed"
        } else {
            "failed authentication"
        };
        assert!(err.contains(expected), "flip at {at}: {err}");
    }
    let err = verify_tampered(&setup, &id, &object[..header + 2 * SEGMENT]);
    assert!(err.contains("truncation check failed: the object ends after segment 1"), "{err}");
    let segment = |i: usize| &object[header + i * SEGMENT..header + (i + 1) * SEGMENT];
    let dropped = [&object[..header], segment(0), segment(2), &object[header + 3 * SEGMENT..]].concat();
    let err = verify_tampered(&setup, &id, &dropped);
    assert!(err.contains("segment 1 failed authentication"), "{err}");
    let swapped = [&object[..header], segment(1), segment(0), &object[header + 2 * SEGMENT..]].concat();
    let err = verify_tampered(&setup, &id, &swapped);
    assert!(err.contains("segment 0 failed authentication"), "{err}");
    // The right object again verifies, so every failure above was the tampering's.
    std::fs::write(setup.local_object("t", &id), &object).unwrap();
    setup.vigil(&["backup", "verify", &id]).assert_code(0);
    // A wrong data key fails the key check before any segment is opened.
    let wrong = vigil::backup::format::DataKey::generate();
    let err = vigil::backup::pipeline::open(&object[..], &wrong, &id, std::io::sink()).unwrap_err();
    assert!(err.to_string().starts_with("key check failed"), "{err}");
    // An edited hash in the manifest beside the backup.
    let manifest_path = setup.local_object("t", &id).with_extension("manifest.json");
    let original = std::fs::read_to_string(&manifest_path).unwrap();
    let mut manifest: Value = serde_json::from_str(&original).unwrap();
    manifest["stream"]["ciphertext_sha256"] = Value::String("00".repeat(32));
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    let run = setup.vigil(&["backup", "verify", &id]);
    run.assert_code(1);
    assert!(run.stderr().contains("manifest check failed"), "{}", run.stderr());
    // Verification failures are evidence, and a failed backup is no longer counted verified.
    assert_eq!(setup.entry(&id)["status"], "written");
    let failures =
        setup.vigil(&["--output", "json", "evidence", "list", "--kind", "backup.verified", "--limit", "1000"]).json();
    assert!(failures.as_array().unwrap().iter().filter(|r| r["outcome"] == "failed").count() >= 104);
    // A fetch of a tampered object writes no file.
    std::fs::write(&manifest_path, &original).unwrap();
    let mut bad = object.clone();
    bad[header + SEGMENT + 5] ^= 1;
    std::fs::write(setup.local_object("t", &id), &bad).unwrap();
    let out = setup.path().join("out.dump");
    setup.vigil(&["backup", "fetch", &id, "-o", out.to_str().unwrap()]).assert_code(1);
    assert!(!out.exists());
    let partials: Vec<_> = std::fs::read_dir(setup.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .map(|e| e.path())
        .collect();
    assert!(partials.is_empty(), "{partials:?}");
}

/// `fetch -o FILE` (often run as root) writes a 0600 file and never follows a symlink planted
/// where it writes: not at `FILE.partial`, not at `FILE`.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn fetch_writes_a_private_file_and_follows_no_planted_symlink() {
    use std::os::unix::fs::PermissionsExt as _;
    let setup = Setup::new().await;
    let database = postgres_database(&setup.services, 1).await;
    let mut schedule = setup.target("postgres", &setup.services.postgres, &database);
    schedule.push_str(&setup.set("f", &database, "local", "local"));
    setup.write_schedule(&schedule);
    let id = setup.backup("f");
    let victim = setup.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let out = setup.path().join("out.dump");
    std::os::unix::fs::symlink(&victim, setup.path().join("out.dump.partial")).unwrap();
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    setup.vigil(&["backup", "fetch", &id, "-o", out.to_str().unwrap()]).assert_code(0);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "a symlink was followed");
    let written = std::fs::symlink_metadata(&out).unwrap();
    assert!(written.file_type().is_file(), "FILE is the dump now, not the symlink");
    assert_eq!(written.permissions().mode() & 0o777, 0o600);
    assert!(written.len() > 1000);
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_backup_that_cannot_dump_is_rolled_back_and_leaves_nothing() {
    let setup = Setup::new().await;
    let database = postgres_database(&setup.services, 1).await;
    let mut schedule = setup
        .target("postgres", &setup.services.postgres, &database)
        .replace(&format!("database = \"{database}\""), "database = \"no_such_database\"");
    schedule.push_str(&setup.set("broken", &database, "local", "local"));
    setup.write_schedule(&schedule);
    let run = setup.vigil(&["-vvv", "--output", "json", "backup", "run", "broken"]);
    run.assert_code(1);
    let report = run.json();
    assert_eq!(report[0]["ended"]["outcome"], "rolled_back", "{report}");
    assert!(report[0]["ended"]["reason"].as_str().unwrap().contains("no_such_database"), "{report}");
    let id = report[0]["backup_id"].as_str().unwrap();
    assert_eq!(setup.entry(id)["status"], "failed");
    assert!(setup.local_files("broken", id).is_empty(), "{:?}", setup.local_files("broken", id));
    assert!(!run.all_output().contains(&setup.services.postgres.password), "the admin password was logged");
    // No password file is left once the dump has ended (the per-process folders may stay).
    let scratch = setup.path().join("data/tmp");
    let files: Vec<PathBuf> = std::fs::read_dir(&scratch)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|entry| {
            if entry.path().is_dir() {
                std::fs::read_dir(entry.path()).into_iter().flatten().flatten().map(|e| e.path()).collect()
            } else {
                vec![entry.path()]
            }
        })
        .collect();
    assert!(files.is_empty(), "{files:?}");
}

#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_killed_backup_resumes_to_a_verified_backup() {
    let setup = Setup::new().await;
    let database = postgres_database(&setup.services, 1).await;
    let mut schedule = setup.target("postgres", &setup.services.postgres, &database);
    schedule.push_str(&setup.set("k", &database, "s3", "vault_transit"));
    setup.write_schedule(&schedule);
    for point in ["before:write", "after:write", "before:verify", "after:verify"] {
        let killed = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["backup", "run", "k"])
            .current_dir(setup.path())
            .env("VIGIL_FAILPOINT", format!("backup.dump:{point}"))
            .output()
            .unwrap();
        assert!(!killed.status.success(), "{point}: not killed");
        let resumed = setup.vigil(&["--output", "json", "backup", "resume"]);
        resumed.assert_code(0);
        let report = resumed.json();
        assert_eq!(report.as_array().unwrap().len(), 1, "{point}: {report}");
        assert_eq!(report[0]["ended"]["outcome"], "done", "{point}: {report}");
        let id = report[0]["backup_id"].as_str().unwrap();
        assert_eq!(setup.entry(id)["status"], "verified", "{point}");
        setup.vigil(&["backup", "verify", id]).assert_code(0);
    }
    setup.vigil(&["evidence", "verify"]).assert_code(0);
}

/// Killed after its verification was recorded and before the saga said so: the resumed saga
/// adopts that verification instead of repeating it (one `backup.verified` record), so a store
/// failing for a moment on a repeat could never unwind it and delete a proven backup.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_verification_a_kill_left_recorded_is_adopted_not_repeated() {
    let setup = Setup::new().await;
    let database = postgres_database(&setup.services, 1).await;
    let mut schedule = setup.target("postgres", &setup.services.postgres, &database);
    schedule.push_str(&setup.set("v", &database, "local", "local"));
    setup.write_schedule(&schedule);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["-v", "backup", "run", "v"])
        .current_dir(setup.path())
        .env("VIGIL_PAUSE", "backup.dump:verified:60000")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0 && !line.contains("failpoint: pausing") {
        line.clear();
    }
    assert!(line.contains("backup.dump:verified"), "the run never reached its pause: {line}");
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = setup.vigil(&["-v", "--output", "json", "backup", "resume"]);
    resumed.assert_code(0);
    let report = resumed.json();
    assert_eq!(report[0]["ended"]["outcome"], "done", "{report}");
    assert!(resumed.stderr().contains("adopting the verification"), "{}", resumed.stderr());
    let id = report[0]["backup_id"].as_str().unwrap();
    let verified = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "backup.verified"]).json();
    let for_this: Vec<_> =
        verified.as_array().unwrap().iter().filter(|r| r["details"].as_str().unwrap().contains(id)).collect();
    assert_eq!(for_this.len(), 1, "verified once, not again: {verified}");
    assert_eq!(setup.entry(id)["status"], "verified");
}

/// Ctrl-C while the write step is in flight: the dump finishes and is recorded as written,
/// verification does not start, vigil exits 130, and `backup resume` verifies it.
#[cfg(feature = "failpoints")]
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn sigint_mid_write_finishes_the_write_and_resume_verifies_it() {
    let setup = Setup::new().await;
    let database = postgres_database(&setup.services, 1).await;
    let mut schedule = setup.target("postgres", &setup.services.postgres, &database);
    schedule.push_str(&setup.set("i", &database, "local", "local"));
    setup.write_schedule(&schedule);
    let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["backup", "run", "i"])
        .current_dir(setup.path())
        .env("VIGIL_STEP_DELAY", "backup.dump:write:1500")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let outcome = crate::support::interrupt_when(child, "pausing inside the step");
    assert_eq!(outcome.code, Some(130), "{}", outcome.stderr);
    assert!(outcome.elapsed < std::time::Duration::from_secs(30), "exited within the grace: {:?}", outcome.elapsed);
    let core = outcome.limits.lines().find(|l| l.starts_with("Max core file size")).unwrap_or_default();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "no core dumps of a process holding credentials: {core}");
    let listed = setup.vigil(&["--output", "json", "backup", "list"]).json();
    let entry = &listed.as_array().unwrap()[0];
    assert_eq!(entry["status"], "written", "the write finished and was recorded; verify did not run: {listed}");
    let id = entry["id"].as_str().unwrap().to_owned();
    let resumed = setup.vigil(&["--output", "json", "backup", "resume"]);
    resumed.assert_code(0);
    assert_eq!(resumed.json()[0]["ended"]["outcome"], "done", "{}", resumed.stdout());
    assert_eq!(setup.entry(&id)["status"], "verified");
    setup.vigil(&["evidence", "verify"]).assert_code(0);
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn prune_keeps_the_retention_and_the_newest_and_records_each_deletion() {
    let setup = Setup::new().await;
    let database = postgres_database(&setup.services, 1).await;
    let mut schedule = setup.target("postgres", &setup.services.postgres, &database);
    schedule.push_str(&setup.set("p", &database, "local", "local"));
    schedule.push_str("retention = { keep_last = 2, daily = 0, weekly = 0, monthly = 0 }\n");
    setup.write_schedule(&schedule);
    let ids: Vec<String> = (0..4).map(|_| setup.backup("p")).collect();
    let dry = setup.vigil(&["--output", "json", "backup", "prune", "--dry-run"]).json();
    assert_eq!(dry[0]["deleted"].as_array().unwrap().len(), 2, "{dry}");
    assert!(setup.local_object("p", &ids[0]).exists(), "a dry run deleted");
    let pruned = setup.vigil(&["--output", "json", "backup", "prune"]).json();
    let mut deleted: Vec<&str> = pruned[0]["deleted"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    deleted.sort();
    let mut oldest = [ids[0].as_str(), ids[1].as_str()];
    oldest.sort();
    assert_eq!(deleted, oldest);
    for id in &ids[..2] {
        assert!(setup.local_files("p", id).is_empty(), "{:?}", setup.local_files("p", id));
        assert_eq!(setup.entry(id)["status"], "pruned");
    }
    for id in &ids[2..] {
        assert!(setup.local_object("p", id).exists());
    }
    let records = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "backup.pruned"]).json();
    assert_eq!(records.as_array().unwrap().len(), 2);
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn s3_multipart_uploads_cut_exact_parts_and_read_back_whole() {
    use vigil::objects::{self, Chunk};
    let setup = Setup::new().await;
    let plan = vigil::config::load(&setup.path().join("vigil.toml")).unwrap().plan;
    let config = objects::Settings::S3 {
        bucket: setup.bucket.clone(),
        prefix: "parts/".into(),
        sse_kms_key_id: None,
        object_lock: None,
    };
    let s3 = objects::connect(&config, plan.aws.as_ref()).await.unwrap();
    let sdk = setup.services.s3().await;
    const PART: usize = 8 << 20;
    // Sizes around the part boundaries, sent in chunks that straddle them.
    for (size, parts) in [(0, 1), (3, 1), (PART, 1), (PART + 1, 2), (2 * PART, 2), (2 * PART + 1_000_003, 3)] {
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4099) as u8).collect();
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let key = format!("object-{size}");
        let chunks = bytes.clone();
        let send = async move {
            for chunk in chunks.chunks(1_000_003) {
                sender.send(Chunk::Data(bytes::Bytes::copy_from_slice(chunk))).await.unwrap();
            }
            sender.send(Chunk::End).await.unwrap();
        };
        let (uploaded, ()) = tokio::join!(s3.upload(&key, receiver), send);
        assert_eq!(uploaded.unwrap(), size as u64);
        assert!(s3.get(&key).await.unwrap() == bytes, "{size} bytes did not read back whole");
        let head =
            sdk.head_object().bucket(&setup.bucket).key(format!("parts/{key}")).part_number(1).send().await.unwrap();
        assert_eq!(head.parts_count, Some(parts), "{size} bytes");
        assert_eq!(head.content_length, Some(size.min(PART) as i64), "{size} bytes: the first part");
    }
}

#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn an_rds_target_is_snapshotted_tagged_and_copied() {
    let setup = Setup::new().await;
    let sdk = setup.services.sdk_config().await;
    let rds = aws_sdk_rds::Client::new(&sdk);
    let instance = unique("orders").to_lowercase();
    rds.create_db_instance()
        .db_instance_identifier(&instance)
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .allocated_storage(20)
        .master_username("admin")
        .master_user_password("not-a-real-password-1")
        .send()
        .await
        .unwrap();
    let admin = crate::support::secret_file(setup.path(), "rds-admin", r#"{"username":"admin","password":"x"}"#);
    let vigil::secret::SecretRef::File { path } = admin else { unreachable!() };
    setup.write_schedule(&format!(
        "[targets.orders-rds]\nkind = \"rds\"\nengine = \"postgres\"\ninstance_id = \"{instance}\"\nhost = \"{instance}.rds.internal\"\n\
         admin = {{ file = \"{}\" }}\n\n[backups.orders-snap]\ntarget = \"orders-rds\"\nschedule = \"0 3 * * *\"\n\
         copy_to_region = \"eu-west-1\"\n",
        path.display()
    ));
    let report = setup.vigil(&["--output", "json", "backup", "run", "orders-snap"]);
    report.assert_code(0);
    let report = report.json();
    assert_eq!(report[0]["method"], "rds_snapshot");
    let id = report[0]["backup_id"].as_str().unwrap();
    let snapshot = setup.entry(id)["location"].as_str().unwrap().to_owned();
    let described = rds.describe_db_snapshots().db_snapshot_identifier(&snapshot).send().await.unwrap();
    let found = &described.db_snapshots()[0];
    assert_eq!(found.db_instance_identifier(), Some(instance.as_str()));
    let tags = rds.list_tags_for_resource().resource_name(found.db_snapshot_arn().unwrap()).send().await.unwrap();
    assert!(tags.tag_list().iter().any(|t| t.key() == Some("vigil:backup-id") && t.value() == Some(id)), "{tags:?}");
    let eu = aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::config::Builder::from(&sdk).region(aws_sdk_rds::config::Region::new("eu-west-1")).build(),
    );
    let copied = eu.describe_db_snapshots().db_snapshot_identifier(&snapshot).send().await.unwrap();
    assert_eq!(copied.db_snapshots().len(), 1, "no copy in eu-west-1");
    let kinds = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "backup.snapshot_copied"]).json();
    assert_eq!(kinds.as_array().unwrap().len(), 1);
}

/// What a running dump tool was given: `/proc/PID/environ` and `/proc/PID/cmdline`, read while
/// it is blocked on a full pipe.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn dump_tools_get_their_password_only_through_a_private_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let services = Services::load();
    for (engine, db) in [
        (
            vigil::engines::Engine::Postgres,
            Database { database: postgres_database(&services, 1).await, ..services.postgres.clone() },
        ),
        (
            vigil::engines::Engine::Mysql,
            Database { database: mariadb_database(&services).await, ..services.mariadb.clone() },
        ),
    ] {
        let scratch = tempfile::tempdir().unwrap();
        let admin = vigil::engines::Credential {
            username: db.user.clone(),
            password: secrecy::SecretString::from(db.password.clone()),
        };
        // The test's own environment (CARGO_*, VIGIL_SERVICES_FILE, …) must not reach the tool.
        let (dump, stdout) = vigil::engines::dump::start(engine, &db.endpoint(), &admin, scratch.path()).await.unwrap();
        let pid = dump.pid();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let vars: Vec<String> = environ
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        for (what, bytes) in [("environment", &environ), ("command line", &cmdline)] {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains(&db.password), "{engine:?}: the password is in the tool's {what}");
        }
        let allowed = ["PATH=", "LANG=", "LC_ALL=", "LC_CTYPE=", "TZ=", "PG"];
        assert!(vars.iter().all(|v| allowed.iter().any(|a| v.starts_with(a))), "{engine:?}: {vars:?}");
        assert!(!vars.iter().any(|v| v.starts_with("PGPASSWORD=") || v.starts_with("MYSQL_PWD=")), "{vars:?}");
        let files: Vec<std::path::PathBuf> =
            std::fs::read_dir(scratch.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1, "one password file while the tool runs: {files:?}");
        assert_eq!(std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777, 0o600);
        if engine == vigil::engines::Engine::Postgres {
            assert!(vars.contains(&format!("PGPASSFILE={}", files[0].display())), "{vars:?}");
            assert!(vars.iter().any(|v| v.starts_with("PGDATABASE=")), "the database is named by variable: {vars:?}");
            assert!(vars.contains(&"PGSSLMODE=verify-full".to_owned()), "{vars:?}");
        }
        let drained = tokio::task::spawn_blocking(move || {
            let mut stdout = stdout;
            std::io::copy(&mut stdout, &mut std::io::sink()).unwrap()
        })
        .await
        .unwrap();
        assert!(drained > 100_000, "{engine:?}: the dump was big enough to block on its pipe ({drained} bytes)");
        dump.finish().await.unwrap();
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "{engine:?}: the password file is gone");
    }
}

/// Backups through a target's `backup_credential` holding only the read grants
/// `docs/privileges.md` lists: written, verified, and the manifest's row counts the source's.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn backups_work_with_a_backup_credential_holding_only_the_documented_grants() {
    let setup = Setup::new().await;
    for engine in [vigil::engines::Engine::Postgres, vigil::engines::Engine::Mysql] {
        let (kind, server, database) = match engine {
            vigil::engines::Engine::Postgres => {
                ("postgres", &setup.services.postgres, postgres_database(&setup.services, 1).await)
            }
            vigil::engines::Engine::Mysql => {
                ("mysql", &setup.services.mariadb, mariadb_database(&setup.services).await)
            }
        };
        let reader = unique("reader").replace('-', "_");
        let password = format!("Reader-{}", unique("pw"));
        let grants = match engine {
            vigil::engines::Engine::Postgres => vec![
                format!("CREATE ROLE {reader} LOGIN PASSWORD '{password}'"),
                format!("GRANT pg_read_all_data TO {reader}"),
            ],
            vigil::engines::Engine::Mysql => vec![
                format!("CREATE USER '{reader}'@'%' IDENTIFIED BY '{password}'"),
                format!("GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT, PROCESS ON *.* TO '{reader}'@'%'"),
            ],
        };
        admin_sql(engine, server, &grants).await;
        let credential = crate::support::secret_file(
            setup.path(),
            &format!("reader-{kind}"),
            &serde_json::json!({ "username": reader, "password": password }).to_string(),
        );
        let vigil::secret::SecretRef::File { path } = credential else { unreachable!() };
        // The admin is broken on purpose: the backup must not need it.
        let target = setup
            .target(kind, server, &database)
            .replace("\n\n", &format!("\nbackup_credential = {{ file = \"{}\" }}\n\n", path.display()));
        let target = target.replacen(&format!("admin-{database}"), "no-such-admin-file", 1);
        let set = format!("least-{kind}");
        setup.write_schedule(&format!("{target}{}", setup.set(&set, &database, "local", "local")));
        let id = setup.backup(&set);
        let entry = setup.entry(&id);
        assert_eq!(entry["status"], "verified", "{engine:?}: {entry}");
        let listed = setup.vigil(&["--output", "json", "evidence", "list", "--kind", "backup.written"]).json();
        let written = listed.as_array().unwrap().iter().rev().find(|r| r["outcome"] == "succeeded").unwrap().clone();
        assert!(!written["details"].as_str().unwrap().contains(&password), "no password in evidence");
    }
}

/// A manifest names the key that wrapped its data key, but only the configured key service
/// unwraps: a backup wrapped by another KMS key or Transit key is refused, not opened with the
/// key its (writable) manifest names.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn only_the_configured_key_unwraps_a_data_key() {
    use vigil::kms::{self, KeyError, Settings};
    let setup = Setup::new().await;
    let other = Setup::new().await;
    let aws = setup.services.aws(setup.path());
    let vault = setup.services.vault(setup.path());
    for (theirs, ours) in [
        (Settings::AwsKms { key_id: other.kms_key.clone() }, Settings::AwsKms { key_id: setup.kms_key.clone() }),
        (
            Settings::VaultTransit { key: other.transit_key.clone() },
            Settings::VaultTransit { key: setup.transit_key.clone() },
        ),
    ] {
        let theirs = kms::connect(&theirs, Some(&aws), Some(&vault)).await.unwrap();
        let ours = kms::connect(&ours, Some(&aws), Some(&vault)).await.unwrap();
        let (_, wrapped) = theirs.generate("backup-1").await.unwrap();
        theirs.unwrap(&wrapped, "backup-1").await.expect("the wrapping key unwraps");
        let err = ours.unwrap(&wrapped, "backup-1").await.expect_err("another key's data key was unwrapped");
        assert!(matches!(err, KeyError::OtherKey { .. } | KeyError::Refused { .. }), "{err}");
    }
}

/// Every key service binds the backup id into the wrapping of its data key: a wrapped key
/// copied into another backup's manifest does not unwrap there. Transit data keys wrapped before
/// the binding (no `bound` in the manifest) still unwrap.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn a_data_key_unwraps_only_for_the_backup_it_was_made_for() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use vigil::kms::{self, Settings};
    let setup = Setup::new().await;
    let aws = setup.services.aws(setup.path());
    let vault = setup.services.vault(setup.path());
    for settings in [
        Settings::AwsKms { key_id: setup.kms_key.clone() },
        Settings::VaultTransit { key: setup.transit_key.clone() },
        Settings::Local { key_file: setup.path().join("local.key") },
    ] {
        let service = kms::connect(&settings, Some(&aws), Some(&vault)).await.unwrap();
        let (key, wrapped) = service.generate("backup-1").await.unwrap();
        let again = service.unwrap(&wrapped, "backup-1").await.expect("its own backup unwraps it");
        assert_eq!(again.expose(), key.expose());
        let err = service.unwrap(&wrapped, "backup-2").await.expect_err("another backup's id unwrapped it");
        assert!(!err.is_transient(), "{err}");
    }

    // A Transit data key from before the binding: made by `datakey/`, with no associated data.
    let transit = kms::connect(&Settings::VaultTransit { key: setup.transit_key.clone() }, Some(&aws), Some(&vault))
        .await
        .unwrap();
    let http = setup.services.openbao.http();
    let made: serde_json::Value = http
        .post(format!("{}/v1/transit/datakey/plaintext/{}", setup.services.openbao.address, setup.transit_key))
        .header("X-Vault-Token", &setup.services.openbao.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old = vigil::kms::WrappedKey {
        service: "vault_transit".into(),
        key_id: setup.transit_key.clone(),
        wrapped: made["data"]["ciphertext"].as_str().unwrap().to_owned(),
        bound: false,
    };
    let key = transit.unwrap(&old, "backup-1").await.expect("an unbound Transit data key still unwraps");
    assert_eq!(BASE64.encode(key.expose()), made["data"]["plaintext"].as_str().unwrap());
}

/// A PostgreSQL backup carries the cluster's globals (roles, memberships, role settings) as a
/// sealed object beside the dump, without a password or hash; `fetch --globals` writes them,
/// verification checks them, and a changed globals object fails it. A MariaDB backup has none,
/// and says so.
#[tokio::test]
#[ignore = "needs services: cargo xtask test"]
async fn postgres_backups_carry_the_cluster_globals_without_passwords() {
    use vigil::engines::Engine::Postgres;
    let setup = Setup::new().await;
    let database = postgres_database(&setup.services, 1).await;
    let (role, group) = (unique("globals_app").replace('-', "_"), unique("globals_rw").replace('-', "_"));
    admin_sql(
        Postgres,
        &setup.services.postgres,
        &[
            format!("CREATE ROLE {group}"),
            format!("CREATE ROLE {role} LOGIN PASSWORD 'globals-secret-pw' IN ROLE {group}"),
            format!("ALTER ROLE {role} SET statement_timeout = '5s'"),
        ],
    )
    .await;
    let maria = mariadb_database(&setup.services).await;
    let mut schedule = setup.target("postgres", &setup.services.postgres, &database);
    schedule.push_str(&setup.target("mysql", &setup.services.mariadb, &maria));
    schedule.push_str(&setup.set("pg", &database, "local", "local"));
    schedule.push_str(&setup.set("maria", &maria, "local", "local"));
    setup.write_schedule(&schedule);
    let id = setup.backup("pg");
    let manifest = setup.local_manifest("pg", &id);
    let globals = manifest["object"].as_str().unwrap().replace(".vbk", ".globals.vbk");
    assert!(globals.starts_with(&format!("pg/{id}.")), "{manifest}");
    assert_eq!(manifest["globals"]["object"], globals.as_str(), "{manifest}");

    let roles = setup.path().join("roles.sql");
    setup.vigil(&["backup", "fetch", &id, "--globals", "-o", roles.to_str().unwrap()]).assert_code(0);
    let sql = std::fs::read_to_string(&roles).unwrap();
    assert!(sql.contains(&format!("CREATE ROLE {role};")), "{sql}");
    assert!(sql.contains(&format!("GRANT {group} TO {role}")), "{sql}");
    assert!(sql.contains("statement_timeout"), "{sql}");
    assert!(!sql.contains("globals-secret-pw") && !sql.contains("SCRAM-SHA-256$"), "no password or hash: {sql}");

    // A changed globals object fails verification, naming the globals.
    let object = setup.path().join("backups").join(&globals);
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    let verify = setup.vigil(&["backup", "verify", &id]);
    verify.assert_code(1);
    assert!(verify.stderr().contains("globals:"), "{}", verify.stderr());

    let maria_id = setup.backup("maria");
    assert!(setup.local_manifest("maria", &maria_id).get("globals").is_none());
    let none = setup.vigil(&["backup", "fetch", &maria_id, "--globals", "-o", "x.sql"]);
    none.assert_code(1);
    assert!(none.stderr().contains("without globals"), "{}", none.stderr());
}
