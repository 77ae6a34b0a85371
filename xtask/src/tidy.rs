//! Repository hygiene, enforced by `cargo test`: the architecture map lists every module,
//! service tests carry the one ignore reason, and nothing points at the machine's own
//! trust-auth database servers.

use std::path::{Path, PathBuf};

use crate::project_root;

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn architecture_maps_every_module() {
    let root = project_root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("src")).unwrap().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "main.rs" || name == "lib.rs" {
            continue;
        }
        let shown = if entry.path().is_dir() { format!("`src/{name}/`") } else { format!("`src/{name}`") };
        if !map.contains(&shown) {
            missing.push(shown);
        }
    }
    assert!(missing.is_empty(), "ARCHITECTURE.md's code map does not mention {missing:?}");
}

#[test]
fn service_tests_are_ignored_with_the_one_reason() {
    let root = project_root();
    let mut wrong = Vec::new();
    for file in rust_files(&root.join("tests")).into_iter().chain(rust_files(&root.join("src"))) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[ignore")
                && line.trim() != "#[ignore = \"needs services: cargo xtask test\"]"
            {
                wrong.push(format!("{}:{}", file.display(), n + 1));
            }
        }
    }
    assert!(wrong.is_empty(), "ignored tests must say #[ignore = \"needs services: cargo xtask test\"]: {wrong:?}");
}

#[test]
fn nothing_names_the_standard_database_ports() {
    let root = project_root();
    let mut found = Vec::new();
    for file in ["src", "tests", "xtask"].iter().flat_map(|dir| rust_files(&root.join(dir))) {
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in [concat!("127.0.0.1", ":5432"), concat!("localhost", ":5432"), concat!(":33", "06")] {
            if text.contains(needle) {
                found.push(format!("{} names {needle}", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "tests use the private servers from cargo xtask services: {found:?}");
}

#[test]
fn readme_shows_the_two_commands_and_ci_runs_the_test_one() {
    let root = project_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("cargo xtask demo") && readme.contains("cargo xtask test"));
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(ci.contains("cargo xtask test"), ".ci/run must run the README's test command");
}
