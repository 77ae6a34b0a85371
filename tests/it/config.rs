//! `vigil config check`: malformed files are reported with file, line, column and field;
//! the shipped examples check clean; secrets written where they do not belong are never echoed.
//!
//! Each `tests/data/config/*.toml` case is checked beside a valid base configuration. Its
//! header says what must be reported:
//!
//! ```text
//! # expect: LINE:COLUMN [@FILE] FIELD: MESSAGE-START
//! # never-shows: TEXT
//! ```
//!
//! `schedule-*` cases are added to the base schedules; `controller-*` cases replace vigil.toml.

use std::path::{Path, PathBuf};

use crate::support::{repo_root, vigil};

struct Case {
    path: PathBuf,
    line: usize,
    column: usize,
    file: Option<String>,
    field: String,
    message: String,
    never_shows: Vec<String>,
}

fn parse_case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let expect = text
        .lines()
        .find_map(|line| line.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
    let (position, rest) = expect.split_once(' ').unwrap();
    let (line, column) = position.split_once(':').unwrap();
    let (file, rest) = match rest.strip_prefix('@') {
        Some(rest) => {
            let (file, rest) = rest.split_once(' ').unwrap();
            (Some(file.to_owned()), rest)
        }
        None => (None, rest),
    };
    let (field, message) = rest.split_once(": ").unwrap();
    Case {
        path: path.to_owned(),
        line: line.parse().unwrap(),
        column: column.parse().unwrap(),
        file,
        field: field.to_owned(),
        message: message.to_owned(),
        never_shows: text.lines().filter_map(|l| l.strip_prefix("# never-shows: ")).map(String::from).collect(),
    }
}

fn cases() -> Vec<Case> {
    let dir = repo_root().join("tests/data/config");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| parse_case(p)).collect()
}

/// A temp folder holding the base configuration with `case` put in place; returns the folder
/// and the file name errors in the case are reported against.
fn lay_out(case: &Case) -> (tempfile::TempDir, String) {
    let base = repo_root().join("tests/data/config/base");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    std::fs::copy(base.join("schedules/base.toml"), dir.path().join("schedules/base.toml")).unwrap();
    let name = case.path.file_name().unwrap().to_string_lossy().into_owned();
    let reported_in = if name.starts_with("controller-") {
        std::fs::copy(&case.path, dir.path().join("vigil.toml")).unwrap();
        "vigil.toml".to_owned()
    } else {
        std::fs::copy(base.join("vigil.toml"), dir.path().join("vigil.toml")).unwrap();
        std::fs::copy(&case.path, dir.path().join("schedules").join(&name)).unwrap();
        name
    };
    (dir, case.file.clone().unwrap_or(reported_in))
}

#[test]
fn the_base_configuration_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let base = repo_root().join("tests/data/config/base");
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    std::fs::copy(base.join("vigil.toml"), dir.path().join("vigil.toml")).unwrap();
    std::fs::copy(base.join("schedules/base.toml"), dir.path().join("schedules/base.toml")).unwrap();
    vigil(dir.path(), &["config", "check"]).assert_code(0);
}

#[test]
fn each_malformed_case_names_its_line_column_and_field() {
    let cases = cases();
    assert!(cases.len() >= 12, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let (dir, file) = lay_out(case);
        let run = vigil(dir.path(), &["--output", "json", "config", "check"]);
        run.assert_code(1);
        let report = run.json();
        assert_eq!(report["ok"], false);
        let errors: Vec<&serde_json::Value> =
            report["diagnostics"].as_array().unwrap().iter().filter(|d| d["severity"] == "error").collect();
        let found = errors.iter().any(|d| {
            d["file"].as_str().is_some_and(|f| f.ends_with(&format!("/{file}")))
                && d["line"] == case.line
                && d["column"] == case.column
                && d["field"] == case.field.as_str()
                && d["message"].as_str().is_some_and(|m| m.starts_with(&case.message))
        });
        if !found {
            failures.push(format!(
                "{}: expected {file}:{}:{} `{}`: {}\n  got {}",
                case.path.file_name().unwrap().to_string_lossy(),
                case.line,
                case.column,
                case.field,
                case.message,
                serde_json::to_string_pretty(&errors).unwrap()
            ));
        }
        let human = vigil(dir.path(), &["config", "check"]);
        human.assert_code(1);
        let heading = format!("{file}:{}:{}: error: ", case.line, case.column);
        if !human.stderr().contains(&heading) {
            failures.push(format!("{}: human output lacks `{heading}`:\n{}", case.path.display(), human.stderr()));
        }
        for secret in &case.never_shows {
            if run.all_output().contains(secret) || human.all_output().contains(secret) {
                failures.push(format!("{}: output shows `{secret}`", case.path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Shape errors (a bad type, a bad duration) in one item do not hide the problems of others.
#[test]
fn every_problem_is_reported_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    std::fs::copy(repo_root().join("tests/data/config/base/vigil.toml"), dir.path().join("vigil.toml")).unwrap();
    std::fs::write(
        dir.path().join("schedules/many.toml"),
        "[secrets.a]\nkind = \"postgres_password\"\nstore = \"vault_kv\"\npath = \"a\"\ntarget = \"nope\"\nusername = \"a\"\n\n\
         [secrets.b]\nkind = \"api_key\"\nstore = \"vault_kv\"\npath = \"b\"\ncadence = \"1m\"\nissuer = { url = \"https://i\", token = { env = \"X\" } }\n\n\
         [backups.c]\ntarget = \"nope\"\nschedule = \"not cron\"\nstore = \"local\"\npath = \"/backups\"\nkey_service = \"local\"\nkey_file = \"k\"\n\n\
         [targets.d]\nkind = \"postgres\"\nhost = \"db\"\nport = 70000\nadmin = { env = \"X\" }\n\n\
         [drills.e]\nbackup = \"c\"\nscratch = \"d\"\nrpo = \"15 minutes\"\n\n\
         [drills.f]\nbackup = \"c\"\nscratch = \"d\"\n",
    )
    .unwrap();
    let run = vigil(dir.path(), &["config", "check"]);
    run.assert_code(1);
    let stderr = run.stderr();
    for expected in [
        "many.toml:5:10: error: secrets.a.target: no target named `nope`",
        "many.toml:12:11: error: secrets.b.cadence: cadence 1m is shorter than the minimum of 1h",
        "many.toml:16:10: error: backups.c.target: no target named `nope`",
        "many.toml:17:12: error: backups.c.schedule:",
        "many.toml:26:8: error: targets.d.port: invalid value: integer `70000`, expected u16",
        "many.toml:32:7: error: drills.e.rpo: `15 minutes` is not a duration",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
    // drills.f names target d, which exists but was refused: no second error for it.
    assert!(!stderr.contains("drills.f"), "{stderr}");
    assert!(stderr.contains("has 6 errors"), "{stderr}");
}

#[test]
fn a_missing_configuration_file_says_how_to_name_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = vigil(dir.path(), &["config", "check"]);
    run.assert_code(1);
    assert!(run.stderr().contains("vigil.toml: error: cannot read the configuration file"), "{}", run.stderr());
    assert!(run.stderr().contains("--config PATH or VIGIL_CONFIG"), "{}", run.stderr());
}

#[test]
fn the_shipped_example_configuration_checks_clean() {
    let root = repo_root();
    let run = vigil(&root, &["--output", "json", "config", "check", "deploy/vigil.toml"]);
    run.assert_code(0);
    let report = run.json();
    let errors = report["diagnostics"].as_array().unwrap().iter().filter(|d| d["severity"] == "error").count();
    assert_eq!(errors, 0, "{report:#}");
    let plan = &report["plan"];
    assert!(plan["schedule_files"].as_array().unwrap().len() >= 2);
    for kind in ["postgres_password", "mysql_password", "api_key", "jwt_signing_key"] {
        assert!(
            plan["secrets"].as_object().unwrap().values().any(|s| s["kind"] == kind),
            "the examples should show a {kind} secret"
        );
    }
    assert!(!plan["backups"].as_object().unwrap().is_empty());
    assert!(
        plan["backups"].as_object().unwrap().values().any(|b| b["method"]["method"] == "pgbackrest"),
        "the examples should show a pgbackrest set"
    );
    assert!(!plan["drills"].as_object().unwrap().is_empty());
}

#[test]
fn the_plan_shows_default_cadences_and_next_due_times() {
    let root = repo_root();
    let run = vigil(&root, &["config", "check", "deploy/vigil.toml"]);
    run.assert_code(0);
    let stdout = run.stdout();
    for expected in ["30d (default)", "7d (default)", "no rotation recorded"] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
    let json = vigil(&root, &["--output", "json", "config", "check", "deploy/vigil.toml"]).json();
    let drills = json["drills_due"].as_array().unwrap();
    assert!(drills.iter().all(|d| d["next"].is_string() || d["note"] == "on demand"), "{drills:?}");
    let jwt = json["plan"]["secrets"].as_object().unwrap().values().find(|s| s["kind"] == "jwt_signing_key").unwrap();
    assert_eq!(jwt["cadence"], "7d");
}

/// TLS is verify-full unless written otherwise, and `disable` to another machine is warned
/// about: the password would cross the network in the clear.
#[test]
fn disabled_tls_to_another_host_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    std::fs::copy(repo_root().join("tests/data/config/base/vigil.toml"), dir.path().join("vigil.toml")).unwrap();
    std::fs::write(
        dir.path().join("schedules/tls.toml"),
        "[targets.remote]\nkind = \"postgres\"\nhost = \"db.internal\"\nadmin = { env = \"X\" }\ntls = { mode = \"disable\" }\n\n\
         [targets.local]\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nadmin = { env = \"X\" }\ntls = { mode = \"disable\" }\n\n\
         [targets.default]\nkind = \"mysql\"\nhost = \"db.internal\"\nadmin = { env = \"X\" }\n",
    )
    .unwrap();
    let run = vigil(dir.path(), &["--output", "json", "config", "check"]);
    run.assert_code(0);
    let report = run.json();
    let tls_warnings: Vec<&serde_json::Value> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["field"].as_str().is_some_and(|f| f.ends_with(".tls.mode")))
        .collect();
    assert_eq!(tls_warnings.len(), 1, "{tls_warnings:?}");
    assert_eq!(tls_warnings[0]["field"], "targets.remote.tls.mode");
    assert_eq!(tls_warnings[0]["severity"], "warning");
    assert!(tls_warnings[0]["message"].as_str().unwrap().contains("TLS is disabled to db.internal"));
    let targets = &report["plan"]["targets"];
    assert_eq!(targets["default"]["tls"]["mode"], "verify-full", "{targets}");
    assert_eq!(targets["local"]["tls"]["mode"], "disable", "{targets}");
}

/// A daemon listening beyond loopback is warned about: `/status` names every secret and what
/// fails, so the warning says to set `status_token` (and says less once it is set). A status
/// token kept in a secret store is refused: it is read at each request.
#[test]
fn a_daemon_listening_beyond_loopback_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    let base = std::fs::read_to_string(repo_root().join("tests/data/config/base/vigil.toml")).unwrap();
    let listen = |daemon: &str| {
        std::fs::write(dir.path().join("vigil.toml"), format!("{base}\n[daemon]\nlisten = \"0.0.0.0:9746\"\n{daemon}"))
            .unwrap();
        let run = vigil(dir.path(), &["--output", "json", "config", "check"]);
        let report = run.json();
        let found: Vec<serde_json::Value> = report["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["field"].as_str().is_some_and(|f| f.starts_with("daemon.")))
            .cloned()
            .collect();
        (run.code(), found)
    };
    let (code, found) = listen("");
    assert_eq!(code, 0, "{found:?}");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0]["field"].as_str(), found[0]["severity"].as_str()), (Some("daemon.listen"), Some("warning")));
    assert!(found[0]["message"].as_str().unwrap().contains("set status_token"), "{found:?}");
    crate::support::secret_file(dir.path(), "token", "t0ken");
    let (code, found) = listen("status_token = { file = \"token\" }\n");
    assert_eq!(code, 0, "{found:?}");
    assert!(found[0]["message"].as_str().unwrap().contains("asks for the status token"), "{found:?}");
    let (code, found) = listen("status_token = { store = \"vault_kv\", path = \"vigil/status\", key = \"token\" }\n");
    assert_eq!(code, 1, "{found:?}");
    assert!(found.iter().any(|d| d["field"] == "daemon.status_token" && d["severity"] == "error"), "{found:?}");
}

/// A token goes to Vault and the API-key issuer over https, unless the host is this machine or
/// `allow_insecure_http = true` (warned about) says otherwise.
#[test]
fn plain_http_to_another_machine_needs_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    std::fs::copy(repo_root().join("tests/data/config/base/vigil.toml"), dir.path().join("vigil.toml")).unwrap();
    std::fs::write(
        dir.path().join("schedules/keys.toml"),
        "[secrets.local-key]\nkind = \"api_key\"\nstore = \"vault_kv\"\npath = \"a\"\nissuer = { url = \"http://127.0.0.1:8080\", token = { env = \"X\" } }\n\n\
         [secrets.remote-key]\nkind = \"api_key\"\nstore = \"vault_kv\"\npath = \"b\"\n\
         issuer = { url = \"http://keys.internal\", token = { env = \"X\" }, allow_insecure_http = true }\n",
    )
    .unwrap();
    let run = vigil(dir.path(), &["--output", "json", "config", "check"]);
    run.assert_code(0);
    let warnings: Vec<String> = run.json()["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["field"].as_str().is_some_and(|f| f.ends_with("allow_insecure_http")))
        .map(|d| format!("{} {}", d["field"], d["message"]))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("secrets.remote-key.issuer.allow_insecure_http"), "{warnings:?}");
}

/// VAULT_SKIP_VERIFY is honoured, as every Vault client honours it, and announced at WARN.
#[test]
fn vault_skip_verify_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    let base = std::fs::read_to_string(repo_root().join("tests/data/config/base/vigil.toml")).unwrap();
    std::fs::write(dir.path().join("vigil.toml"), base.replace("http://127.0.0.1:2", "https://127.0.0.1:2")).unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    std::fs::write(
        dir.path().join("schedules/s.toml"),
        "[secrets.k]\nkind = \"api_key\"\nstore = \"vault_kv\"\npath = \"a\"\nissuer = { url = \"http://127.0.0.1:9\", token = { env = \"X\" } }\n",
    )
    .unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["rotate", "k"])
        .current_dir(dir.path())
        .env("VIGIL_TEST_VAULT_TOKEN", "t")
        .env("VAULT_SKIP_VERIFY", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "nothing listens there: {stderr}");
    assert!(stderr.contains("VAULT_SKIP_VERIFY is set"), "{stderr}");
    assert!(stderr.contains("WARN"), "{stderr}");
}
