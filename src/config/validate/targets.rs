//! `[targets.NAME]`: databases, and references to them from other sections.

use std::collections::BTreeMap;

use serde_spanned::Spanned;

use super::super::diagnostic::Diagnostic;
use super::super::raw;
use super::super::{Engine, Target};
use super::*;
use crate::tls::{Tls, TlsMode};

impl Loader {
    pub(super) fn target(&mut self, name: &str, def: &Def<raw::Target>) -> Option<Target> {
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
        if let Some(credential) = &raw.backup_credential {
            self.check_ref(credential, file, field("backup_credential"));
        }
        let tls = self.tls(file, raw.tls.as_ref(), &field("tls"), raw.host.get_ref());
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
            backup_credential: raw.backup_credential.as_ref().map(|c| c.get_ref().clone().rebase(&base)),
            tls,
            defined_at: self.at(file, def.span.clone()),
        })
    }

    /// A connection's `tls` line: verify-full unless it says otherwise; `disable` to a host
    /// other than this machine is warned about, since the password then crosses the network
    /// in the clear.
    pub(super) fn tls(&mut self, file: usize, raw: Option<&Spanned<raw::Tls>>, field: &str, host: &str) -> Tls {
        let Some(raw) = raw else { return Tls::default() };
        let mode = match &raw.get_ref().mode {
            None => TlsMode::default(),
            Some(mode) => TlsMode::parse(mode.get_ref()).unwrap_or_else(|| {
                let known = TlsMode::ALL.map(|(name, _)| format!("\"{name}\"")).join(", ");
                self.error(
                    file,
                    mode.span(),
                    format!("{field}.mode"),
                    format!("unknown TLS mode \"{}\"; use one of {known}", mode.get_ref()),
                );
                TlsMode::default()
            }),
        };
        let ca = raw.get_ref().ca_file.as_ref();
        let ca_file = if mode.verifies() {
            self.check_ca_file(file, ca, &format!("{field}.ca_file"))
        } else {
            ca.map(|ca| {
                self.warnings.push(Diagnostic::warning(
                    self.at(file, ca.span()),
                    format!("{field}.ca_file"),
                    format!("ca_file is not used with mode \"{}\", which checks no certificate", mode.as_str()),
                ));
                self.folder_of(file).join(ca.get_ref())
            })
        };
        if let Some(written) = &raw.get_ref().mode
            && mode == TlsMode::Disable
            && !crate::tls::is_loopback(host)
        {
            self.warnings.push(Diagnostic::warning(
                self.at(file, written.span()),
                format!("{field}.mode"),
                format!("TLS is disabled to {host}: the password and every row cross the network in the clear"),
            ));
        }
        Tls { mode, ca_file }
    }

    /// Checks that `reference` names a defined target of `engine`.
    pub(super) fn check_target_ref(
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
}
