//! From raw files to a [`Plan`]: defaults, paths, names, cross-references.
//!
//! Every check pushes a diagnostic and carries on, so one run reports every problem.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diagnostic::{Diagnostic, Location, Source};
use super::raw;
use super::{
    ApiKey, BackupMethod, BackupSet, Controller, DbPassword, Drill, Engine, Evidence, JwksTarget, JwtKey, JwtSpec,
    Loaded, Named, Plan, RdsCopy, Retention, SecretKind, SecretSpec, Strategy, Target,
};
use crate::aws::{AwsCredentials, AwsSettings as Aws};
use crate::jwks::Algorithm;
use crate::kms::Settings as KeyService;
use crate::objects::{ObjectLock, Settings as ObjectStore};
use crate::schedule::{CronSchedule, Duration};
use crate::secret::{CharClass, PasswordPolicy, SecretRef, StoreKind, resolve_path};
use crate::state::StateStore as EvidenceStore;
use crate::stores::VaultSettings as Vault;

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
        let plan_secrets = secrets
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
                let drill = self.drill(name, def, &targets, &plan_targets, &backups, &plan_backups)?;
                Some((name.clone(), drill))
            })
            .collect();

        Some(Plan {
            config_file: config_path,
            schedule_files,
            controller,
            evidence,
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
            match self.value(file, &format!("{section}.{name}"), item) {
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
                raw::ScheduleSection::Secrets => parsed.secrets = self.items(file, &name, value),
                raw::ScheduleSection::Backups => parsed.backups = self.items(file, &name, value),
                raw::ScheduleSection::Drills => parsed.drills = self.items(file, &name, value),
            }
        }
        parsed
    }

    fn controller(&mut self, raw: Option<&Spanned<raw::ControllerSection>>, base: &Path) -> Controller {
        let raw = raw.map(Spanned::get_ref);
        let data_dir = raw
            .and_then(|c| c.data_dir.clone())
            .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), |dir| resolve_path(base, &dir));
        let schedules_dir = raw
            .and_then(|c| c.schedules.as_ref())
            .map_or_else(|| resolve_path(base, Path::new("schedules")), |dir| resolve_path(base, dir.get_ref()));
        Controller { data_dir, schedules_dir }
    }

    fn evidence(&mut self, raw: Option<&Spanned<raw::EvidenceSection>>, base: &Path, data_dir: &Path) -> Evidence {
        let file = self.config_file;
        let raw = raw.map(Spanned::get_ref);
        let signing_key = raw
            .and_then(|e| e.signing_key.clone())
            .map_or_else(|| data_dir.join("evidence.key"), |key| resolve_path(base, &key));
        let password = raw.and_then(|e| e.password.as_ref());
        let store = match raw.and_then(|e| e.url.as_ref()) {
            None => EvidenceStore::Sqlite { path: data_dir.join("evidence.db") },
            Some(url) => {
                let text = url.get_ref();
                if let Some(path) = text.strip_prefix("sqlite://") {
                    if let Some(password) = password {
                        self.error(
                            file,
                            password.span(),
                            "evidence.password".into(),
                            "a password applies to a postgres:// store only",
                        );
                    }
                    EvidenceStore::Sqlite { path: resolve_path(base, Path::new(path)) }
                } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
                    if url_has_password(text) {
                        // The URL is not repeated: it carries a secret.
                        let location = self.at(file, url.span());
                        self.errors.push(
                            Diagnostic::error(location, "evidence.url", "the URL carries a password (not repeated here)")
                                .with_help("remove it from the URL and write password = { env = \"NAME\" } or { file = \"/path\" }"),
                        );
                    }
                    if let Some(password) = password {
                        self.check_ref(password, file, "evidence.password".into());
                    }
                    EvidenceStore::Postgres {
                        url: text.clone(),
                        password: password.map(|p| p.get_ref().clone().rebase(base)),
                    }
                } else {
                    self.error(
                        file,
                        url.span(),
                        "evidence.url".into(),
                        "unsupported evidence store URL; use sqlite://PATH or postgres://USER@HOST:PORT/DATABASE",
                    );
                    EvidenceStore::Sqlite { path: data_dir.join("evidence.db") }
                }
            }
        };
        Evidence { store, signing_key }
    }

    fn aws(&mut self, raw: Spanned<raw::AwsSection>) -> Aws {
        let file = self.config_file;
        let base = self.folder_of(file);
        let span = raw.span();
        let raw = raw.into_inner();
        if let Some(url) = &raw.endpoint_url {
            self.check_http_url(file, url, "aws.endpoint_url");
        }
        let credentials = match (raw.access_key_id, raw.secret_access_key) {
            (Some(id), Some(key)) => Some({
                self.check_ref(&id, file, "aws.access_key_id".into());
                self.check_ref(&key, file, "aws.secret_access_key".into());
                AwsCredentials {
                    access_key_id: id.into_inner().rebase(&base),
                    secret_access_key: key.into_inner().rebase(&base),
                }
            }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                self.error(
                    file,
                    span,
                    "aws".into(),
                    "give both access_key_id and secret_access_key, or neither to use the SDK's default credential chain",
                );
                None
            }
        };
        Aws { region: raw.region, endpoint_url: raw.endpoint_url.map(Spanned::into_inner), credentials }
    }

    fn vault(&mut self, raw: Spanned<raw::VaultSection>) -> Vault {
        let file = self.config_file;
        let base = self.folder_of(file);
        let raw = raw.into_inner();
        self.check_http_url(file, &raw.address, "vault.address");
        self.check_ref(&raw.token, file, "vault.token".into());
        Vault {
            address: raw.address.into_inner(),
            token: raw.token.into_inner().rebase(&base),
            kv_mount: raw.kv_mount.unwrap_or_else(|| "secret".into()),
            transit_mount: raw.transit_mount.unwrap_or_else(|| "transit".into()),
            namespace: raw.namespace,
        }
    }

    fn check_http_url(&mut self, file: usize, url: &Spanned<String>, field: &str) {
        let text = url.get_ref();
        let well_formed =
            ["http://", "https://"].iter().any(|scheme| text.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()));
        if !well_formed {
            self.error(file, url.span(), field.into(), format!("`{text}` is not an http:// or https:// URL"));
        }
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

    fn target(&mut self, name: &str, def: &Def<raw::Target>) -> Option<Target> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("targets.{name}.{f}");
        let base = self.folder_of(file);
        let kind = *raw.kind.get_ref();
        let engine = match (kind, &raw.engine) {
            (raw::TargetKind::Rds, Some(engine)) => Some(*engine.get_ref()),
            (raw::TargetKind::Rds, None) => {
                self.error(
                    file,
                    raw.kind.span(),
                    field("engine"),
                    "an rds target needs engine = \"postgres\" or \"mysql\"",
                );
                None
            }
            (_, Some(engine)) => {
                self.error(
                    file,
                    engine.span(),
                    field("engine"),
                    "engine applies to rds targets only; postgres and mysql targets imply it",
                );
                None
            }
            (raw::TargetKind::Postgres, None) => Some(raw::Engine::Postgres),
            (raw::TargetKind::Mysql, None) => Some(raw::Engine::Mysql),
        };
        let rds_instance = match (kind, &raw.instance_id) {
            (raw::TargetKind::Rds, Some(id)) => Some(id.get_ref().clone()),
            (raw::TargetKind::Rds, None) => {
                self.error(
                    file,
                    raw.kind.span(),
                    field("instance_id"),
                    "an rds target needs instance_id, the DB instance identifier",
                );
                None
            }
            (_, Some(id)) => {
                self.error(file, id.span(), field("instance_id"), "instance_id applies to rds targets only");
                None
            }
            (_, None) => None,
        };
        if raw.host.get_ref().trim().is_empty() {
            self.error(file, raw.host.span(), field("host"), "host is empty");
        }
        if let Some(port) = &raw.port
            && *port.get_ref() == 0
        {
            self.error(file, port.span(), field("port"), "port 0 is not a port; use 1-65535");
        }
        self.check_ref(&raw.admin, file, field("admin"));
        let engine = match engine? {
            raw::Engine::Postgres => Engine::Postgres,
            raw::Engine::Mysql => Engine::Mysql,
        };
        Some(Target {
            engine,
            rds_instance,
            host: raw.host.get_ref().clone(),
            port: raw.port.as_ref().map_or(engine.default_port(), |p| *p.get_ref()),
            database: raw.database.clone(),
            admin: raw.admin.get_ref().clone().rebase(&base),
            defined_at: self.at(file, def.span.clone()),
        })
    }

    fn secret(
        &mut self,
        name: &str,
        def: &Def<raw::Secret>,
        raw_targets: &BTreeMap<String, Def<raw::Target>>,
        targets: &BTreeMap<String, Target>,
    ) -> Option<SecretSpec> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("secrets.{name}.{f}");
        let errors_before = self.errors.len();
        let kind = *raw.kind.get_ref();
        let store = *raw.store.get_ref();
        let location = self.at(file, raw.store.span());
        self.require_store(store, location, field("store"));
        if raw.path.get_ref().trim().is_empty() {
            self.error(file, raw.path.span(), field("path"), "path is empty; name the secret in its store");
        }

        let cadence = raw.cadence.as_ref().map(|c| *c.get_ref());
        // Checks that compare other durations with the cadence are skipped when the cadence
        // itself is refused: one mistake, one error.
        let mut cadence_ok = true;
        if let Some(c) = &raw.cadence
            && *c.get_ref() < MIN_CADENCE
        {
            cadence_ok = false;
            self.error(
                file,
                c.span(),
                field("cadence"),
                format!("cadence {} is shorter than the minimum of 1h", c.get_ref()),
            );
        }
        let cadence_value = cadence.unwrap_or_else(|| kind.default_cadence());

        // Fields that only some kinds and strategies take, refused where they do not apply.
        let refuse = |loader: &mut Self, span: Option<Range<usize>>, name: &str, why: &str| {
            if let Some(span) = span {
                loader.error(file, span, field(name), why.to_owned());
            }
        };

        let jwt = if kind == raw::SecretKind::JwtSigningKey {
            self.jwt(name, def, cadence_ok.then_some(cadence_value))
        } else {
            let why = "applies to jwt_signing_key secrets only";
            for (name, span) in [
                ("algorithm", raw.algorithm.as_ref().map(Spanned::span)),
                ("jwks", raw.jwks.as_ref().map(Spanned::span)),
                ("jwks_cache", raw.jwks_cache.as_ref().map(Spanned::span)),
                ("max_token_lifetime", raw.max_token_lifetime.as_ref().map(Spanned::span)),
                ("clock_skew", raw.clock_skew.as_ref().map(Spanned::span)),
            ] {
                refuse(self, span, name, &format!("{name} {why}"));
            }
            None
        };

        let strategy = match kind.engine() {
            Some(engine) => {
                match &raw.target {
                    None => {
                        let location = self.at(file, def.span.clone());
                        self.errors.push(Diagnostic::error(
                            location,
                            field("target"),
                            format!("a {} secret needs `target`, the database whose user it rotates", kind.as_str()),
                        ));
                    }
                    Some(target) => self.check_target_ref(file, target, &field("target"), engine, raw_targets, targets),
                }
                if raw.username.is_none() {
                    let location = self.at(file, def.span.clone());
                    self.errors.push(Diagnostic::error(
                        location,
                        field("username"),
                        format!("a {} secret needs `username`, the database user", kind.as_str()),
                    ));
                }
                refuse(
                    self,
                    raw.overlap.as_ref().map(Spanned::span),
                    "overlap",
                    "overlap applies to api_key and jwt_signing_key secrets; database passwords use single_user or alternating_users",
                );
                match raw.strategy.as_ref().map(|s| (*s.get_ref(), s.span())) {
                    None | Some((raw::Strategy::SingleUser, _)) => {
                        refuse(
                            self,
                            raw.clone_username.as_ref().map(Spanned::span),
                            "clone_username",
                            "clone_username applies to strategy = \"alternating_users\" only",
                        );
                        refuse(
                            self,
                            raw.min_flip_interval.as_ref().map(Spanned::span),
                            "min_flip_interval",
                            "min_flip_interval applies to strategy = \"alternating_users\" only",
                        );
                        Strategy::SingleUser
                    }
                    Some((raw::Strategy::AlternatingUsers, _)) => {
                        let min_flip_interval =
                            raw.min_flip_interval.as_ref().map_or(DEFAULT_MIN_FLIP_INTERVAL, |m| *m.get_ref());
                        if cadence_ok && min_flip_interval > cadence_value {
                            let span = raw.min_flip_interval.as_ref().map_or(def.span.clone(), Spanned::span);
                            self.error(file, span, field("min_flip_interval"), format!("min_flip_interval {min_flip_interval} is longer than the cadence {cadence_value}: every rotation would be refused"));
                        }
                        let username = raw.username.as_ref().map(|u| u.get_ref().as_str()).unwrap_or_default();
                        let clone_username = raw
                            .clone_username
                            .as_ref()
                            .map_or_else(|| format!("{username}_clone"), |c| c.get_ref().clone());
                        if clone_username == username
                            && let Some(clone) = &raw.clone_username
                        {
                            self.error(
                                file,
                                clone.span(),
                                field("clone_username"),
                                "clone_username must differ from username: the pair alternates between two users",
                            );
                        }
                        Strategy::AlternatingUsers { clone_username, min_flip_interval }
                    }
                    Some((raw::Strategy::Overlap, span)) => {
                        self.error(file, span, field("strategy"), "database passwords rotate with \"single_user\" or \"alternating_users\"; \"overlap\" is for api_key and jwt_signing_key");
                        Strategy::SingleUser
                    }
                }
            }
            None => {
                let why = format!("{} secrets have no database target", kind.as_str());
                refuse(self, raw.target.as_ref().map(Spanned::span), "target", &why);
                refuse(self, raw.username.as_ref().map(Spanned::span), "username", &why);
                refuse(self, raw.clone_username.as_ref().map(Spanned::span), "clone_username", &why);
                refuse(self, raw.min_flip_interval.as_ref().map(Spanned::span), "min_flip_interval", &why);
                refuse(self, raw.probes.as_ref().map(Spanned::span), "probes", &why);
                refuse(
                    self,
                    raw.policy.as_ref().map(Spanned::span),
                    "policy",
                    "the issuer or key generator decides what these values look like; policy applies to passwords",
                );
                if let Some(strategy) = &raw.strategy
                    && *strategy.get_ref() != raw::Strategy::Overlap
                {
                    self.error(
                        file,
                        strategy.span(),
                        field("strategy"),
                        format!("{} secrets rotate with strategy = \"overlap\"", kind.as_str()),
                    );
                }
                let window = if let Some(jwt) = &jwt {
                    jwt.retention()
                } else {
                    let window = raw.overlap.as_ref().map_or(DEFAULT_OVERLAP, |o| *o.get_ref());
                    if cadence_ok && window >= cadence_value {
                        let span = raw.overlap.as_ref().map_or(def.span.clone(), Spanned::span);
                        self.error(file, span, field("overlap"), format!("overlap {window} must be shorter than the cadence {cadence_value}, or old credentials pile up"));
                    }
                    window
                };
                Strategy::Overlap { window }
            }
        };
        let policy =
            raw.policy.as_ref().map_or_else(PasswordPolicy::default, |p| self.policy(file, p, &field("policy")));
        let issuer = match (kind, &raw.issuer) {
            (raw::SecretKind::ApiKey, Some(issuer)) => {
                let issuer = issuer.get_ref();
                self.check_http_url(file, &issuer.url, &field("issuer.url"));
                self.check_ref(&issuer.token, file, field("issuer.token"));
                let base = self.folder_of(file);
                Some(super::Issuer {
                    url: issuer.url.get_ref().clone(),
                    token: issuer.token.get_ref().clone().rebase(&base),
                })
            }
            (raw::SecretKind::ApiKey, None) => {
                let location = self.at(file, def.span.clone());
                self.errors.push(
                    Diagnostic::error(location, field("issuer"), "an api_key secret needs `issuer`, the service that issues and revokes its keys")
                        .with_help("write issuer = { url = \"https://…\", token = { file = \"/path\" } }; docs/api-key-issuer.md has the contract"),
                );
                None
            }
            (_, Some(issuer)) => {
                self.error(file, issuer.span(), field("issuer"), "issuer applies to api_key secrets only");
                None
            }
            (_, None) => None,
        };
        if self.errors.len() > errors_before {
            return None;
        }
        // No error was found, so each kind's own fields are there: a password names a target
        // and a username, an API key its issuer, a JWT key its settings.
        let db_password = || {
            let name = raw.target.as_ref()?.get_ref().clone();
            let target = targets.get(&name)?.clone();
            Some(DbPassword {
                target: Named { name, value: target },
                username: raw.username.as_ref()?.get_ref().clone(),
                policy: policy.clone(),
                probes: raw.probes.as_ref().map(|p| p.get_ref().clone()).unwrap_or_default(),
            })
        };
        let typed = match kind {
            raw::SecretKind::PostgresPassword => db_password().map(SecretKind::PostgresPassword),
            raw::SecretKind::MysqlPassword => db_password().map(SecretKind::MysqlPassword),
            raw::SecretKind::ApiKey => issuer.map(|issuer| SecretKind::ApiKey(ApiKey { issuer })),
            raw::SecretKind::JwtSigningKey => jwt.map(|jwt| SecretKind::JwtSigningKey(JwtKey { jwt })),
        };
        // Only a target refused on its own (and reported there) leaves a password unresolved:
        // one mistake, one error.
        let kind = typed?;
        Some(SecretSpec {
            kind,
            store,
            path: raw.path.get_ref().clone(),
            strategy,
            cadence: cadence_value,
            cadence_is_default: cadence.is_none(),
            defined_at: self.at(file, def.span.clone()),
        })
    }

    /// A JWT signing key's settings: where its JWKS is published, and times that fit the
    /// cadence (`cadence` is `None` when it was refused already).
    fn jwt(&mut self, name: &str, def: &Def<raw::Secret>, cadence: Option<Duration>) -> Option<JwtSpec> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("secrets.{name}.{f}");
        if let Some(overlap) = &raw.overlap {
            self.errors.push(
                Diagnostic::error(self.at(file, overlap.span()), field("overlap"), "a JWT key's overlap follows from its times: it is published jwks_cache before it signs, and stays published max_token_lifetime + clock_skew after it stops")
                    .with_help("remove overlap; set jwks_cache, max_token_lifetime and clock_skew if the defaults (1h, 1h, 5m) do not fit"),
            );
        }
        let duration = |d: &Option<Spanned<Duration>>, default: u64| {
            d.as_ref().map_or(Duration::from_secs(default), |d| *d.get_ref())
        };
        let jwks_cache = duration(&raw.jwks_cache, DEFAULT_JWKS_CACHE);
        let max_token_lifetime = duration(&raw.max_token_lifetime, DEFAULT_MAX_TOKEN_LIFETIME);
        let clock_skew = duration(&raw.clock_skew, DEFAULT_CLOCK_SKEW);
        let total = Duration::from_secs(jwks_cache.as_secs() + max_token_lifetime.as_secs() + clock_skew.as_secs());
        if let Some(cadence) = cadence
            && total >= cadence
        {
            let span =
                raw.max_token_lifetime.as_ref().or(raw.jwks_cache.as_ref()).map_or(def.span.clone(), Spanned::span);
            self.error(file, span, field("max_token_lifetime"), format!("jwks_cache + max_token_lifetime + clock_skew ({total}) must be shorter than the cadence {cadence}: a rotation must finish before the next is due"));
        }
        let Some(jwks) = &raw.jwks else {
            self.errors.push(
                Diagnostic::error(self.at(file, def.span.clone()), field("jwks"), "a jwt_signing_key secret needs `jwks`, where verifiers fetch its public keys")
                    .with_help("write jwks = { publish = \"s3\", bucket = \"…\", key = \"….json\" }, { publish = \"vault_kv\", path = \"…\" } or { publish = \"file\", path = \"/srv/….json\" }"),
            );
            return None;
        };
        let jwks_field = |f: &str| format!("secrets.{name}.jwks.{f}");
        let raw_jwks = jwks.get_ref();
        let kind = *raw_jwks.publish.get_ref();
        let need = |loader: &mut Self, value: &Option<Spanned<String>>, name: &str, publish: &str| match value {
            Some(v) if !v.get_ref().trim().is_empty() => Some(v.get_ref().clone()),
            Some(v) => {
                loader.error(file, v.span(), jwks_field(name), format!("{name} is empty"));
                None
            }
            None => {
                loader.error(file, jwks.span(), jwks_field(name), format!("publish = \"{publish}\" needs `{name}`"));
                None
            }
        };
        let refuse = |loader: &mut Self, value: &Option<Spanned<String>>, name: &str, publish: &str| {
            if let Some(v) = value {
                loader.error(
                    file,
                    v.span(),
                    jwks_field(name),
                    format!("{name} does not apply to publish = \"{publish}\""),
                );
            }
        };
        let target = match kind {
            raw::JwksPublish::S3 => {
                refuse(self, &raw_jwks.path, "path", "s3");
                self.require_store(
                    StoreKind::AwsSecretsManager,
                    self.at(file, raw_jwks.publish.span()),
                    jwks_field("publish"),
                );
                let bucket = need(self, &raw_jwks.bucket, "bucket", "s3");
                let key = need(self, &raw_jwks.key, "key", "s3");
                JwksTarget::S3 { bucket: bucket?, key: key? }
            }
            raw::JwksPublish::VaultKv => {
                refuse(self, &raw_jwks.bucket, "bucket", "vault_kv");
                refuse(self, &raw_jwks.key, "key", "vault_kv");
                self.require_store(StoreKind::VaultKv, self.at(file, raw_jwks.publish.span()), jwks_field("publish"));
                JwksTarget::VaultKv { path: need(self, &raw_jwks.path, "path", "vault_kv")? }
            }
            raw::JwksPublish::File => {
                refuse(self, &raw_jwks.bucket, "bucket", "file");
                refuse(self, &raw_jwks.key, "key", "file");
                let path = need(self, &raw_jwks.path, "path", "file")?;
                JwksTarget::File { path: resolve_path(&self.folder_of(file), Path::new(&path)) }
            }
        };
        Some(JwtSpec {
            algorithm: raw.algorithm.as_ref().map_or(Algorithm::Es256, |a| *a.get_ref()),
            jwks: target,
            jwks_cache,
            max_token_lifetime,
            clock_skew,
        })
    }

    /// Checks that `reference` names a defined target of `engine`.
    fn check_target_ref(
        &mut self,
        file: usize,
        reference: &Spanned<String>,
        field: &str,
        engine: Engine,
        raw_targets: &BTreeMap<String, Def<raw::Target>>,
        targets: &BTreeMap<String, Target>,
    ) {
        let name = reference.get_ref();
        let location = self.at(file, reference.span());
        let Some(def) = raw_targets.get(name) else {
            self.missing_reference(file, reference, field.to_owned(), "targets", raw_targets.keys());
            return;
        };
        if let Some(target) = targets.get(name)
            && target.engine != engine
        {
            let target_at = self.at(def.file, def.value.kind.span());
            self.errors.push(
                Diagnostic::error(
                    location,
                    field,
                    format!("target `{name}` is a {} database; this needs {}", target.engine.as_str(), engine.as_str()),
                )
                .with_related(target_at, format!("`{name}`'s kind is set here")),
            );
        }
    }

    fn policy(&mut self, file: usize, raw: &Spanned<raw::Policy>, field: &str) -> PasswordPolicy {
        let defaults = PasswordPolicy::default();
        let raw_policy = raw.get_ref();
        let length = raw_policy.length.as_ref().map_or(defaults.length, |l| *l.get_ref());
        if let Some(l) = &raw_policy.length
            && !(PasswordPolicy::MIN_LENGTH..=PasswordPolicy::MAX_LENGTH).contains(&length)
        {
            self.error(
                file,
                l.span(),
                format!("{field}.length"),
                format!("length {length} is outside {}..={}", PasswordPolicy::MIN_LENGTH, PasswordPolicy::MAX_LENGTH),
            );
        }
        let mut classes = raw_policy.classes.as_ref().map_or(defaults.classes, |c| c.get_ref().clone());
        classes.sort();
        classes.dedup();
        let exclude = raw_policy.exclude.as_ref().map_or_else(String::new, |e| e.get_ref().clone());
        if let Some(c) = &raw_policy.classes
            && classes.is_empty()
        {
            self.error(
                file,
                c.span(),
                format!("{field}.classes"),
                "classes is empty; list some of \"lower\", \"upper\", \"digit\", \"symbol\"",
            );
        }
        for class in &classes {
            if class.chars().chars().all(|ch| exclude.contains(ch)) {
                let span = raw_policy.exclude.as_ref().map_or(raw.span(), Spanned::span);
                self.error(
                    file,
                    span,
                    format!("{field}.exclude"),
                    format!("exclude removes every character of class {}", class_name(*class)),
                );
            }
        }
        if classes.len() > length {
            self.error(
                file,
                raw.span(),
                format!("{field}.length"),
                "length is shorter than the number of classes each password must contain",
            );
        }
        PasswordPolicy { length, classes, exclude }
    }

    fn backup(
        &mut self,
        name: &str,
        def: &Def<raw::Backup>,
        raw_targets: &BTreeMap<String, Def<raw::Target>>,
        targets: &BTreeMap<String, Target>,
    ) -> Option<BackupSet> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("backups.{name}.{f}");
        let errors_before = self.errors.len();
        if !raw_targets.contains_key(raw.target.get_ref()) {
            self.missing_reference(file, &raw.target, field("target"), "targets", raw_targets.keys());
        }
        let schedule = self.cron(file, &raw.schedule, field("schedule"));
        let is_rds =
            raw_targets.get(raw.target.get_ref()).is_some_and(|t| *t.value.kind.get_ref() == raw::TargetKind::Rds);
        let method = if is_rds { self.rds_method(name, def) } else { self.dump_method(name, def) };
        let retention = match &raw.retention {
            None => Retention::default(),
            Some(r) => {
                let defaults = Retention::default();
                let given = r.get_ref();
                let retention = Retention {
                    keep_last: given.keep_last.unwrap_or(defaults.keep_last),
                    daily: given.daily.unwrap_or(defaults.daily),
                    weekly: given.weekly.unwrap_or(defaults.weekly),
                    monthly: given.monthly.unwrap_or(defaults.monthly),
                };
                if retention.keep_last == 0 {
                    self.error(
                        file,
                        r.span(),
                        field("retention.keep_last"),
                        "keep_last must be at least 1: the newest backup is always kept",
                    );
                }
                retention
            }
        };
        let schedule = schedule?;
        if self.errors.len() > errors_before {
            return None;
        }
        // A target refused on its own (and reported there) leaves the set unresolved.
        let target_name = raw.target.get_ref().clone();
        let target = targets.get(&target_name)?.clone();
        let method = match method? {
            // An rds target names its instance (the target's own check refuses one without).
            MethodOf::Rds { copy } => BackupMethod::RdsSnapshot { instance: target.rds_instance.clone()?, copy },
            MethodOf::Dump(method) => method,
        };
        Some(BackupSet {
            target: Named { name: target_name, value: target },
            schedule,
            method,
            retention,
            defined_at: self.at(file, def.span.clone()),
        })
    }

    /// An RDS target's set: snapshots, optionally copied to another region.
    fn rds_method(&mut self, name: &str, def: &Def<raw::Backup>) -> Option<MethodOf> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("backups.{name}.{f}");
        let dump_only = [
            ("store", raw.store.as_ref().map(Spanned::span)),
            ("key_service", raw.key_service.as_ref().map(Spanned::span)),
            ("bucket", raw.bucket.as_ref().map(Spanned::span)),
            ("path", raw.path.as_ref().map(Spanned::span)),
            ("object_lock", raw.object_lock.as_ref().map(Spanned::span)),
            ("sse_kms_key_id", raw.sse_kms_key_id.as_ref().map(Spanned::span)),
        ];
        for (name, span) in dump_only {
            if let Some(span) = span {
                self.error(
                    file,
                    span,
                    field(name),
                    "an rds target is backed up by DB snapshot; store and key settings apply to dump backups (for a logical dump of an RDS database, define a postgres or mysql target at its endpoint)",
                );
            }
        }
        if self.aws_at.is_none() {
            let location = self.at(file, raw.target.span());
            self.require_store(StoreKind::AwsSecretsManager, location, field("target"));
        }
        let copy = match (&raw.copy_to_region, &raw.copy_kms_key_id) {
            (Some(region), kms) => Some(RdsCopy {
                region: region.get_ref().clone(),
                kms_key_id: kms.as_ref().map(|k| k.get_ref().clone()),
            }),
            (None, Some(kms)) => {
                self.error(file, kms.span(), field("copy_kms_key_id"), "copy_kms_key_id needs copy_to_region");
                None
            }
            (None, None) => None,
        };
        Some(MethodOf::Rds { copy })
    }

    /// A postgres or mysql target's set: dumps to a store, under a key service.
    fn dump_method(&mut self, name: &str, def: &Def<raw::Backup>) -> Option<MethodOf> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("backups.{name}.{f}");
        let base = self.folder_of(file);
        for (name, value) in [("copy_to_region", &raw.copy_to_region), ("copy_kms_key_id", &raw.copy_kms_key_id)] {
            if let Some(value) = value {
                self.error(file, value.span(), field(name), "snapshot copies apply to rds targets only");
            }
        }
        let Some(store_kind) = &raw.store else {
            self.error(
                file,
                def.span.clone(),
                field("store"),
                "a backup set needs store = \"s3\" (with bucket) or \"local\" (with path)",
            );
            return None;
        };
        let Some(key_service) = &raw.key_service else {
            self.error(
                file,
                def.span.clone(),
                field("key_service"),
                "a backup set needs key_service = \"aws_kms\", \"vault_transit\" (with key_id) or \"local\" (with key_file)",
            );
            return None;
        };
        let store = match store_kind.get_ref() {
            raw::ObjectStoreKind::S3 => {
                if let Some(path) = &raw.path {
                    self.error(
                        file,
                        path.span(),
                        field("path"),
                        "path applies to store = \"local\"; S3 backups use bucket and prefix",
                    );
                }
                if self.aws_at.is_none() {
                    let location = self.at(file, store_kind.span());
                    self.require_store(StoreKind::AwsSecretsManager, location, field("store"));
                }
                let object_lock = raw.object_lock.as_ref().map(|lock| ObjectLock {
                    mode: match lock.get_ref().mode {
                        raw::ObjectLockMode::Governance => "GOVERNANCE".to_owned(),
                        raw::ObjectLockMode::Compliance => "COMPLIANCE".to_owned(),
                    },
                    retain: *lock.get_ref().retain.get_ref(),
                });
                match &raw.bucket {
                    Some(bucket) => ObjectStore::S3 {
                        bucket: bucket.get_ref().clone(),
                        prefix: raw.prefix.clone().unwrap_or_default(),
                        sse_kms_key_id: raw.sse_kms_key_id.as_ref().map(|k| k.get_ref().clone()),
                        object_lock,
                    },
                    None => {
                        self.error(file, store_kind.span(), field("bucket"), "an s3 backup set needs `bucket`");
                        return None;
                    }
                }
            }
            raw::ObjectStoreKind::Local => {
                if let Some(bucket) = &raw.bucket {
                    self.error(file, bucket.span(), field("bucket"), "bucket applies to store = \"s3\"");
                }
                for (name, span) in [
                    ("object_lock", raw.object_lock.as_ref().map(Spanned::span)),
                    ("sse_kms_key_id", raw.sse_kms_key_id.as_ref().map(Spanned::span)),
                ] {
                    if let Some(span) = span {
                        self.error(file, span, field(name), "applies to store = \"s3\" only");
                    }
                }
                match &raw.path {
                    Some(path) => ObjectStore::Local { path: resolve_path(&base, path.get_ref()) },
                    None => {
                        self.error(
                            file,
                            store_kind.span(),
                            field("path"),
                            "a local backup set needs `path`, the folder backups are written to",
                        );
                        return None;
                    }
                }
            }
        };
        let key_id = raw.key_id.as_ref().map(|k| k.get_ref().clone());
        let key_service = match (key_service.get_ref(), key_id, &raw.key_file) {
            (raw::KeyServiceKind::AwsKms, Some(key_id), None) => {
                if self.aws_at.is_none() {
                    let location = self.at(file, key_service.span());
                    self.require_store(StoreKind::AwsSecretsManager, location, field("key_service"));
                }
                KeyService::AwsKms { key_id }
            }
            (raw::KeyServiceKind::VaultTransit, Some(key), None) => {
                let location = self.at(file, key_service.span());
                self.require_store(StoreKind::VaultKv, location, field("key_service"));
                KeyService::VaultTransit { key }
            }
            (raw::KeyServiceKind::Local, None, Some(key_file)) => {
                KeyService::Local { key_file: resolve_path(&base, key_file.get_ref()) }
            }
            (raw::KeyServiceKind::Local, _, _) => {
                self.error(
                    file,
                    key_service.span(),
                    field("key_file"),
                    "key_service = \"local\" takes key_file (and no key_id)",
                );
                return None;
            }
            (_, _, _) => {
                self.error(
                    file,
                    key_service.span(),
                    field("key_id"),
                    "key_service = \"aws_kms\" or \"vault_transit\" takes key_id (and no key_file)",
                );
                return None;
            }
        };
        Some(MethodOf::Dump(BackupMethod::Dump { store, key_service }))
    }

    fn drill(
        &mut self,
        name: &str,
        def: &Def<raw::Drill>,
        raw_targets: &BTreeMap<String, Def<raw::Target>>,
        targets: &BTreeMap<String, Target>,
        raw_backups: &BTreeMap<String, Def<raw::Backup>>,
        backups: &BTreeMap<String, BackupSet>,
    ) -> Option<Drill> {
        let raw = &def.value;
        let file = def.file;
        let field = |f: &str| format!("drills.{name}.{f}");
        let errors_before = self.errors.len();
        let base = self.folder_of(file);
        let backup_name = raw.backup.get_ref();
        let scratch_name = raw.scratch.get_ref();
        match raw_backups.get(backup_name) {
            None => self.missing_reference(file, &raw.backup, field("backup"), "backups", raw_backups.keys()),
            Some(backup_def) => {
                let backup_target = backup_def.value.target.get_ref();
                if backup_target == scratch_name {
                    let location = self.at(file, raw.scratch.span());
                    let target_at = self.at(backup_def.file, backup_def.value.target.span());
                    self.errors.push(
                        Diagnostic::error(location, field("scratch"), format!("`{scratch_name}` is the backup's own target; a drill restores into a scratch database, never the one backed up"))
                            .with_related(target_at, format!("backup set `{backup_name}` backs up `{backup_target}` here")),
                    );
                } else if let Some(backup) = backups.get(backup_name)
                    && raw_targets.contains_key(scratch_name)
                {
                    let source = backup.target.value.engine;
                    self.check_target_ref(file, &raw.scratch, &field("scratch"), source, raw_targets, targets);
                }
            }
        }
        if !raw_targets.contains_key(scratch_name) {
            self.missing_reference(file, &raw.scratch, field("scratch"), "targets", raw_targets.keys());
        }
        let schedule = raw.schedule.as_ref().map(|s| self.cron(file, s, field("schedule")));
        let runbook = raw.runbook.as_ref().map(|r| {
            let path = resolve_path(&base, r.get_ref());
            if !path.is_file() {
                self.error(
                    file,
                    r.span(),
                    field("runbook"),
                    format!("runbook {} does not exist (paths are relative to the schedule file)", path.display()),
                );
            }
            path
        });
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Drill {
            backup: backup_name.clone(),
            scratch: scratch_name.clone(),
            schedule: schedule.flatten(),
            rpo: raw.rpo.as_ref().map_or(DEFAULT_RPO, |r| *r.get_ref()),
            rto: raw.rto.as_ref().map_or(DEFAULT_RTO, |r| *r.get_ref()),
            runbook,
            defined_at: self.at(file, def.span.clone()),
        })
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

fn class_name(class: CharClass) -> &'static str {
    match class {
        CharClass::Lower => "lower",
        CharClass::Upper => "upper",
        CharClass::Digit => "digit",
        CharClass::Symbol => "symbol",
    }
}

/// Names become store paths, metric labels and file names: keep them plain.
/// A backup set's method as its own fields give it, before its target is resolved.
enum MethodOf {
    /// A dump, complete.
    Dump(BackupMethod),
    /// An RDS snapshot, whose instance comes from the target.
    Rds { copy: Option<RdsCopy> },
}

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
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        assert!(check_name("orders-pg_1").is_ok());
        for bad in ["", "Orders", "-x", "a b", "a.b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_in_urls_are_spotted() {
        assert!(url_has_password("postgres://vigil:pw@db:5432/vigil"));
        assert!(!url_has_password("postgres://vigil@db:5432/vigil"));
        assert!(!url_has_password("postgres://db:5432/vigil?user=a"));
    }
}
