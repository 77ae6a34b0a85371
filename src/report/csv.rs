//! One CSV file per section (RFC 4180: comma-separated, CRLF line ends, fields quoted when
//! they hold a comma, quote or line break), rendered from the report alone.

use super::model::{Report, Run};

/// The CSV files of `report`, as (file name, contents), in a fixed order.
pub fn render(report: &Report) -> Vec<(&'static str, String)> {
    vec![
        ("rotation.csv", rotation(report)),
        ("rotations.csv", rotations(report)),
        ("backups.csv", backups(report)),
        ("drills.csv", drills(report)),
        ("exceptions.csv", exceptions(report)),
        ("controls.csv", controls(report)),
    ]
}

struct Table(String);

impl Table {
    fn new(header: &[&str]) -> Self {
        let mut table = Self(String::new());
        table.row(header.iter().map(|h| (*h).to_owned()));
        table
    }

    fn row(&mut self, fields: impl IntoIterator<Item = String>) {
        let fields: Vec<String> = fields.into_iter().map(|f| field(&f)).collect();
        self.0.push_str(&fields.join(","));
        self.0.push_str("\r\n");
    }
}

fn field(text: &str) -> String {
    if text.contains([',', '"', '\r', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_owned() }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn rotation(report: &Report) -> String {
    let mut table = Table::new(&[
        "secret",
        "kind",
        "store",
        "strategy",
        "cadence_secs",
        "rotations",
        "succeeded",
        "failed",
        "longest_interval_secs",
        "late",
        "overdue_secs",
    ]);
    for s in &report.rotation {
        let p = s.policy.as_ref();
        table.row([
            s.name.clone(),
            opt(p.map(|p| &p.kind)),
            opt(p.map(|p| &p.store)),
            opt(p.map(|p| &p.strategy)),
            opt(p.map(|p| p.cadence_secs)),
            s.rotations.len().to_string(),
            s.succeeded.to_string(),
            s.failed.to_string(),
            s.longest_interval_secs.to_string(),
            s.late.to_string(),
            s.overdue_secs.to_string(),
        ]);
    }
    table.0
}

fn rotations(report: &Report) -> String {
    let mut table =
        Table::new(&["secret", "saga", "started_seq", "started_at", "ended_seq", "ended_at", "outcome", "resolved_by"]);
    for s in &report.rotation {
        for run in &s.rotations {
            let Run { saga, started_seq, started_at, ended_seq, ended_at, outcome } = run;
            let resolved = s.failures.iter().find(|f| Some(f.seq) == *ended_seq).and_then(|f| f.resolved_by);
            table.row([
                s.name.clone(),
                saga.clone(),
                opt(*started_seq),
                opt(started_at.as_ref()),
                opt(*ended_seq),
                opt(ended_at.as_ref()),
                outcome.as_str().to_owned(),
                opt(resolved),
            ]);
        }
    }
    table.0
}

fn backups(report: &Report) -> String {
    let mut table = Table::new(&[
        "set",
        "method",
        "runs",
        "succeeded",
        "failed",
        "success_rate",
        "written",
        "verified",
        "verification_failed",
        "verification_rate",
        "encryption",
        "newest_verified_at",
        "newest_verified_backup",
        "pruned",
        "retention",
        "rpo_target_secs",
        "rpo_max_secs",
        "rpo_p95_secs",
        "rpo_over_target_secs",
    ]);
    for b in &report.backups {
        let encryption: Vec<String> =
            b.encryption.iter().map(|e| format!("{} / {} / {}", e.algorithm, e.key_service, e.key_id)).collect();
        table.row([
            b.name.clone(),
            opt(b.policy.as_ref().map(|p| &p.method)),
            b.runs.to_string(),
            b.succeeded.to_string(),
            b.failed.to_string(),
            opt(b.success_rate),
            b.written.to_string(),
            b.verified.to_string(),
            b.verification_failed.to_string(),
            opt(b.verification_rate),
            encryption.join("; "),
            opt(b.newest_verified.as_ref().map(|v| &v.at)),
            opt(b.newest_verified.as_ref().map(|v| &v.backup_id)),
            b.pruned.to_string(),
            opt(b.policy.as_ref().map(|p| &p.retention)),
            b.rpo_exposure.target_secs.to_string(),
            b.rpo_exposure.max_secs.to_string(),
            b.rpo_exposure.p95_secs.to_string(),
            b.rpo_exposure.over_target_secs.to_string(),
        ]);
    }
    table.0
}

fn drills(report: &Report) -> String {
    let mut table = Table::new(&[
        "drill",
        "seq",
        "backup_set",
        "started_at",
        "ended_at",
        "rto_secs",
        "rto_target_secs",
        "rpo_secs",
        "rpo_target_secs",
        "checks_run",
        "checks_passed",
        "runbook",
        "passed",
        "reasons",
    ]);
    for d in &report.drills.runs {
        table.row([
            d.drill.clone(),
            d.seq.to_string(),
            d.backup_set.clone(),
            d.started_at.clone(),
            d.ended_at.clone(),
            opt(d.rto_secs),
            d.rto_target_secs.to_string(),
            opt(d.rpo_secs),
            d.rpo_target_secs.to_string(),
            d.checks_run.to_string(),
            d.checks_passed.to_string(),
            opt(d.runbook.as_ref()),
            d.passed.to_string(),
            d.reasons.join("; "),
        ]);
    }
    table.0
}

fn exceptions(report: &Report) -> String {
    let mut table = Table::new(&["section", "subject", "what", "records"]);
    for e in &report.exceptions {
        let records: Vec<String> = e.records.iter().map(u64::to_string).collect();
        table.row([e.section.anchor().to_owned(), e.subject.clone(), e.what.clone(), records.join(" ")]);
    }
    table.0
}

fn controls(report: &Report) -> String {
    let mut table = Table::new(&["framework", "control", "title", "sections", "records", "exceptions", "artefacts"]);
    for c in &report.controls {
        let sections: Vec<&str> = c.sections.iter().map(|s| s.anchor()).collect();
        table.row([
            c.framework.clone(),
            c.id.clone(),
            c.title.clone(),
            sections.join(" "),
            c.records.to_string(),
            c.exceptions.to_string(),
            c.artefacts.join("; "),
        ]);
    }
    table.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_quotes_or_line_breaks_are_quoted() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
    }
}
