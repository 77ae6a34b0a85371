//! The controls each report section evidences, from `controls.toml` (data, not templates), so
//! that mapping a new framework is an edit of that file alone.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// A section of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// Credential rotation.
    Rotation,
    /// Backups.
    Backups,
    /// Restore drills.
    Drills,
    /// Everything that missed a target.
    Exceptions,
    /// The ledger range and its signed checkpoint.
    Integrity,
}

impl Section {
    /// The heading the HTML report gives it (and its anchor).
    pub fn title(self) -> &'static str {
        match self {
            Self::Rotation => "Credential rotation",
            Self::Backups => "Backups",
            Self::Drills => "Restore drills",
            Self::Exceptions => "Exceptions",
            Self::Integrity => "Integrity",
        }
    }

    /// The section's anchor in the HTML report.
    pub fn anchor(self) -> &'static str {
        match self {
            Self::Rotation => "rotation",
            Self::Backups => "backups",
            Self::Drills => "drills",
            Self::Exceptions => "exceptions",
            Self::Integrity => "integrity",
        }
    }
}

/// One control of one framework.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// The framework, e.g. `NIST SP 800-53 Rev. 5`.
    pub framework: String,
    /// The control's identifier there.
    pub id: String,
    /// The control's id in NIST's OSCAL catalog, where there is one.
    #[serde(default)]
    pub oscal: Option<String>,
    /// Its title.
    pub title: String,
    /// The sections that evidence it.
    pub sections: Vec<Section>,
    /// What an auditor expects to see, and where in the report.
    pub artefacts: Vec<String>,
}

#[derive(Deserialize)]
struct File {
    control: Vec<Control>,
}

/// Every control, in the file's order.
pub fn catalog() -> &'static [Control] {
    static CATALOG: OnceLock<Vec<Control>> = OnceLock::new();
    CATALOG.get_or_init(|| {
        // Compiled in and checked by the test below: a malformed file fails the build's tests,
        // never a user's export.
        toml::from_str::<File>(include_str!("controls.toml")).map(|f| f.control).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_parses_and_covers_every_control_the_report_promises() {
        let file: File = toml::from_str(include_str!("controls.toml")).expect("controls.toml parses");
        let ids: Vec<String> = file.control.iter().map(|c| format!("{} {}", c.framework, c.id)).collect();
        for expected in [
            "SOC 2 CC6.1",
            "SOC 2 A1.2",
            "SOC 2 A1.3",
            "ISO/IEC 27001:2022 A.5.17",
            "ISO/IEC 27001:2022 A.8.13",
            "ISO/IEC 27001:2022 A.5.30",
            "ISO/IEC 27001:2022 A.8.24",
            "NIST SP 800-53 Rev. 5 IA-5",
            "NIST SP 800-53 Rev. 5 CP-4",
            "NIST SP 800-53 Rev. 5 CP-9",
            "NIST SP 800-53 Rev. 5 CP-10",
            "NIST SP 800-53 Rev. 5 AU-9",
            "PCI DSS 4.0 8.3.9",
            "PCI DSS 4.0 8.6.3",
            "PCI DSS 4.0 12.10.2",
        ] {
            assert!(ids.iter().any(|id| id == expected), "{expected} is missing from controls.toml");
        }
        assert_eq!(catalog().len(), file.control.len());
        assert!(file.control.iter().all(|c| !c.sections.is_empty() && !c.artefacts.is_empty()));
    }
}
