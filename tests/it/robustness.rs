//! Bad input never panics: generated malformed durations, cron lines, configurations, backup
//! objects and evidence data fed to the parsers and verifiers (10,000 of each kind, 2,000
//! configuration files), each answered with an error that says what is wrong.
//!
//! Inputs come from a seeded generator (`VIGIL_FUZZ_SEED` replays a run) that mutates valid
//! seeds and splices in the tokens each parser cares about, so most cases get past the first
//! check instead of failing on the first byte.

use std::path::Path;

use vigil::backup::format::DataKey;
use vigil::schedule::{CronSchedule, Duration};

/// xorshift64*: small, seedable, good enough to pick bytes.
struct Gen(u64);

impl Gen {
    fn new(salt: u64) -> Self {
        let seed = std::env::var("VIGIL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1234_abcd_0001);
        Self((seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// `seed` with a few edits: a byte changed, a span cut, a token spliced in, a span doubled.
    fn mutate(&mut self, seed: &str, tokens: &[&str]) -> String {
        let mut text = seed.as_bytes().to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(text.len() + 1);
            match self.below(4) {
                0 if !text.is_empty() => {
                    let i = at.min(text.len() - 1);
                    text[i] = (self.next() & 0x7f) as u8;
                }
                1 if !text.is_empty() => {
                    let end = (at + 1 + self.below(12)).min(text.len());
                    text.drain(at.min(end)..end);
                }
                2 => {
                    let token = self.pick(tokens).as_bytes().to_vec();
                    text.splice(at..at, token);
                }
                _ => {
                    let end = (at + self.below(16)).min(text.len());
                    let copy = text[at.min(end)..end].to_vec();
                    text.splice(at..at, copy);
                }
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

const CASES: usize = 10_000;

#[test]
fn generated_durations_parse_or_say_why() {
    let mut generator = Gen::new(1);
    let seeds = ["30d", "1h30m", "15m", "2w", "45s", "36525d"];
    let tokens = ["9", "0", "99999999999999999999", "9300000000000000", "w", "d", "h", "m", "s", " ", "x", "-", "."];
    for _ in 0..CASES {
        let seed = generator.pick(&seeds);
        let text = generator.mutate(seed, &tokens);
        match text.parse::<Duration>() {
            Ok(duration) => {
                // Whatever parses can be used in date arithmetic.
                let now = chrono::Utc::now();
                let standing = vigil::schedule::standing(duration, Some(now), false, now);
                let _ = (standing.is_due(), standing.overdue_days(), duration.to_string());
            }
            Err(err) => assert!(!err.to_string().is_empty(), "{text:?}"),
        }
    }
}

#[test]
fn generated_cron_lines_parse_or_say_why() {
    let mut generator = Gen::new(2);
    let seeds = ["0 2 * * *", "*/15 * * * *", "0 0 3 * * MON-FRI", "30 4 1,15 * *", "0 0 29 2 *"];
    let tokens = ["*", "/", "-", ",", " ", "99", "0", "L", "W", "#", "MON", "JAN", "?", "60", "4294967296"];
    let now = chrono::Utc::now();
    for _ in 0..CASES {
        let seed = generator.pick(&seeds);
        let text = generator.mutate(seed, &tokens);
        match CronSchedule::parse(&text) {
            Ok(schedule) => {
                let _ = schedule.next_after(now);
            }
            Err(err) => assert!(!err.to_string().is_empty(), "{text:?}"),
        }
    }
}

/// The configuration loader, on mutations of the shipped base configuration: every refusal
/// names a file, a line and a column.
#[test]
fn generated_configurations_load_or_name_where_they_are_wrong() {
    let root = crate::support::repo_root().join("tests/data/config/base");
    let controller = std::fs::read_to_string(root.join("vigil.toml")).unwrap();
    let schedule = std::fs::read_to_string(root.join("schedules/base.toml")).unwrap();
    let tokens = [
        "=",
        "\"",
        "[",
        "]",
        "{",
        "}",
        ",",
        "\n",
        "#",
        "'",
        "kind",
        "target",
        "store",
        "cadence",
        "\"30d\"",
        "\"x\"",
        "tls = { mode = \"disable\" }",
        "port = 70000",
        "[targets.x]",
        "[secrets.",
        "strategy",
        "\"alternating_users\"",
        "schedule = \"61 * * * *\"",
        "rpo",
        "0",
        "-1",
        "1e400",
        "true",
        "\u{0}",
        "é",
    ];
    let mut generator = Gen::new(3);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    for case in 0..2_000 {
        let (controller, schedule) = if case % 4 == 0 {
            (generator.mutate(&controller, &tokens), schedule.clone())
        } else {
            (controller.clone(), generator.mutate(&schedule, &tokens))
        };
        std::fs::write(dir.path().join("vigil.toml"), &controller).unwrap();
        std::fs::write(dir.path().join("schedules/base.toml"), &schedule).unwrap();
        if let Err(diagnostics) = vigil::config::load(&dir.path().join("vigil.toml")) {
            assert!(!diagnostics.is_empty(), "a refusal with no reason:\n{schedule}");
            for diagnostic in diagnostics {
                assert!(
                    diagnostic.location.line.is_some_and(|(line, column)| line >= 1 && column >= 1),
                    "{diagnostic}"
                );
                assert!(!diagnostic.message.is_empty(), "{diagnostic}");
                assert!(Path::new(&diagnostic.location.file).is_absolute(), "{diagnostic}");
            }
        }
    }
}

/// The backup object reader, on mutations of a real sealed object: every change is an error
/// (authentication, format or key check), never a panic, and never a dump written as good.
#[test]
fn generated_backup_objects_are_refused_without_panicking() {
    let key = DataKey::generate();
    let plain: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
    let object = seal(&plain, &key);
    let mut generator = Gen::new(4);
    for case in 0..CASES {
        let mut bad = object.clone();
        match case % 4 {
            0 => {
                let at = generator.below(bad.len());
                bad[at] ^= 1 << generator.below(8);
            }
            1 => bad.truncate(generator.below(bad.len())),
            2 => {
                let at = generator.below(bad.len());
                let extra: Vec<u8> = (0..1 + generator.below(64)).map(|_| generator.next() as u8).collect();
                bad.splice(at..at, extra);
            }
            _ => bad = (0..generator.below(4096)).map(|_| generator.next() as u8).collect(),
        }
        if bad == object {
            continue;
        }
        let result = vigil::backup::pipeline::open(&bad[..], &key, "fuzz", std::io::sink());
        let err = result.expect_err("a changed object was accepted");
        assert!(!err.to_string().is_empty());
    }
}

/// A sealed object of `plain`, made by the same pipeline backups use.
fn seal(plain: &[u8], key: &DataKey) -> Vec<u8> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(vigil::backup::pipeline::CHUNKS_QUEUED);
    let plain = plain.to_vec();
    let key_bytes = *key.expose();
    let writer = std::thread::spawn(move || {
        let key = DataKey::from_bytes(&key_bytes).unwrap();
        vigil::backup::pipeline::seal(std::io::Cursor::new(plain), &key, "fuzz", 64 * 1024, sender, &|_| {}).unwrap()
    });
    let mut object = Vec::new();
    while let Some(vigil::objects::Chunk::Data(bytes)) = receiver.blocking_recv() {
        object.extend_from_slice(&bytes);
    }
    writer.join().unwrap();
    object
}

/// Evidence data as a database writer could leave it: tree frontiers, verifier keys, signed
/// notes and checkpoint bodies, each parsed or refused with a reason.
#[test]
fn generated_evidence_data_is_refused_without_panicking() {
    use vigil::evidence::{Checkpoint, LedgerKey, NoteVerifier, merkle::Frontier};
    let key = LedgerKey::generate("vigil/fuzz");
    let vkey = key.verifier().vkey();
    let body = Checkpoint { origin: "vigil/fuzz".into(), size: 40, root: [7; 32] }.body();
    let note = key.sign_note(&body);
    let trusted = [key.verifier()];
    let tokens = ["\n", "+", "—", " ", "vigil/fuzz", "AAAA", "=", "\u{2014} vigil/fuzz ", "18446744073709551615"];
    let mut generator = Gen::new(5);
    for case in 0..CASES {
        let frontier: Vec<u8> = (0..generator.below(80)).map(|_| generator.next() as u8).collect();
        if let Some(frontier) = Frontier::from_bytes(&frontier) {
            let _ = (frontier.size(), frontier.root());
        }
        let _ = NoteVerifier::parse(&generator.mutate(&vkey, &tokens)).map_err(|e| assert!(!e.to_string().is_empty()));
        let _ =
            Checkpoint::parse_body(&generator.mutate(&body, &tokens)).map_err(|e| assert!(!e.to_string().is_empty()));
        let mutated = generator.mutate(&note, &tokens);
        if mutated != note {
            // A changed note verifies only if the change left the signed text and signature
            // intact (a changed byte in a part the format ignores): then it says the same.
            if let Ok((text, _)) = vigil::evidence::note::open(&mutated, &trusted) {
                assert_eq!(text, body, "case {case}: a changed note verified with other text");
            }
        }
    }
}
