//! Logs: human-readable or JSON lines on standard error, filtered by level.
//!
//! Standard output is kept for command results, so that `--output json` stays parseable
//! while logs are on.

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event, for log collectors.
    Json,
}

/// Installs the global subscriber.
///
/// `verbosity` counts `-v` minus `-q` from the default `info`: `-v` debug, `-vv` trace,
/// `-q` warn, `-qq` error. `RUST_LOG`, when set, wins over both.
pub fn init(format: LogFormat, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-3 => "off",
        -2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // vaultrs and rustify log every non-2xx answer at ERROR, including the 404s vigil expects
    // when it asks whether a value is staged; vigil reports the failures that matter itself.
    // sqlx logs each PostgreSQL NOTICE at INFO ("database … does not exist, skipping", from the
    // `IF EXISTS` vigil writes on purpose): only the server's warnings and errors are shown.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},vaultrs=off,rustify=off,sqlx::postgres::notice=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests that run the CLI in-process) keeps the first subscriber.
    let _ = match format {
        // Colours for a person at a terminal only: a log file or journald gets plain text.
        LogFormat::Human => {
            use std::io::IsTerminal as _;
            builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).try_init()
        }
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
