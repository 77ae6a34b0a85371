//! Repository hygiene, enforced by `cargo test`: the architecture map lists every module, the
//! modules keep to its layer map (no cycles, no edge it forbids), service tests carry the one
//! ignore reason, and nothing points at the machine's own trust-auth database servers.

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

/// The vendored sqlx-core (vendor/README.md) is what the build uses, and only while the locked
/// sqlx is the release it patches: a newer sqlx means the fix has shipped and the copy should go.
#[test]
fn sqlx_core_patch_is_still_needed() {
    let root = project_root();
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let package = |name: &str| {
        lock.split("[[package]]")
            .find(|block| block.lines().any(|line| line == format!("name = \"{name}\"")))
            .unwrap_or_else(|| panic!("Cargo.lock has no {name}"))
            .to_owned()
    };
    let (sqlx, core) = (package("sqlx"), package("sqlx-core"));
    assert!(
        sqlx.contains("version = \"0.9.0\""),
        "sqlx is past 0.9.0: its sqlx-core sets TCP_NODELAY again, so remove vendor/sqlx-core and the [patch.crates-io] line"
    );
    assert!(
        !core.contains("source = "),
        "sqlx-core 0.9.0 comes from the registry: without vendor/sqlx-core every new database connection waits ~40 ms twice (vendor/README.md)"
    );
}

/// One `crate::module` reference in `src/`: which top-level module uses which, and where.
#[derive(Debug, Clone)]
struct Edge {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
}

/// The top-level module a file under `src/` belongs to (`src/backup/store.rs` → `backup`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    let name = name.strip_suffix(".rs").unwrap_or(name);
    (name != "main" && name != "lib").then(|| name.to_owned())
}

/// `text` with comments blanked out (kept the same length, so line numbers stay true). String
/// literals are left alone: a path inside one is rare and harmless to count.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let (mut line_comment, mut block_depth) = (false, 0usize);
    while let Some(c) = chars.next() {
        if line_comment {
            if c == '\n' {
                line_comment = false;
                out.push('\n');
            } else {
                out.push(' ');
            }
        } else if block_depth > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                block_depth -= 1;
                out.push_str("  ");
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                block_depth += 1;
                out.push_str("  ");
            } else {
                out.push(if c == '\n' { '\n' } else { ' ' });
            }
        } else if c == '/' && chars.peek() == Some(&'/') {
            line_comment = true;
            out.push(' ');
        } else if c == '/' && chars.peek() == Some(&'*') {
            chars.next();
            block_depth = 1;
            out.push_str("  ");
        } else {
            out.push(c);
        }
    }
    out
}

/// Every top-level module `text` names through `crate::` (or `$crate::` in macros), with the
/// line of each: `crate::a::b`, and each branch of `crate::{a, b::c}`.
fn crate_references(text: &str) -> Vec<(String, usize)> {
    let code = without_comments(text);
    let bytes = code.as_bytes();
    let line_at = |pos: usize| code[..pos].matches('\n').count() + 1;
    let ident_at = |mut pos: usize| {
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let start = pos;
        while pos < bytes.len() && (bytes[pos].is_ascii_alphanumeric() || bytes[pos] == b'_') {
            pos += 1;
        }
        (code[start..pos].to_owned(), pos)
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let preceded = code[..at].chars().next_back();
        if preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let after = at + "crate::".len();
        if bytes.get(after) == Some(&b'{') {
            // Top-level branches of the group: after `{` and after each `,` at depth one.
            let (mut depth, mut pos, mut expect) = (0usize, after, true);
            while pos < bytes.len() {
                match bytes[pos] {
                    b'{' => {
                        depth += 1;
                        if depth == 1 {
                            expect = true;
                        }
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => expect = true,
                    c if c.is_ascii_whitespace() => {}
                    _ if expect && depth == 1 => {
                        let (name, _) = ident_at(pos);
                        if !name.is_empty() && name != "self" {
                            found.push((name, line_at(pos)));
                        }
                        expect = false;
                    }
                    _ => {}
                }
                pos += 1;
            }
        } else {
            let (name, _) = ident_at(after);
            if !name.is_empty() {
                found.push((name, line_at(at)));
            }
        }
    }
    found
}

/// Every edge between two different top-level modules of `src/`.
fn module_edges(src: &Path) -> Vec<Edge> {
    let mut edges = Vec::new();
    let mut files = rust_files(src);
    files.sort();
    for file in files {
        let Some(from) = top_module(src, &file) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        for (to, line) in crate_references(&text) {
            if to != from {
                edges.push(Edge { from: from.clone(), to, file: file.clone(), line });
            }
        }
    }
    edges
}

/// The layer map in ARCHITECTURE.md: the fenced block after the `<!-- layer map -->` marker,
/// one `module -> used, used, …` line per module (`-> nothing` for a leaf).
fn layer_map(architecture: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let block = architecture
        .split_once("<!-- layer map -->")
        .and_then(|(_, rest)| rest.split_once("```"))
        .and_then(|(_, rest)| rest.split_once('\n'))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("ARCHITECTURE.md has a fenced block after <!-- layer map -->");
    let mut map = std::collections::BTreeMap::new();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (module, uses) = line.split_once("->").unwrap_or_else(|| panic!("layer map line without ->: {line}"));
        let uses = uses.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty() && u != "nothing").collect();
        map.insert(module.trim().to_owned(), uses);
    }
    map
}

/// A cycle among `edges`' modules, as the modules along it, if there is one.
fn find_cycle(edges: &[Edge]) -> Option<Vec<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for edge in edges {
        graph.entry(&edge.from).or_default().insert(&edge.to);
    }
    // Depth-first search with the path on a stack; a grey node met again closes a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        done: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut done, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// What is wrong with `edges` against `map`: each forbidden edge with its file and line, each
/// module the map does not list, and a cycle if there is one.
fn layer_violations(edges: &[Edge], map: &std::collections::BTreeMap<String, Vec<String>>, root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut unmapped = std::collections::BTreeSet::new();
    for edge in edges {
        match map.get(&edge.from) {
            None => {
                unmapped.insert(edge.from.clone());
            }
            Some(allowed) if !allowed.contains(&edge.to) => problems.push(format!(
                "{}:{}: `{}` uses `crate::{}`, which the layer map in ARCHITECTURE.md does not allow ({} -> {})",
                edge.file.strip_prefix(root).unwrap_or(&edge.file).display(),
                edge.line,
                edge.from,
                edge.to,
                edge.from,
                if allowed.is_empty() { "nothing".to_owned() } else { allowed.join(", ") },
            )),
            Some(_) => {}
        }
    }
    for module in unmapped {
        problems.push(format!("src/{module}: not in the layer map in ARCHITECTURE.md; add a `{module} -> …` line"));
    }
    if let Some(cycle) = find_cycle(edges) {
        let first = edges.iter().find(|e| e.from == cycle[0] && e.to == cycle[1]).expect("the cycle's first edge");
        problems.push(format!(
            "import cycle between top-level modules: {} (first edge at {}:{})",
            cycle.join(" -> "),
            first.file.strip_prefix(root).unwrap_or(&first.file).display(),
            first.line,
        ));
    }
    problems
}

#[test]
fn modules_keep_to_the_layer_map() {
    let root = project_root();
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let edges = module_edges(&root.join("src"));
    let problems = layer_violations(&edges, &layer_map(&architecture), &root);
    let mut graph = std::collections::BTreeMap::<&str, std::collections::BTreeSet<&str>>::new();
    for edge in &edges {
        graph.entry(&edge.from).or_default().insert(&edge.to);
    }
    let graph: Vec<String> = graph
        .iter()
        .map(|(from, to)| format!("{from} -> {}", to.iter().copied().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(
        problems.is_empty(),
        "the modules break the layer map:\n{}\n\nthe modules use, today:\n{}",
        problems.join("\n"),
        graph.join("\n")
    );
}

#[test]
fn the_layer_check_reads_grouped_and_macro_paths_and_finds_cycles() {
    let text = "use crate::{a, b::{c, d}, self};\n// crate::commented\nfn f() { $crate::e::g(); other_crate::x(); }\n";
    let names: Vec<String> = crate_references(text).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b", "e"]);
    let edge =
        |from: &str, to: &str| Edge { from: from.into(), to: to.into(), file: PathBuf::from("src/x.rs"), line: 1 };
    assert_eq!(find_cycle(&[edge("a", "b"), edge("b", "c")]), None);
    assert_eq!(find_cycle(&[edge("a", "b"), edge("b", "c"), edge("c", "a")]).unwrap(), ["a", "b", "c", "a"]);
    let map = layer_map("<!-- layer map -->\n```text\na -> b\nb -> nothing\n```\n");
    let problems = layer_violations(&[edge("a", "b"), edge("b", "a")], &map, Path::new(""));
    assert!(problems[0].starts_with("src/x.rs:1: `b` uses `crate::a`"), "{problems:?}");
    assert!(problems[1].starts_with("import cycle between top-level modules: a -> b -> a"), "{problems:?}");
}
