//! The command line as people meet it: help with examples, one-line refusals, exit codes, and
//! completions.

use crate::support::{repo_root, vigil};

#[test]
fn a_report_period_that_makes_no_sense_is_refused_in_one_line() {
    let root = repo_root();
    for (from, to, why) in [
        ("2026-02-01", "2026-01-01", "--from must be before --to"),
        ("yesterday", "2026-01-01", "--from \"yesterday\" is neither an RFC 3339 time nor a YYYY-MM-DD date"),
    ] {
        let run = vigil(&root, &["report", "export", "--from", from, "--to", to, "--out", "unused"]);
        run.assert_code(1);
        let stderr = run.stderr();
        assert_eq!(stderr.lines().count(), 1, "one line, not {stderr:?}");
        assert!(stderr.contains(why), "{stderr}");
    }
    assert!(!root.join("unused").exists());
}

#[test]
fn help_explains_each_command_with_an_example() {
    let root = repo_root();
    let top = vigil(&root, &["--help"]);
    top.assert_code(0);
    for command in ["run", "rotate", "backup", "drill", "report", "evidence", "config", "status", "completions"] {
        assert!(top.stdout().contains(command), "--help lacks {command}");
        let help = vigil(&root, &[command, "--help"]);
        help.assert_code(0);
        assert!(help.stdout().contains("vigil "), "`vigil {command} --help` has no example:\n{}", help.stdout());
    }
}

#[test]
fn usage_errors_exit_2_with_a_reason() {
    let run = vigil(&repo_root(), &["rotate"]);
    run.assert_code(2);
    assert!(run.stderr().contains("required"), "{}", run.stderr());
}

#[test]
fn vigil_config_names_the_configuration() {
    let root = repo_root();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["config", "check"])
        .current_dir(&root)
        .env("VIGIL_CONFIG", root.join("deploy/vigil.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn completions_are_generated_for_bash() {
    let run = vigil(&repo_root(), &["completions", "bash"]);
    run.assert_code(0);
    assert!(run.stdout().contains("_vigil()"), "{}", run.stdout());
}

#[test]
fn json_logs_go_to_stderr_and_leave_stdout_parseable() {
    let root = repo_root();
    let run =
        vigil(&root, &["--log-format", "json", "-vv", "--output", "json", "config", "check", "deploy/vigil.toml"]);
    run.assert_code(0);
    run.json();
}
