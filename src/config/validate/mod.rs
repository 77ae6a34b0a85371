//! From raw files to a [`Plan`]: defaults, paths, names, cross-references.
//!
//! Every check pushes a diagnostic and carries on, so one run reports every problem.

mod backups;
mod controller;
mod drills;
mod secrets;
mod targets;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diagnostic::{Diagnostic, Location, Source};
use super::raw;
use super::{BackupSet, DrillRestore, Engine, Loaded, Plan, SecretSpec, Target};
use crate::schedule::{CronSchedule, Duration};
use crate::secret::{SecretRef, StoreKind};

/// Where vigil keeps state when `controller.data_dir` is not set.
const DEFAULT_DATA_DIR: &str = "/var/lib/vigil";
/// The least time between two flips of an alternating pair, unless configured.
const DEFAULT_MIN_FLIP_INTERVAL: Duration = Duration::from_secs(3_600);
/// How long an old API key stays valid beside the new one, unless configured.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(86_400);
/// How long verifiers cache a JWKS, unless configured: a new key is published this long
/// before it signs.
const DEFAULT_JWKS_CACHE: u64 = 3_600;
/// The longest token lifetime, unless configured.
const DEFAULT_MAX_TOKEN_LIFETIME: u64 = 3_600;
/// The clock skew verifiers allow, unless configured.
const DEFAULT_CLOCK_SKEW: u64 = 300;
/// Shortest cadence accepted: rotating more often than hourly is a typo, not a policy.
const MIN_CADENCE: Duration = Duration::from_secs(3_600);
const DEFAULT_RPO: Duration = Duration::from_secs(15 * 60);
/// Where a schedule's gaps are measured from: a fixed Monday, so a check reads no clock.
const SCHEDULE_REFERENCE: chrono::DateTime<chrono::Utc> =
    chrono::DateTime::from_timestamp_nanos(1_767_571_200_000_000_000);
const DEFAULT_RTO: Duration = Duration::from_secs(3_600);

pub(super) fn load(path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    let mut loader = Loader::default();
    let plan = loader.load(path);
    // Checks run section by section; people read problems in file order.
    let order = |d: &Diagnostic| (d.location.file.clone(), d.location.line);
    loader.errors.sort_by_key(order);
    loader.warnings.sort_by_key(order);
    match plan {
        Some(plan) if loader.errors.is_empty() => Ok(Loaded { plan, warnings: loader.warnings }),
        _ => {
            let mut all = loader.errors;
            all.extend(loader.warnings);
            Err(all)
        }
    }
}

/// One named item from a schedule file, with where it was written.
struct Def<T> {
    file: usize,
    /// The item's table: its `[section.name]` header, or the inline table.
    span: Range<usize>,
    value: T,
}

#[derive(Default)]
struct Loader {
    sources: Vec<Source>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// The `[aws]` and `[vault]` sections, for "this store is not configured" errors.
    aws_at: Option<Location>,
    vault_at: Option<Location>,
    config_file: usize,
    /// `(section, name)` of items that exist but were refused while parsing.
    refused: std::collections::BTreeSet<(String, String)>,
}

impl Loader {
    fn load(&mut self, config_path: &Path) -> Option<Plan> {
        let config_path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_owned());
        let text = match std::fs::read_to_string(&config_path) {
            Ok(text) => text,
            Err(err) => {
                self.errors.push(
                    Diagnostic::error(
                        Location::file(&config_path),
                        "",
                        format!("cannot read the configuration file: {err}"),
                    )
                    .with_help("pass the file with --config PATH or VIGIL_CONFIG; docs/configuration.md describes it"),
                );
                return None;
            }
        };
        let base = config_path.parent().unwrap_or(Path::new("/")).to_owned();
        self.config_file = self.add_source(config_path.clone(), text);
        let raw = self.controller_file()?;

        // Stores first: later sections check their references against them.
        let aws = raw.aws.map(|aws| self.aws(aws));
        let vault = raw.vault.map(|vault| self.vault(vault));
        let controller = self.controller(raw.controller.as_ref(), &base);
        let evidence = self.evidence(raw.evidence.as_ref(), &base, &controller.data_dir);
        let daemon = self.daemon(raw.daemon.as_ref());
        let alerts = self.alerts(raw.alerts.as_ref());

        let schedules_span = raw.controller.as_ref().and_then(|c| c.get_ref().schedules.as_ref()).map(Spanned::span);
        let files = self.read_schedules(&controller.schedules_dir, schedules_span);
        let schedule_files = files.iter().map(|(file, _)| self.sources[*file].path.clone()).collect();

        let mut targets = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        let mut backups = BTreeMap::new();
        let mut drills = BTreeMap::new();
        for (file, parsed) in files {
            self.collect("targets", file, parsed.targets, &mut targets);
            self.collect("secrets", file, parsed.secrets, &mut secrets);
            self.collect("backups", file, parsed.backups, &mut backups);
            self.collect("drills", file, parsed.drills, &mut drills);
        }

        let plan_targets: BTreeMap<String, Target> =
            targets.iter().filter_map(|(name, def)| Some((name.clone(), self.target(name, def)?))).collect();
        let plan_secrets: BTreeMap<String, SecretSpec> = secrets
            .iter()
            .filter_map(|(name, def)| Some((name.clone(), self.secret(name, def, &targets, &plan_targets)?)))
            .collect();
        let plan_backups: BTreeMap<String, BackupSet> = backups
            .iter()
            .filter_map(|(name, def)| Some((name.clone(), self.backup(name, def, &targets, &plan_targets)?)))
            .collect();
        let plan_drills = drills
            .iter()
            .filter_map(|(name, def)| {
                let mut drill = self.drill(name, def, &targets, &plan_targets, &backups, &plan_backups)?;
                let scratch = match &drill.restore {
                    DrillRestore::Dump { scratch, .. } => plan_targets.get(scratch),
                    // The restored cluster is a copy of the set's own.
                    DrillRestore::PgBackRest { .. } => plan_backups.get(&drill.backup).map(|b| &b.target.value),
                    DrillRestore::Rds { .. } => None,
                };
                drill.check_credentials = self.drill_credentials(name, def, &secrets, &plan_secrets, scratch)?;
                Some((name.clone(), drill))
            })
            .collect();

        Some(Plan {
            config_file: config_path,
            schedule_files,
            controller,
            evidence,
            daemon,
            alerts,
            aws,
            vault,
            targets: plan_targets,
            secrets: plan_secrets,
            backups: plan_backups,
            drills: plan_drills,
        })
    }

    fn add_source(&mut self, path: PathBuf, text: String) -> usize {
        self.sources.push(Source { path, text });
        self.sources.len() - 1
    }

    /// The folder of a file: relative paths in it are relative to this.
    fn folder_of(&self, file: usize) -> PathBuf {
        self.sources[file].path.parent().unwrap_or(Path::new("/")).to_owned()
    }

    fn at(&self, file: usize, span: Range<usize>) -> Location {
        self.sources[file].locate(&span)
    }

    fn error(&mut self, file: usize, span: Range<usize>, field: String, message: impl Into<String>) {
        let location = self.at(file, span);
        self.errors.push(Diagnostic::error(location, field, message));
    }

    /// Parses a file's TOML syntax into its top-level `(key, value)` pairs, refusing keys not
    /// in `allowed`. `None` after a syntax error, which stops the file.
    fn sections<'t, S: Copy>(
        &mut self,
        file: usize,
        text: &'t str,
        allowed: &[(&str, S)],
    ) -> Option<Vec<(S, String, Spanned<DeValue<'t>>)>> {
        let table = match DeTable::parse(text) {
            Ok(table) => table.into_inner(),
            Err(err) => {
                // `message()`, not `Display`: the latter quotes the source line.
                let source = &self.sources[file];
                let location = err.span().map_or_else(|| source.whole(), |span| source.locate(&span));
                self.errors.push(Diagnostic::error(location, "", format!("invalid TOML: {}", err.message())));
                return None;
            }
        };
        let mut sections = Vec::new();
        for (key, value) in table {
            let name = key.get_ref().to_string();
            if let Some((_, section)) = allowed.iter().find(|(known, _)| *known == name) {
                sections.push((*section, name, value));
            } else {
                let expected = allowed.iter().map(|(a, _)| format!("`{a}`")).collect::<Vec<_>>().join(", ");
                self.error(
                    file,
                    key.span(),
                    name.clone(),
                    format!("unknown field `{name}`, expected one of {expected}"),
                );
            }
        }
        Some(sections)
    }

    /// Deserializes one value; a problem is reported under `path` plus the path inside it.
    fn value<T: DeserializeOwned>(&mut self, file: usize, path: &str, value: Spanned<DeValue<'_>>) -> Option<T> {
        match serde_path_to_error::deserialize(ValueDeserializer::from(value)) {
            Ok(value) => Some(value),
            Err(err) => {
                let inner_path = err.path().to_string().replace("$__serde_spanned_private_value", "");
                let mut field: Vec<&str> =
                    std::iter::once(path).chain(inner_path.split('.')).filter(|part| !part.is_empty()).collect();
                let err = err.into_inner();
                let message = err.message().to_owned();
                if let Some(missing) = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
                    field.push(missing);
                }
                let source = &self.sources[file];
                let location = err.span().map_or_else(|| source.whole(), |span| source.locate(&span));
                self.errors.push(Diagnostic::error(location, field.join("."), message));
                None
            }
        }
    }

    /// Deserializes each `NAME` of a `[section.NAME]` table on its own.
    fn items<T: DeserializeOwned>(
        &mut self,
        file: usize,
        section: &str,
        value: Spanned<DeValue<'_>>,
    ) -> BTreeMap<String, Spanned<T>> {
        self.items_with(file, section, value, Self::value)
    }

    /// Deserializes each `NAME` of a `[section.NAME]` table on its own, with `parse`.
    fn items_with<'t, T>(
        &mut self,
        file: usize,
        section: &str,
        value: Spanned<DeValue<'t>>,
        parse: impl Fn(&mut Self, usize, &str, Spanned<DeValue<'t>>) -> Option<T>,
    ) -> BTreeMap<String, T> {
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            self.error(
                file,
                span,
                section.to_owned(),
                format!("`{section}` must be a table of named items, e.g. [{section}.NAME]"),
            );
            return BTreeMap::new();
        };
        let mut items = BTreeMap::new();
        for (key, item) in table {
            let name = key.get_ref().to_string();
            match parse(self, file, &format!("{section}.{name}"), item) {
                Some(parsed) => {
                    items.insert(name, parsed);
                }
                None => {
                    self.refused.insert((section.to_owned(), name));
                }
            }
        }
        items
    }

    /// One `[secrets.NAME]`: its `kind` first, then the table as that kind's own fields. A
    /// field of another kind, or a kind's field left out, is explained in the kind's terms. A
    /// field the kind does not take is reported and left out, and the rest is read again, so
    /// that the other mistakes in the table are found in the same run.
    fn secret_item(&mut self, file: usize, path: &str, value: Spanned<DeValue<'_>>) -> Option<Spanned<raw::Secret>> {
        let span = value.span();
        let DeValue::Table(mut table) = value.into_inner() else {
            self.error(file, span, path.to_owned(), "a secret is a table: [secrets.NAME] with kind = \"…\"");
            return None;
        };
        let Some((_, kind)) = table.iter().find(|(key, _)| key.get_ref() == "kind") else {
            self.error(file, span, format!("{path}.kind"), "missing field `kind`");
            return None;
        };
        let kind: raw::SecretKind = self.value(file, &format!("{path}.kind"), kind.clone())?;
        loop {
            let errors_before = self.errors.len();
            let value = Spanned::new(span.clone(), DeValue::Table(table.clone()));
            let parsed = match kind {
                raw::SecretKind::PostgresPassword => {
                    self.value(file, path, value).map(|s| raw::Secret::Password(Engine::Postgres, s))
                }
                raw::SecretKind::MysqlPassword => {
                    self.value(file, path, value).map(|s| raw::Secret::Password(Engine::Mysql, s))
                }
                raw::SecretKind::ApiKey => self.value(file, path, value).map(raw::Secret::ApiKey),
                raw::SecretKind::JwtSigningKey => self.value(file, path, value).map(raw::Secret::JwtSigningKey),
            };
            if let Some(parsed) = parsed {
                return Some(Spanned::new(span, parsed));
            }
            let diagnostic = self.errors.get_mut(errors_before..).and_then(<[_]>::last_mut)?;
            let unknown = diagnostic
                .message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split_once('`'))
                .map(|(field, _)| field.to_owned());
            secrets::explain(kind, diagnostic);
            table.remove(unknown?.as_str())?;
        }
    }

    /// Reads `vigil.toml` section by section.
    fn controller_file(&mut self) -> Option<raw::ControllerFile> {
        let file = self.config_file;
        let text = self.sources[file].text.clone();
        let mut raw = raw::ControllerFile::default();
        for (section, name, value) in self.sections(file, &text, &raw::CONTROLLER_SECTIONS)? {
            let location = self.at(file, value.span());
            match section {
                raw::TopSection::Controller => raw.controller = self.value(file, &name, value),
                raw::TopSection::Evidence => raw.evidence = self.value(file, &name, value),
                raw::TopSection::Aws => {
                    // Present, even if malformed: references to it are not also reported as missing.
                    self.aws_at = Some(location);
                    raw.aws = self.value(file, &name, value);
                }
                raw::TopSection::Vault => {
                    self.vault_at = Some(location);
                    raw.vault = self.value(file, &name, value);
                }
                raw::TopSection::Daemon => raw.daemon = self.value(file, &name, value),
                raw::TopSection::Alerts => raw.alerts = self.value(file, &name, value),
            }
        }
        Some(raw)
    }

    /// Reads one schedule file item by item.
    fn schedule_file(&mut self, file: usize) -> raw::ScheduleFile {
        let text = self.sources[file].text.clone();
        let mut parsed = raw::ScheduleFile::default();
        for (section, name, value) in self.sections(file, &text, &raw::SCHEDULE_SECTIONS).unwrap_or_default() {
            match section {
                raw::ScheduleSection::Targets => parsed.targets = self.items(file, &name, value),
                raw::ScheduleSection::Secrets => {
                    parsed.secrets = self.items_with(file, &name, value, Self::secret_item);
                }
                raw::ScheduleSection::Backups => parsed.backups = self.items(file, &name, value),
                raw::ScheduleSection::Drills => parsed.drills = self.items(file, &name, value),
            }
        }
        parsed
    }

    /// Whether `url` is an `http://` or `https://` URL; an error if not.
    fn check_http_url(&mut self, file: usize, url: &Spanned<String>, field: &str) -> bool {
        let text = url.get_ref();
        if url_has_password(text) {
            // Not repeated, here or anywhere: the URL carries a secret.
            let location = self.at(file, url.span());
            self.errors.push(
                Diagnostic::error(location, field, "the URL carries a password or token (not repeated here)")
                    .with_help("remove it from the URL and give the credential by reference, e.g. token = { file = \"/path\" }"),
            );
            return false;
        }
        let well_formed =
            ["http://", "https://"].iter().any(|scheme| text.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()));
        if !well_formed {
            self.error(file, url.span(), field.into(), format!("`{text}` is not an http:// or https:// URL"));
        }
        well_formed
    }

    /// The URL of a service vigil sends a bearer token to: `https://`, unless the host is this
    /// machine or `allow_insecure_http = true` says otherwise (then warned about).
    fn check_service_url(
        &mut self,
        file: usize,
        url: &Spanned<String>,
        field: &str,
        allow_insecure: Option<&Spanned<bool>>,
    ) {
        if !self.check_http_url(file, url, field) {
            return;
        }
        let text = url.get_ref();
        if !text.starts_with("http://") || crate::tls::is_loopback(url_host(text)) {
            return;
        }
        let owner = field.rsplit_once('.').map_or("", |(owner, _)| owner);
        match allow_insecure {
            Some(allowed) if *allowed.get_ref() => {
                let location = self.at(file, allowed.span());
                self.warnings.push(Diagnostic::warning(
                    location,
                    format!("{owner}.allow_insecure_http"),
                    format!("{text} is plain http to another machine: the token crosses the network in the clear"),
                ));
            }
            _ => {
                let location = self.at(file, url.span());
                self.errors.push(
                    Diagnostic::error(
                        location,
                        field,
                        format!("`{text}` is plain http to a host that is not this machine; the token would cross the network in the clear"),
                    )
                    .with_help("use https:// (with ca_file for a private CA), or write allow_insecure_http = true"),
                );
            }
        }
    }

    /// A `ca_file` beside a URL: it must be a file, read relative to the configuration file.
    fn check_ca_file(&mut self, file: usize, ca: Option<&Spanned<PathBuf>>, field: &str) -> Option<PathBuf> {
        let ca = ca?;
        let path = self.folder_of(file).join(ca.get_ref());
        if !path.is_file() {
            self.error(
                file,
                ca.span(),
                field.into(),
                format!(
                    "{} is not a readable file; give the PEM file of the CA that signed the server's certificate",
                    path.display()
                ),
            );
        }
        Some(path)
    }

    /// The schedule files of `dir`, sorted by name so that reports are stable.
    fn read_schedules(&mut self, dir: &Path, named_at: Option<Range<usize>>) -> Vec<(usize, raw::ScheduleFile)> {
        let location = match named_at {
            Some(span) => self.at(self.config_file, span),
            None => self.sources[self.config_file].whole(),
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) => {
                self.errors.push(
                    Diagnostic::error(
                        location,
                        "controller.schedules",
                        format!("cannot read the schedules folder {}: {err}", dir.display()),
                    )
                    .with_help("set controller.schedules to the folder of schedule files (default: `schedules` beside vigil.toml)"),
                );
                return Vec::new();
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            self.warnings.push(Diagnostic::warning(
                location,
                "controller.schedules",
                format!("no *.toml schedule files in {}; vigil has nothing to do", dir.display()),
            ));
        }
        let mut files = Vec::new();
        for path in paths {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let file = self.add_source(path, text);
                    let parsed = self.schedule_file(file);
                    files.push((file, parsed));
                }
                Err(err) => {
                    let location = Location::file(&path);
                    self.errors.push(Diagnostic::error(location, "", format!("cannot read schedule file: {err}")));
                }
            }
        }
        files
    }

    /// Moves one section's items into `into`, refusing bad names and duplicates across files.
    fn collect<T>(
        &mut self,
        section: &str,
        file: usize,
        items: BTreeMap<String, Spanned<T>>,
        into: &mut BTreeMap<String, Def<T>>,
    ) {
        for (name, value) in items {
            let span = value.span();
            if let Err(why) = check_name(&name) {
                self.error(file, span.clone(), format!("{section}.{name}"), why);
            }
            if let Some(first) = into.get(&name) {
                let first_at = self.at(first.file, first.span.clone());
                let location = self.at(file, span);
                self.errors.push(
                    Diagnostic::error(location, format!("{section}.{name}"), format!("`{name}` is defined twice"))
                        .with_related(first_at, "first defined here")
                        .with_help("names are unique across all schedule files; rename one"),
                );
                continue;
            }
            into.insert(name, Def { file, span, value: value.into_inner() });
        }
    }

    fn require_store(&mut self, store: StoreKind, location: Location, field: String) {
        let (configured, section) = match store {
            StoreKind::AwsSecretsManager => (self.aws_at.is_some(), "[aws]"),
            StoreKind::VaultKv => (self.vault_at.is_some(), "[vault]"),
        };
        if !configured {
            let config = self.sources[self.config_file].whole();
            self.errors.push(
                Diagnostic::error(
                    location,
                    field,
                    format!("uses {store}, but the configuration has no {section} section"),
                )
                .with_related(config, format!("add {section} here")),
            );
        }
    }

    /// Checks that a reference can be read: its store is configured, or its variable or file
    /// exists now (a warning: the daemon's environment may differ from this shell's).
    fn check_ref(&mut self, reference: &Spanned<SecretRef>, file: usize, field: String) {
        let location = self.at(file, reference.span());
        let base = self.folder_of(file);
        match reference.get_ref().clone().rebase(&base) {
            SecretRef::Store { store, .. } => self.require_store(store, location, field),
            local => {
                if let Err(err) = local.resolve_local() {
                    self.warnings.push(Diagnostic::warning(location, field, err.to_string()));
                }
            }
        }
    }

    /// Reports that `reference` names no item of `section`, unless an item of that name
    /// exists but was itself refused: that mistake is already reported.
    fn missing_reference<'a>(
        &mut self,
        file: usize,
        reference: &Spanned<String>,
        field: String,
        section: &str,
        known: impl Iterator<Item = &'a String>,
    ) {
        let name = reference.get_ref();
        if self.refused.contains(&(section.to_owned(), name.clone())) {
            return;
        }
        let what = if section == "backups" { "backup set" } else { section.trim_end_matches('s') };
        let known = known.map(String::as_str).collect::<Vec<_>>().join(", ");
        let help = if known.is_empty() {
            format!("define it under [{section}.NAME] in a schedule file")
        } else {
            format!("defined: {known}")
        };
        let location = self.at(file, reference.span());
        self.errors.push(Diagnostic::error(location, field, format!("no {what} named `{name}`")).with_help(help));
    }

    fn cron(&mut self, file: usize, expression: &Spanned<String>, field: String) -> Option<CronSchedule> {
        match CronSchedule::parse(expression.get_ref()) {
            Ok(schedule) => Some(schedule),
            Err(err) => {
                self.error(file, expression.span(), field, err.to_string());
                None
            }
        }
    }
}

/// Names become store paths, metric labels and file names: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    let plain = name.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_');
    let starts_well = name.chars().next().is_some_and(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit());
    if plain && starts_well && name.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name; use 1-63 lowercase letters, digits, `-` and `_`, starting with a letter or digit"
        ))
    }
}

/// Whether a URL's authority carries `user:password@`.
/// The host of a `scheme://[user@]host[:port]/…` URL.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    }
}

/// Whether a URL carries a secret: a password in its user info (`user:pw@`), or a `password`,
/// `pass`, `token`, `access_token`, `secret` or `api_key` query parameter.
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let in_userinfo = authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let query = rest.split_once('?').map_or("", |(_, query)| query.split('#').next().unwrap_or_default());
    let in_query = query.split('&').any(|pair| {
        let key = pair.split('=').next().unwrap_or_default();
        ["password", "pass", "token", "access_token", "secret", "api_key"].iter().any(|k| key.eq_ignore_ascii_case(k))
    });
    in_userinfo || in_query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts_are_found_behind_users_and_ports() {
        assert_eq!(url_host("postgres://vigil@db.internal:5432/vigil"), "db.internal");
        assert_eq!(url_host("http://[::1]:8200/v1"), "::1");
        assert_eq!(url_host("http://127.0.0.1"), "127.0.0.1");
        assert_eq!(url_host("https://keys.internal/path?x=1"), "keys.internal");
    }

    #[test]
    fn passwords_are_found_anywhere_in_a_url() {
        for url in [
            "postgres://vigil:pw@db:5432/vigil",
            "postgres://vigil@db:5432/vigil?password=pw",
            "postgres://vigil@db/vigil?application_name=x&PASSWORD=pw",
            "https://vault.internal:8200/?token=s.abc",
            "https://user:hunter2@keys.internal/",
        ] {
            assert!(url_has_password(url), "{url}");
        }
        for url in ["postgres://vigil@db:5432/vigil", "postgres://db/vigil?user=vigil", "sqlite:///var/lib/vigil/e.db"]
        {
            assert!(!url_has_password(url), "{url}");
        }
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("orders-pg_1").is_ok());
        for bad in ["", "Orders", "-x", "a b", "a.b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    /// The diagnostics for a schedule holding `secrets`, as `field: message` lines.
    fn secret_errors(secrets: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        std::fs::write(dir.path().join("vigil.toml"), "[controller]\ndata_dir = \"data\"\n").unwrap();
        let targets = "[targets.db]\nkind = \"postgres\"\nhost = \"db.internal\"\nadmin = { env = \"A\" }\n";
        std::fs::write(dir.path().join("schedules/s.toml"), format!("{targets}{secrets}")).unwrap();
        let errors = load(&dir.path().join("vigil.toml")).expect_err("the schedule is refused");
        // The target's admin reference is not set here; only the secrets' diagnostics count.
        errors
            .iter()
            .filter(|d| d.field.starts_with("secrets"))
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect()
    }

    #[test]
    fn a_secret_is_read_as_its_kind_and_every_mistake_in_it_is_named() {
        // Two fields of other kinds and a mistake of its own, all in one run.
        let errors = secret_errors(
            "[secrets.s]\nkind = \"postgres_password\"\nstore = \"vault_kv\"\npath = \"p\"\ntarget = \"db\"\n\
             username = \"app\"\nissuer = { url = \"https://k\", token = { env = \"T\" } }\nalgorithm = \"EdDSA\"\n\
             clone_username = \"app2\"\n",
        );
        assert!(errors.contains(&"secrets.s.issuer: issuer applies to api_key secrets only".to_owned()), "{errors:#?}");
        assert!(
            errors.contains(&"secrets.s.algorithm: algorithm applies to jwt_signing_key secrets only".to_owned()),
            "{errors:#?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("secrets.s.clone_username: clone_username applies to strategy")),
            "{errors:#?}"
        );

        // A misspelling keeps serde's list of the kind's fields; the field it meant is then missing.
        let errors = secret_errors(
            "[secrets.s]\nkind = \"postgres_password\"\nstore = \"vault_kv\"\npath = \"p\"\ntarget = \"db\"\nusernme = \"app\"\n",
        );
        assert!(errors.iter().any(|e| e.starts_with("secrets.s.usernme: unknown field `usernme`, expected one of")));
        assert!(errors.contains(
            &"secrets.s.username: a postgres_password secret needs `username`, the database user".to_owned()
        ));
        assert!(
            !errors.iter().any(|e| e.contains("issuer") || e.contains("jwks")),
            "only the kind's own fields: {errors:#?}"
        );

        // The kind decides the strategies on offer.
        let errors = secret_errors(
            "[secrets.s]\nkind = \"api_key\"\nstore = \"vault_kv\"\npath = \"p\"\nstrategy = \"single_user\"\n\
             issuer = { url = \"https://k\", token = { env = \"T\" } }\n",
        );
        assert_eq!(errors, ["secrets.s.strategy: api_key secrets rotate with strategy = \"overlap\""]);

        // No kind, an unknown kind, and a secret that is not a table.
        assert_eq!(secret_errors("[secrets.s]\nstore = \"vault_kv\"\n"), ["secrets.s.kind: missing field `kind`"]);
        let errors = secret_errors("[secrets.s]\nkind = \"ssh_key\"\n");
        assert!(errors[0].starts_with("secrets.s.kind: unknown variant `ssh_key`"), "{errors:#?}");
        assert_eq!(errors.len(), 1);
        let errors = secret_errors("[secrets]\ns = 3\n");
        assert_eq!(errors, ["secrets.s: a secret is a table: [secrets.NAME] with kind = \"…\""]);
    }

    #[test]
    fn a_drill_whose_backups_are_further_apart_than_its_rpo_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        std::fs::write(dir.path().join("vigil.toml"), "[controller]\ndata_dir = \"data\"\n").unwrap();
        let schedule = |rpo: &str| {
            format!(
                "[targets.db]\nkind = \"postgres\"\nhost = \"db.internal\"\nadmin = {{ env = \"PATH\" }}\n\
                 [targets.scratch]\nkind = \"postgres\"\nhost = \"drill.internal\"\nadmin = {{ env = \"PATH\" }}\n\
                 [backups.nightly]\ntarget = \"db\"\nschedule = \"0 2 * * *\"\nstore = \"local\"\npath = \"b\"\n\
                 key_service = \"local\"\nkey_file = \"k\"\n\
                 [drills.restore]\nbackup = \"nightly\"\nscratch = \"scratch\"\nrpo = \"{rpo}\"\n"
            )
        };
        let warnings = |rpo: &str| {
            std::fs::write(dir.path().join("schedules/s.toml"), schedule(rpo)).unwrap();
            let loaded = load(&dir.path().join("vigil.toml")).unwrap_or_else(|errors| panic!("{errors:#?}"));
            loaded.warnings.into_iter().filter(|w| w.field == "drills.restore.rpo").collect::<Vec<_>>()
        };
        let warned = warnings("15m");
        assert_eq!(warned.len(), 1, "{warned:#?}");
        assert!(
            warned[0].message.contains("up to 1d apart: longer than this drill's RPO target of 15m"),
            "{}",
            warned[0].message
        );
        assert_eq!(warned[0].location.line, Some((19, 7)), "points at the rpo value");
        assert!(warned[0].advice, "config check says it; other commands do not repeat it");
        assert!(warnings("25h").is_empty());
    }

    #[test]
    fn passwords_in_urls_are_spotted() {
        assert!(url_has_password("postgres://vigil:pw@db:5432/vigil"));
        assert!(!url_has_password("postgres://vigil@db:5432/vigil"));
        assert!(!url_has_password("postgres://db:5432/vigil?user=a"));
    }
}
