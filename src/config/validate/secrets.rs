//! `[secrets.NAME]`: each kind's own fields, strategies, cadences, JWT settings and password
//! policies.

use std::collections::BTreeMap;
use std::path::Path;

use serde_spanned::Spanned;

use super::super::diagnostic::Diagnostic;
use super::super::raw;
use super::super::{ApiKey, DbPassword, JwksTarget, JwtKey, JwtSpec, Named, SecretKind, SecretSpec, Strategy, Target};
use super::*;
use crate::jwks::Algorithm;
use crate::schedule::{Duration, Window};
use crate::secret::{CharClass, PasswordPolicy, StoreKind, resolve_path};

impl Loader {
    /// One secret's plan: the fields every kind has, then the kind's own.
    pub(super) fn secret(
        &mut self,
        name: &str,
        def: &Def<raw::Secret>,
        raw_targets: &BTreeMap<String, Def<raw::Target>>,
        targets: &BTreeMap<String, Target>,
    ) -> Option<SecretSpec> {
        let file = def.file;
        let field = |f: &str| format!("secrets.{name}.{f}");
        let errors_before = self.errors.len();
        let common = def.value.common();
        let store = *common.store.get_ref();
        let location = self.at(file, common.store.span());
        self.require_store(store, location, field("store"));
        if common.path.get_ref().trim().is_empty() {
            self.error(file, common.path.span(), field("path"), "path is empty; name the secret in its store");
        }

        let cadence = common.cadence.map(|c| *c.get_ref());
        // Checks that compare other durations with the cadence are skipped when the cadence
        // itself is refused: one mistake, one error.
        let mut cadence_ok = true;
        if let Some(c) = common.cadence
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
        let window = common.window.and_then(|w| match Window::parse(w.get_ref()) {
            Ok(window) => Some(window),
            Err(err) => {
                self.error(file, w.span(), field("window"), err.to_string());
                None
            }
        });
        let cadence_value = cadence.unwrap_or_else(|| common.kind.default_cadence());
        let checked_cadence = cadence_ok.then_some(cadence_value);

        let typed = match &def.value {
            raw::Secret::Password(engine, raw) => {
                self.check_target_ref(file, &raw.target, &field("target"), *engine, raw_targets, targets);
                let target = raw.target.get_ref();
                let target = targets.get(target).map(|value| Named { name: target.clone(), value: value.clone() });
                self.password(name, def, *engine, raw, checked_cadence, target)
            }
            raw::Secret::ApiKey(raw) => self.api_key(name, def, raw, checked_cadence),
            raw::Secret::JwtSigningKey(raw) => self.jwt(name, def, raw, checked_cadence).map(|jwt| {
                let window = jwt.retention();
                (SecretKind::JwtSigningKey(JwtKey { jwt }), Strategy::Overlap { window })
            }),
        };
        if self.errors.len() > errors_before {
            return None;
        }
        // Only a target refused on its own (and reported there) leaves a password unresolved:
        // one mistake, one error.
        let (kind, strategy) = typed?;
        Some(SecretSpec {
            kind,
            store,
            path: common.path.get_ref().clone(),
            strategy,
            cadence: cadence_value,
            cadence_is_default: cadence.is_none(),
            window,
            defined_at: self.at(file, def.span.clone()),
        })
    }

    /// A database password: its user, how it alternates, and its policy; `target` is its
    /// target, checked already (`None` when refused there).
    fn password(
        &mut self,
        name: &str,
        def: &Def<raw::Secret>,
        engine: Engine,
        raw: &raw::PasswordSecret,
        cadence: Option<Duration>,
        target: Option<Named<Target>>,
    ) -> Option<(SecretKind, Strategy)> {
        let file = def.file;
        let field = |f: &str| format!("secrets.{name}.{f}");
        // A user name reaches password files and SQL text: nothing that ends a line there.
        for (name, user) in [("username", Some(&raw.username)), ("clone_username", raw.clone_username.as_ref())] {
            if let Some(user) = user
                && (user.get_ref().is_empty() || user.get_ref().chars().any(char::is_control))
            {
                self.error(
                    file,
                    user.span(),
                    field(name),
                    "a database user name must be non-empty, without control characters (CR, LF, NUL, …)",
                );
            }
        }
        let strategy = match raw.strategy.as_ref().map(|s| *s.get_ref()) {
            None | Some(raw::PasswordStrategy::SingleUser) => {
                for (name, value) in [
                    ("clone_username", raw.clone_username.as_ref().map(Spanned::span)),
                    ("min_flip_interval", raw.min_flip_interval.as_ref().map(Spanned::span)),
                ] {
                    if let Some(span) = value {
                        let why = format!("{name} applies to strategy = \"alternating_users\" only");
                        self.error(file, span, field(name), why);
                    }
                }
                Strategy::SingleUser
            }
            Some(raw::PasswordStrategy::AlternatingUsers) => {
                let min_flip_interval =
                    raw.min_flip_interval.as_ref().map_or(DEFAULT_MIN_FLIP_INTERVAL, |m| *m.get_ref());
                if let Some(cadence) = cadence
                    && min_flip_interval > cadence
                {
                    let span = raw.min_flip_interval.as_ref().map_or(def.span.clone(), Spanned::span);
                    self.error(file, span, field("min_flip_interval"), format!("min_flip_interval {min_flip_interval} is longer than the cadence {cadence}: every rotation would be refused"));
                }
                let username = raw.username.get_ref();
                let clone_username =
                    raw.clone_username.as_ref().map_or_else(|| format!("{username}_clone"), |c| c.get_ref().clone());
                if &clone_username == username
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
        };
        let policy =
            raw.policy.as_ref().map_or_else(PasswordPolicy::default, |p| self.policy(file, p, &field("policy")));
        let db = DbPassword {
            target: target?,
            username: raw.username.get_ref().clone(),
            policy,
            probes: raw.probes.as_ref().map(|p| p.get_ref().clone()).unwrap_or_default(),
        };
        let kind = match engine {
            Engine::Postgres => SecretKind::PostgresPassword(db),
            Engine::Mysql => SecretKind::MysqlPassword(db),
        };
        Some((kind, strategy))
    }

    /// An API key: its issuer, and how long both keys work.
    fn api_key(
        &mut self,
        name: &str,
        def: &Def<raw::Secret>,
        raw: &raw::ApiKeySecret,
        cadence: Option<Duration>,
    ) -> Option<(SecretKind, Strategy)> {
        let file = def.file;
        let field = |f: &str| format!("secrets.{name}.{f}");
        let window = raw.overlap.as_ref().map_or(DEFAULT_OVERLAP, |o| *o.get_ref());
        if let Some(cadence) = cadence
            && window >= cadence
        {
            let span = raw.overlap.as_ref().map_or(def.span.clone(), Spanned::span);
            self.error(
                file,
                span,
                field("overlap"),
                format!("overlap {window} must be shorter than the cadence {cadence}, or old credentials pile up"),
            );
        }
        let issuer = raw.issuer.get_ref();
        self.check_service_url(file, &issuer.url, &field("issuer.url"), issuer.allow_insecure_http.as_ref());
        self.check_ref(&issuer.token, file, field("issuer.token"));
        let ca_file = self.check_ca_file(file, issuer.ca_file.as_ref(), &field("issuer.ca_file"));
        let issuer = super::super::Issuer {
            url: issuer.url.get_ref().clone(),
            token: issuer.token.get_ref().clone().rebase(&self.folder_of(file)),
            ca_file,
        };
        Some((SecretKind::ApiKey(ApiKey { issuer }), Strategy::Overlap { window }))
    }

    /// A JWT signing key's settings: where its JWKS is published, and times that fit the
    /// cadence (`cadence` is `None` when it was refused already).
    fn jwt(
        &mut self,
        name: &str,
        def: &Def<raw::Secret>,
        raw: &raw::JwtSecret,
        cadence: Option<Duration>,
    ) -> Option<JwtSpec> {
        let file = def.file;
        let field = |f: &str| format!("secrets.{name}.{f}");
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
        let jwks = &raw.jwks;
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

    pub(super) fn policy(&mut self, file: usize, raw: &Spanned<raw::Policy>, field: &str) -> PasswordPolicy {
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
        let policy = PasswordPolicy { length, classes, exclude };
        let bits = policy.entropy_bits();
        if bits < PasswordPolicy::MIN_ENTROPY_BITS && !classes_empty_or_excluded(&policy) {
            self.error(
                file,
                raw.span(),
                field.to_owned(),
                format!(
                    "this policy gives {bits:.0} bits of entropy (length × log2 of the characters allowed); at least {:.0} are needed: make passwords longer or allow more classes",
                    PasswordPolicy::MIN_ENTROPY_BITS
                ),
            );
        }
        policy
    }
}

/// Says in `kind`'s terms what serde said of a secret's table: a field that belongs to another
/// kind, a field this kind needs, a strategy it does not take. Anything else (a misspelt field,
/// say) keeps serde's words, whose list of expected fields says it best.
pub(super) fn explain(kind: raw::SecretKind, diagnostic: &mut Diagnostic) {
    use raw::SecretKind::{ApiKey, JwtSigningKey, MysqlPassword, PostgresPassword};
    let name = kind.as_str();
    let quoted = |prefix: &str| {
        let rest = diagnostic.message.strip_prefix(prefix)?;
        Some(rest.split_once('`')?.0.to_owned())
    };
    let (message, help): (String, Option<&str>) = if let Some(field) = quoted("unknown field `") {
        match (kind, field.as_str()) {
            (JwtSigningKey, "overlap") => (
                "a JWT key's overlap follows from its times: it is published jwks_cache before it signs, and stays published max_token_lifetime + clock_skew after it stops".into(),
                Some("remove overlap; set jwks_cache, max_token_lifetime and clock_skew if the defaults (1h, 1h, 5m) do not fit"),
            ),
            (_, "algorithm" | "jwks" | "jwks_cache" | "max_token_lifetime" | "clock_skew") => {
                (format!("{field} applies to jwt_signing_key secrets only"), None)
            }
            (_, "issuer") => ("issuer applies to api_key secrets only".into(), None),
            (_, "target" | "username" | "clone_username" | "min_flip_interval" | "probes") => {
                (format!("{name} secrets have no database target"), None)
            }
            (_, "policy") => (
                "the issuer or key generator decides what these values look like; policy applies to passwords".into(),
                None,
            ),
            (_, "overlap") => (
                "overlap applies to api_key and jwt_signing_key secrets; database passwords use single_user or alternating_users".into(),
                None,
            ),
            _ => return,
        }
    } else if let Some(field) = quoted("missing field `") {
        match (kind, field.as_str()) {
            (PostgresPassword | MysqlPassword, "target") => {
                (format!("a {name} secret needs `target`, the database whose user it rotates"), None)
            }
            (PostgresPassword | MysqlPassword, "username") => {
                (format!("a {name} secret needs `username`, the database user"), None)
            }
            (ApiKey, "issuer") => (
                "an api_key secret needs `issuer`, the service that issues and revokes its keys".into(),
                Some(
                    "write issuer = { url = \"https://…\", token = { file = \"/path\" } }; docs/api-key-issuer.md has the contract",
                ),
            ),
            (JwtSigningKey, "jwks") => (
                "a jwt_signing_key secret needs `jwks`, where verifiers fetch its public keys".into(),
                Some(
                    "write jwks = { publish = \"s3\", bucket = \"…\", key = \"….json\" }, { publish = \"vault_kv\", path = \"…\" } or { publish = \"file\", path = \"/srv/….json\" }",
                ),
            ),
            _ => return,
        }
    } else if diagnostic.message.starts_with("unknown variant `") && diagnostic.field.ends_with(".strategy") {
        match kind {
            PostgresPassword | MysqlPassword => (
                "database passwords rotate with \"single_user\" or \"alternating_users\"; \"overlap\" is for api_key and jwt_signing_key".into(),
                None,
            ),
            ApiKey | JwtSigningKey => (format!("{name} secrets rotate with strategy = \"overlap\""), None),
        }
    } else {
        return;
    };
    diagnostic.message = message;
    diagnostic.help = help.map(str::to_owned);
}

/// Whether the policy's alphabet problem was already reported (no class, or one emptied by
/// `exclude`): one mistake, one error.
fn classes_empty_or_excluded(policy: &PasswordPolicy) -> bool {
    policy.classes.is_empty() || policy.classes.iter().any(|c| c.chars().chars().all(|ch| policy.exclude.contains(ch)))
}

fn class_name(class: CharClass) -> &'static str {
    match class {
        CharClass::Lower => "lower",
        CharClass::Upper => "upper",
        CharClass::Digit => "digit",
        CharClass::Symbol => "symbol",
    }
}
