//! The report as an OSCAL Assessment Results document (JSON): one observation and one finding
//! per control of `controls.toml`, the bundle's records as the evidence.
//!
//! Deterministic, like the other renderings: UUIDs are version 5, derived from the checkpoint
//! root, the period and each control, so the same report always gives the same bytes and
//! `vigil evidence verify --bundle` renders it again to compare.
//!
//! OSCAL has no place for an assessment without a plan, yet `import-ap` is required: it points
//! at a back-matter resource saying that the evidence is collected continuously by vigil, not
//! by a planned assessment. Controls outside NIST SP 800-53 have no OSCAL catalog; their ids
//! are prefixed with the framework (`soc2-cc6.1`, `iso27001-a.5.17`, `pci-dss-8.3.9`) and the
//! framework's own id is a property.

use serde_json::json;

use super::controls::{self, Control};
use super::model::{ControlEvidence, Report};

/// The OSCAL version the document is written against (compliance-trestle 5.2's models).
pub const OSCAL_VERSION: &str = "1.2.1";
/// The namespace of vigil's OSCAL properties.
const NS: &str = "https://github.com/vigil-dr/vigil/ns/oscal";

/// Renders `report` as OSCAL Assessment Results JSON.
pub fn render(report: &Report) -> String {
    let seed = format!("{}|{}|{}", report.integrity.checkpoint_root, report.period.from, report.period.to);
    let id = |what: &str| {
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("vigil:{seed}:{what}").as_bytes()).to_string()
    };
    let catalog = controls::catalog();
    let mut observations = Vec::new();
    let mut findings = Vec::new();
    let mut selected = Vec::new();
    for evidence in &report.controls {
        let token = catalog
            .iter()
            .find(|c| c.framework == evidence.framework && c.id == evidence.id)
            .map_or_else(|| token(&evidence.framework, &evidence.id, None), control_token);
        selected.push(json!({ "control-id": token }));
        let observation = id(&format!("observation:{token}"));
        observations.push(json!({
            "uuid": observation,
            "title": format!("{} {}: {}", evidence.framework, evidence.id, evidence.title),
            "description": description(evidence),
            "props": [
                { "name": "framework", "ns": NS, "value": evidence.framework },
                { "name": "control", "ns": NS, "value": evidence.id },
                { "name": "records", "ns": NS, "value": evidence.records.to_string() },
                { "name": "exceptions", "ns": NS, "value": evidence.exceptions.to_string() },
            ],
            "methods": ["EXAMINE", "TEST"],
            "types": ["control-objective"],
            "collected": report.generated_at,
            "relevant-evidence": [
                {
                    "href": "report/report.json",
                    "description": format!("The report's sections {}: every number recomputes from the records.", sections(evidence)),
                },
                {
                    "href": "records.jsonl",
                    "description": format!(
                        "Ledger records {} to {}, proved against the signed checkpoint of size {} (proof.json, checkpoint.note).",
                        report.integrity.first_seq, report.integrity.last_seq, report.integrity.checkpoint_size
                    ),
                },
            ],
        }));
        let state = if evidence.exceptions == 0 && evidence.records > 0 { "satisfied" } else { "not-satisfied" };
        let reason = if evidence.records == 0 {
            "no records in the period".to_owned()
        } else {
            format!("{} exceptions in the period", evidence.exceptions)
        };
        findings.push(json!({
            "uuid": id(&format!("finding:{token}")),
            "title": format!("{} {}", evidence.framework, evidence.id),
            "description": format!("{}: {reason}.", evidence.title),
            "target": {
                "type": "objective-id",
                "target-id": token,
                "status": { "state": state },
            },
            "related-observations": [{ "observation-uuid": observation }],
        }));
    }
    let plan = id("no-assessment-plan");
    let bundle = id("bundle");
    let document = json!({
        "assessment-results": {
            "uuid": id("document"),
            "metadata": {
                "title": format!("vigil compliance report {} to {}", report.period.from, report.period.to),
                "last-modified": report.generated_at,
                "version": report.format,
                "oscal-version": OSCAL_VERSION,
            },
            "import-ap": {
                "href": format!("#{plan}"),
                "remarks": "There is no assessment plan: vigil collects this evidence continuously as it rotates credentials, backs up and drills restores.",
            },
            "results": [{
                "uuid": id("result"),
                "title": format!("Controls evidenced by the vigil ledger, {} to {}", report.period.from, report.period.to),
                "description": format!(
                    "{} records of the signed evidence ledger ({} to {}). Verify offline with `vigil evidence verify --bundle bundle.tar --vkey VKEY`.",
                    report.records, report.integrity.first_seq, report.integrity.last_seq
                ),
                "start": report.period.from,
                "end": report.period.to,
                "reviewed-controls": { "control-selections": [{ "include-controls": selected }] },
                "observations": observations,
                "findings": findings,
            }],
            "back-matter": {
                "resources": [
                    {
                        "uuid": plan,
                        "title": "No assessment plan",
                        "description": "The evidence is collected continuously by vigil, not by a planned assessment.",
                    },
                    {
                        "uuid": bundle,
                        "title": "vigil evidence bundle",
                        "description": format!(
                            "The period's records, the signed checkpoint (size {}, root {}), its witness copies and the range proof. Signing key {}.",
                            report.integrity.checkpoint_size, report.integrity.checkpoint_root, report.integrity.fingerprint
                        ),
                        "rlinks": [{ "href": "bundle.tar" }],
                    },
                ],
            },
        }
    });
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

fn control_token(control: &Control) -> String {
    token(&control.framework, &control.id, control.oscal.as_deref())
}

/// An OSCAL token for a control: its catalog id where one exists, else the framework's prefix
/// and its id, lower case (a token must not start with a digit).
fn token(framework: &str, id: &str, oscal: Option<&str>) -> String {
    if let Some(oscal) = oscal {
        return oscal.to_owned();
    }
    let prefix = match framework {
        "SOC 2" => "soc2",
        f if f.starts_with("ISO/IEC 27001") => "iso27001",
        f if f.starts_with("PCI DSS") => "pci-dss",
        _ => "control",
    };
    let id: String =
        id.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    format!("{prefix}-{id}")
}

fn sections(evidence: &ControlEvidence) -> String {
    evidence.sections.iter().map(|s| s.title()).collect::<Vec<_>>().join(", ")
}

fn description(evidence: &ControlEvidence) -> String {
    format!(
        "Evidence expected: {}. Found: {} records in the sections {}, {} exceptions.",
        evidence.artefacts.join("; "),
        evidence.records,
        sections(evidence),
        evidence.exceptions
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_ids_are_oscal_tokens() {
        assert_eq!(token("PCI DSS 4.0", "8.3.9", None), "pci-dss-8.3.9");
        assert_eq!(token("SOC 2", "CC6.1", None), "soc2-cc6.1");
        assert_eq!(token("ISO/IEC 27001:2022", "A.5.17", None), "iso27001-a.5.17");
        assert_eq!(token("NIST SP 800-53 Rev. 5", "IA-5", Some("ia-5")), "ia-5");
    }

    #[test]
    fn every_catalog_control_gets_a_distinct_token() {
        let tokens: std::collections::BTreeSet<String> = controls::catalog().iter().map(control_token).collect();
        assert_eq!(tokens.len(), controls::catalog().len());
    }
}
