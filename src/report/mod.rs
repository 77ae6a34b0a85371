//! Compliance reports: what the ledger shows about rotation, backups and drills over a period,
//! as JSON, HTML and CSV, and a bundle an auditor verifies offline.
//!
//! `model` computes the report from records and the declared policy alone; `html` and `csv`
//! render it; `bundle` packs it with the period's records, a range proof and the signed
//! checkpoint, and checks such a bundle with nothing but the pinned verifier key: every number
//! is recomputed and every file rendered again.

pub mod bundle;
pub mod controls;
mod csv;
mod html;
pub mod model;
mod oscal;
mod policy;

pub use bundle::{BundleError, BundleVerification, ExportError, Exported, export, verify_bundle};
pub use model::{Period, Policy, Report};
pub use policy::policy;

/// A format of the report's files: an export leaves those asked for beside its bundle, which
/// holds them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `report.html`.
    Html,
    /// `report.json`.
    Json,
    /// `csv/*.csv`.
    Csv,
    /// `oscal.json`.
    Oscal,
}

impl Format {
    /// Every format.
    pub const ALL: [Self; 4] = [Self::Html, Self::Json, Self::Csv, Self::Oscal];

    /// The format of the file [`render`] names `path`.
    fn of(path: &str) -> Option<Self> {
        match path {
            "report/report.html" => Some(Self::Html),
            "report/report.json" => Some(Self::Json),
            "report/oscal.json" => Some(Self::Oscal),
            p if p.starts_with("report/csv/") => Some(Self::Csv),
            _ => None,
        }
    }
}

/// The report's files, as (path in the bundle and output folder, contents), in a fixed order.
pub fn render(report: &Report) -> Result<Vec<(String, Vec<u8>)>, askama::Error> {
    let mut json = serde_json::to_string_pretty(report).map_err(|err| askama::Error::Custom(Box::new(err)))?;
    json.push('\n');
    let mut files = vec![("report/report.json".to_owned(), json.into_bytes())];
    files.push(("report/report.html".to_owned(), html::render(report)?.into_bytes()));
    for (name, text) in csv::render(report) {
        files.push((format!("report/csv/{name}"), text.into_bytes()));
    }
    files.push(("report/oscal.json".to_owned(), oscal::render(report).into_bytes()));
    Ok(files)
}

/// The JSON Schema (2020-12) of `report.json`, as `docs/report.schema.json` holds it.
pub fn schema() -> String {
    let mut text = serde_json::to_string_pretty(&schemars::schema_for!(Report)).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_schema_is_the_reports() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/report.schema.json");
        let ours = super::schema();
        if std::env::var_os("VIGIL_BLESS").is_some() {
            std::fs::write(path, &ours).unwrap();
        }
        let documented = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            documented == ours,
            "docs/report.schema.json is not the report's schema: run `VIGIL_BLESS=1 cargo test --lib report::tests` and commit it"
        );
    }
}
