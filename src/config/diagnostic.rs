//! Configuration errors that point at the file, line, column and field they are about.
//!
//! A diagnostic never quotes the source line: a misplaced secret on that line would be shown
//! to the terminal and to every log that captures it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A configuration or schedule file's text, kept to turn byte spans into line and column.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
}

impl Source {
    /// The location of the byte span's start.
    pub(crate) fn locate(&self, span: &Range<usize>) -> Location {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { file: self.path.clone(), line: Some((line, column)) }
    }

    /// The location of the file as a whole.
    pub(crate) fn whole(&self) -> Location {
        Location::file(&self.path)
    }
}

/// A place in a file: `file:line:column`, or the file alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// Line and column, both counted from 1; `None` for a problem with the file as a whole.
    pub line: Option<(usize, usize)>,
}

impl Serialize for Location {
    /// As shown to people, `file:line:column`: a plan's JSON names where each item came from.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Location {
    /// The file as a whole.
    pub fn file(path: &Path) -> Self {
        Self { file: path.to_owned(), line: None }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some((line, column)) => write!(f, "{}:{line}:{column}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// Whether a diagnostic stops the configuration from loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The configuration is refused.
    Error,
    /// The configuration loads, but something will fail or surprise later.
    Warning,
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where the problem is.
    pub location: Location,
    /// The dotted field path, e.g. `targets.orders-pg.port`; empty for file-level problems.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it, when there is more to say than the message.
    pub help: Option<String>,
    /// Other places involved, e.g. the first definition of a duplicate.
    pub related: Vec<(Location, String)>,
    /// Planning advice rather than a hazard (a backup schedule that cannot meet a drill's RPO):
    /// `vigil config check` shows it, other commands load without repeating it.
    pub advice: bool,
}

impl Diagnostic {
    /// An error at `location` about `field`.
    pub(crate) fn error(location: Location, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            location,
            field: field.into(),
            message: message.into(),
            help: None,
            related: Vec::new(),
            advice: false,
        }
    }

    /// A warning at `location` about `field`.
    pub(crate) fn warning(location: Location, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, ..Self::error(location, field, message) }
    }

    /// Adds advice on what to do.
    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Marks a warning as planning advice, shown by `vigil config check` alone.
    pub(crate) fn advisory(mut self) -> Self {
        self.advice = true;
        self
    }

    /// Adds another place involved in the problem.
    pub(crate) fn with_related(mut self, location: Location, label: impl Into<String>) -> Self {
        self.related.push((location, label.into()));
        self
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:col: error: field: message`, then indented `help:` and `note:` lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {severity}: ", self.location)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        for (location, label) in &self.related {
            write!(f, "\n    note: {location}: {label}")?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n    help: {help}")?;
        }
        Ok(())
    }
}

impl Serialize for Diagnostic {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Place<'a> {
            file: &'a Path,
            line: Option<usize>,
            column: Option<usize>,
            #[serde(skip_serializing_if = "Option::is_none")]
            label: Option<&'a str>,
        }
        fn place<'a>(location: &'a Location, label: Option<&'a str>) -> Place<'a> {
            Place {
                file: &location.file,
                line: location.line.map(|(line, _)| line),
                column: location.line.map(|(_, column)| column),
                label,
            }
        }
        #[derive(Serialize)]
        struct Shown<'a> {
            severity: Severity,
            #[serde(flatten)]
            place: Place<'a>,
            field: &'a str,
            message: &'a str,
            help: Option<&'a str>,
            related: Vec<Place<'a>>,
        }
        Shown {
            severity: self.severity,
            place: place(&self.location, None),
            field: &self.field,
            message: &self.message,
            help: self.help.as_deref(),
            related: self.related.iter().map(|(l, label)| place(l, Some(label))).collect(),
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_become_lines_and_columns() {
        let source = Source { path: "a.toml".into(), text: "x = 1\n[t]\n  héllo = 2\n".into() };
        assert_eq!(source.locate(&(0..1)).to_string(), "a.toml:1:1");
        assert_eq!(source.locate(&(6..9)).to_string(), "a.toml:2:1");
        let at = source.text.find("= 2").unwrap();
        assert_eq!(source.locate(&(at..at + 1)).to_string(), "a.toml:3:9");
    }

    #[test]
    fn shows_field_help_and_related_places() {
        let d = Diagnostic::error(
            Location { file: "s.toml".into(), line: Some((4, 7)) },
            "secrets.app.target",
            "no target `db`",
        )
        .with_related(Location { file: "t.toml".into(), line: Some((1, 1)) }, "targets are defined here")
        .with_help("define it");
        assert_eq!(
            d.to_string(),
            "s.toml:4:7: error: secrets.app.target: no target `db`\n    note: t.toml:1:1: targets are defined here\n    help: define it"
        );
    }
}
