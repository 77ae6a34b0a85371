//! `vigil.toml`: the controller, evidence, `[aws]` and `[vault]` sections.

use std::path::{Path, PathBuf};

use serde_spanned::Spanned;

use super::super::diagnostic::Diagnostic;
use super::super::raw;
use super::super::{Controller, Daemon, Evidence};
use super::*;
use crate::aws::{AwsCredentials, AwsSettings as Aws};
use crate::objects;
use crate::secret::resolve_path;
use crate::state::StateStore as EvidenceStore;
use crate::stores::VaultSettings as Vault;
use crate::webhooks;

/// Where `vigil run` serves health and metrics unless `[daemon] listen` says otherwise:
/// loopback only.
const DEFAULT_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9746);

impl Loader {
    pub(super) fn controller(&mut self, raw: Option<&Spanned<raw::ControllerSection>>, base: &Path) -> Controller {
        let raw = raw.map(Spanned::get_ref);
        let data_dir = raw
            .and_then(|c| c.data_dir.clone())
            .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), |dir| resolve_path(base, &dir));
        let schedules_dir = raw
            .and_then(|c| c.schedules.as_ref())
            .map_or_else(|| resolve_path(base, Path::new("schedules")), |dir| resolve_path(base, dir.get_ref()));
        Controller { data_dir, schedules_dir }
    }

    pub(super) fn daemon(&mut self, raw: Option<&Spanned<raw::DaemonSection>>) -> Daemon {
        let file = self.config_file;
        let raw = raw.map(Spanned::get_ref);
        let listen = raw.and_then(|d| d.listen.as_ref()).and_then(|listen| match listen.get_ref().parse::<std::net::SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    file,
                    listen.span(),
                    "daemon.listen".into(),
                    "not an address and port; write e.g. \"127.0.0.1:9746\" (loopback) or \"0.0.0.0:9746\" (every interface)",
                );
                None
            }
        });
        let concurrency = raw.and_then(|d| d.concurrency.as_ref()).and_then(|n| match usize::try_from(*n.get_ref()) {
            Ok(n @ 1..=256) => Some(n),
            _ => {
                self.error(file, n.span(), "daemon.concurrency".into(), "concurrency must be between 1 and 256");
                None
            }
        });
        let shutdown_grace = raw.and_then(|d| d.shutdown_grace.as_ref()).and_then(|grace| {
            if grace.get_ref().as_secs() > 3_600 {
                self.error(file, grace.span(), "daemon.shutdown_grace".into(), "shutdown_grace must be at most 1h");
                None
            } else {
                Some(*grace.get_ref())
            }
        });
        let status_token = raw.and_then(|d| d.status_token.as_ref()).and_then(|token| {
            if matches!(token.get_ref(), crate::secret::SecretRef::Store { .. }) {
                let why = "the status token is read at each request: give it as { file = \"…\" } or { env = \"…\" }";
                self.error(file, token.span(), "daemon.status_token".into(), why);
                return None;
            }
            self.check_ref(token, file, "daemon.status_token".into());
            Some(token.get_ref().clone().rebase(&self.folder_of(file)))
        });
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && let Some(span) = raw.and_then(|d| d.listen.as_ref()).map(Spanned::span)
        {
            let why = if status_token.is_some() {
                "listens beyond this machine: /healthz, /readyz and /metrics answer anyone who reaches it (/status asks for the status token)"
            } else {
                "listens beyond this machine: /status (the secrets, their stores, what fails) and /metrics answer anyone who reaches it; set status_token, or listen on 127.0.0.1 behind a proxy"
            };
            self.warnings.push(Diagnostic::warning(self.at(file, span), "daemon.listen".to_owned(), why));
        }
        Daemon {
            status_token,
            listen: listen.unwrap_or(DEFAULT_LISTEN),
            concurrency: concurrency.unwrap_or(4),
            jitter: raw.and_then(|d| d.jitter).unwrap_or(Duration::from_secs(30)),
            check_interval: raw.and_then(|d| d.check_interval).unwrap_or(Duration::from_secs(3_600)),
            watch_interval: raw.and_then(|d| d.watch_interval).unwrap_or(Duration::from_secs(60)),
            verify_interval: raw.and_then(|d| d.verify_interval).unwrap_or(Duration::from_secs(3_600)),
            shutdown_grace: shutdown_grace.unwrap_or(Duration::from_secs(30)),
        }
    }

    pub(super) fn alerts(&mut self, raw: Option<&Spanned<raw::AlertsSection>>) -> Vec<webhooks::Settings> {
        let file = self.config_file;
        let base = self.folder_of(file);
        let mut out = Vec::new();
        let Some(raw) = raw.map(Spanned::get_ref) else { return out };
        for (name, webhook) in &raw.webhooks {
            let field = |f: &str| format!("alerts.webhooks.{name}.{f}");
            if let Err(why) = check_name(name) {
                self.error(file, webhook.span(), format!("alerts.webhooks.{name}"), why);
            }
            let webhook = webhook.get_ref();
            self.check_ref(&webhook.url, file, field("url"));
            let format = match &webhook.format {
                None => Some(webhooks::Format::Json),
                Some(format) => match format.get_ref().parse() {
                    Ok(format) => Some(format),
                    Err(why) => {
                        self.error(file, format.span(), field("format"), why);
                        None
                    }
                },
            };
            if let Some(format) = format {
                out.push(webhooks::Settings {
                    name: name.clone(),
                    url: webhook.url.get_ref().clone().rebase(&base),
                    format,
                    allow_insecure_http: webhook.allow_insecure_http.unwrap_or(false),
                });
            }
        }
        out
    }

    pub(super) fn evidence(
        &mut self,
        raw: Option<&Spanned<raw::EvidenceSection>>,
        base: &Path,
        data_dir: &Path,
    ) -> Evidence {
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
                    if ["sslmode=", "sslrootcert="].iter().any(|param| text.contains(param)) {
                        self.error(
                            file,
                            url.span(),
                            "evidence.url".into(),
                            "TLS is set by evidence.tls, not in the URL: remove sslmode and sslrootcert and write tls = { mode = \"verify-full\", ca_file = \"…\" }",
                        );
                    }
                    let tls = self.tls(file, raw.and_then(|e| e.tls.as_ref()), "evidence.tls", url_host(text));
                    EvidenceStore::Postgres {
                        url: text.clone(),
                        password: password.map(|p| p.get_ref().clone().rebase(base)),
                        tls,
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
        let trusted_vkey = raw.and_then(|e| e.trusted_vkey.as_ref()).and_then(|vkey| {
            match crate::evidence::NoteVerifier::parse(vkey.get_ref()) {
                Ok(_) => Some(vkey.get_ref().clone()),
                Err(err) => {
                    self.error(
                        file,
                        vkey.span(),
                        "evidence.trusted_vkey".into(),
                        format!("not a verifier key ({err}); copy the line `vigil evidence pubkey --vkey` prints"),
                    );
                    None
                }
            }
        });
        let witness = raw.and_then(|e| e.witness.as_ref()).and_then(|witness| {
            let w = witness.get_ref();
            match (w.store.get_ref().as_str(), &w.path, &w.bucket) {
                ("local", Some(path), None) => Some(objects::Settings::Local { path: resolve_path(base, path) }),
                ("s3", None, Some(bucket)) => Some(objects::Settings::S3 {
                    bucket: bucket.clone(),
                    prefix: w.prefix.clone().unwrap_or_else(|| "vigil-witness/".into()),
                    sse_kms_key_id: None,
                    object_lock: None,
                }),
                _ => {
                    self.error(
                        file,
                        witness.span(),
                        "evidence.witness".into(),
                        "write witness = { store = \"local\", path = \"/folder\" } or { store = \"s3\", bucket = \"…\", prefix = \"…\" }",
                    );
                    None
                }
            }
        });
        Evidence { store, signing_key, trusted_vkey, witness }
    }

    pub(super) fn aws(&mut self, raw: Spanned<raw::AwsSection>) -> Aws {
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

    pub(super) fn vault(&mut self, raw: Spanned<raw::VaultSection>) -> Vault {
        let file = self.config_file;
        let base = self.folder_of(file);
        let raw = raw.into_inner();
        self.check_service_url(file, &raw.address, "vault.address", raw.allow_insecure_http.as_ref());
        self.check_ref(&raw.token, file, "vault.token".into());
        let ca_file = self.check_ca_file(file, raw.ca_file.as_ref(), "vault.ca_file");
        Vault {
            address: raw.address.into_inner(),
            token: raw.token.into_inner().rebase(&base),
            kv_mount: raw.kv_mount.unwrap_or_else(|| "secret".into()),
            transit_mount: raw.transit_mount.unwrap_or_else(|| "transit".into()),
            namespace: raw.namespace,
            ca_file,
        }
    }
}
