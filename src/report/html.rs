//! The report as one self-contained HTML file: askama template (`templates/report.html`,
//! compiled in), inline CSS with a print stylesheet, and inline SVG charts drawn here from the
//! report's numbers. No script, no external resource: it renders the same offline, in a
//! browser or on paper, and the same report always renders to the same bytes.

use std::fmt::Write as _;

use askama::Template;

use super::model::{Report, RunOutcome, human_secs, micros};

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    r: &'a Report,
    secrets: Vec<SecretRow>,
    sets: Vec<SetRow>,
    drills: Vec<DrillRow>,
    rotation_chart: String,
    drill_chart: String,
    pass_rate: String,
}

struct SecretRow {
    name: String,
    kind: String,
    store: String,
    strategy: String,
    cadence: String,
    rotations: usize,
    succeeded: u64,
    failed: u64,
    longest: String,
    overdue: String,
    ok: bool,
    failures: Vec<String>,
}

struct SetRow {
    name: String,
    method: String,
    runs: u64,
    success_rate: String,
    verification_rate: String,
    encryption: Vec<String>,
    newest_verified: String,
    retention: String,
    pruned: u64,
    rpo_max: String,
    rpo_p95: String,
    rpo_target: String,
    ok: bool,
    chart: String,
}

struct DrillRow {
    drill: String,
    seq: u64,
    backup_set: String,
    started_at: String,
    rto: String,
    rpo: String,
    checks: String,
    runbook: String,
    passed: bool,
    reasons: String,
}

/// Renders `report` as HTML.
pub fn render(report: &Report) -> Result<String, askama::Error> {
    let secrets = report
        .rotation
        .iter()
        .map(|s| {
            let policy = s.policy.as_ref();
            SecretRow {
                name: s.name.clone(),
                kind: policy.map_or("(not configured)".into(), |p| p.kind.clone()),
                store: policy.map_or(String::new(), |p| p.store.clone()),
                strategy: policy.map_or(String::new(), |p| p.strategy.clone()),
                cadence: policy.map_or(String::new(), |p| human_secs(p.cadence_secs as i64)),
                rotations: s.rotations.len(),
                succeeded: s.succeeded,
                failed: s.failed,
                longest: human_secs(s.longest_interval_secs),
                overdue: if s.overdue_secs > 0 { human_secs(s.overdue_secs) } else { "on time".into() },
                ok: s.overdue_secs == 0 && s.late == 0 && s.failures.iter().all(|f| f.resolved_by.is_some()),
                failures: s
                    .failures
                    .iter()
                    .map(|f| {
                        let cleared = f.resolved_by.map_or("not cleared".into(), |seq| format!("cleared by #{seq}"));
                        let how = if f.stuck { "could not be undone (stuck)" } else { "failed" };
                        format!("#{} at {}: step {} {how}: {}; {cleared}", f.seq, f.at, f.step, f.reason)
                    })
                    .collect(),
            }
        })
        .collect();
    let sets = report
        .backups
        .iter()
        .map(|b| {
            let e = &b.rpo_exposure;
            SetRow {
                name: b.name.clone(),
                method: b.policy.as_ref().map_or("(not configured)".into(), |p| p.method.clone()),
                runs: b.runs,
                success_rate: percent(b.success_rate),
                verification_rate: percent(b.verification_rate),
                encryption: b
                    .encryption
                    .iter()
                    .map(|e| format!("{}, {} key {}", e.algorithm, e.key_service, e.key_id))
                    .collect(),
                newest_verified: b
                    .newest_verified
                    .as_ref()
                    .map_or("none in the period".into(), |v| format!("{} at {} (#{})", v.backup_id, v.at, v.seq)),
                retention: b.policy.as_ref().map_or(String::new(), |p| p.retention.clone()),
                pruned: b.pruned,
                rpo_max: human_secs(e.max_secs),
                rpo_p95: human_secs(e.p95_secs),
                rpo_target: human_secs(e.target_secs as i64),
                ok: b.failures.iter().all(|f| f.resolved_by.is_some())
                    && b.verification_failed == 0
                    && e.max_secs <= e.target_secs as i64,
                chart: exposure_chart(&b.name, &e.chart, e.target_secs),
            }
        })
        .collect();
    let drills = report
        .drills
        .runs
        .iter()
        .map(|d| DrillRow {
            drill: d.drill.clone(),
            seq: d.seq,
            backup_set: d.backup_set.clone(),
            started_at: d.started_at.clone(),
            rto: format!(
                "{} / {}",
                d.rto_secs.map_or("not measured".into(), |s| human_secs(s as i64)),
                human_secs(d.rto_target_secs as i64)
            ),
            rpo: format!(
                "{} / {}",
                d.rpo_secs.map_or("not measured".into(), human_secs),
                human_secs(d.rpo_target_secs as i64)
            ),
            checks: format!("{} of {}", d.checks_passed, d.checks_run),
            runbook: d.runbook.clone().unwrap_or_default(),
            passed: d.passed,
            reasons: d.reasons.join("; "),
        })
        .collect();
    Page {
        r: report,
        secrets,
        sets,
        drills,
        rotation_chart: rotation_chart(report),
        drill_chart: drill_chart(report),
        pass_rate: percent(report.drills.pass_rate),
    }
    .render()
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("n/a".into(), |r| format!("{:.2}%", r * 100.0))
}

/// Text for SVG: `&`, `<`, `>` and quotes escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const WIDTH: f64 = 760.0;
const LABEL: f64 = 160.0;

/// A chart's opening tag, `height` tall, labelled for screen readers.
fn svg_open(label: &str, height: impl std::fmt::Display) -> String {
    format!(
        r#"<svg class="chart" role="img" aria-label="{}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(label)
    )
}

/// One row per secret across the period: a green tick at each successful rotation, a red one
/// at each failure.
fn rotation_chart(report: &Report) -> String {
    let (Some(from), Some(to)) = (micros(&report.period.from), micros(&report.period.to)) else {
        return String::new();
    };
    let span = (to - from).max(1) as f64;
    let x = |at: Option<&str>| at.and_then(micros).map(|t| LABEL + (t - from) as f64 / span * (WIDTH - LABEL - 10.0));
    let rows = report.rotation.len().max(1);
    let height = 20 * rows + 24;
    let mut svg = svg_open("Rotation timeline", height);
    for (i, s) in report.rotation.iter().enumerate() {
        let y = 20 * i + 14;
        let _ = write!(
            svg,
            r##"<text x="0" y="{}" font-size="11">{}</text><line x1="{LABEL}" x2="{}" y1="{y}" y2="{y}" stroke="#bbb"/>"##,
            y + 4,
            escape(&s.name),
            WIDTH - 10.0
        );
        for run in &s.rotations {
            let color = match run.outcome {
                RunOutcome::Succeeded => "#2a7d2a",
                RunOutcome::Failed | RunOutcome::Stuck => "#c0392b",
                RunOutcome::InFlight => "#999",
            };
            if let Some(x) = x(run.ended_at.as_deref().or(run.started_at.as_deref())) {
                let _ = write!(
                    svg,
                    r#"<line class="tick" x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" stroke="{color}" stroke-width="2"/>"#,
                    y - 6,
                    y + 6
                );
            }
        }
    }
    let _ = write!(
        svg,
        r#"<text x="{LABEL}" y="{}" font-size="10">{}</text><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text></svg>"#,
        height - 4,
        escape(&report.period.from),
        WIDTH - 10.0,
        height - 4,
        escape(&report.period.to)
    );
    svg
}

/// The oldest recovery point in each slice of the period, as bars, with the target as a line.
fn exposure_chart(name: &str, chart: &[i64], target_secs: u64) -> String {
    let (height, plot) = (140.0, 110.0);
    let top = chart.iter().copied().max().unwrap_or(0).max(target_secs as i64).max(1) as f64 * 1.1;
    let bar = (WIDTH - 50.0) / chart.len().max(1) as f64;
    let mut svg = svg_open(&format!("RPO exposure of {name}"), height);
    for (i, &age) in chart.iter().enumerate() {
        let h = age as f64 / top * plot;
        let color = if age > target_secs as i64 { "#c0392b" } else { "#4a78b5" };
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/>"#,
            50.0 + i as f64 * bar,
            10.0 + plot - h,
            (bar - 1.0).max(0.5)
        );
    }
    let y = 10.0 + plot - target_secs as f64 / top * plot;
    let _ = write!(
        svg,
        r##"<line class="target" x1="50" x2="{WIDTH}" y1="{y:.1}" y2="{y:.1}" stroke="#333" stroke-dasharray="4 3"/><text x="0" y="{:.1}" font-size="10">target {}</text><text x="0" y="18" font-size="10">{}</text></svg>"##,
        y + 3.0,
        escape(&human_secs(target_secs as i64)),
        escape(&human_secs(top as i64))
    );
    svg
}

/// Each drill's recovery time as a bar against its target (a tick), oldest first.
fn drill_chart(report: &Report) -> String {
    let runs = &report.drills.runs;
    let (height, plot) = (160.0, 130.0);
    let top =
        runs.iter().map(|d| d.rto_secs.unwrap_or(0.0).max(d.rto_target_secs as f64)).fold(1.0_f64, f64::max) * 1.1;
    let bar = (WIDTH - 50.0) / runs.len().max(1) as f64;
    let mut svg = svg_open("Drill RTO against target", height);
    for (i, d) in runs.iter().enumerate() {
        let rto = d.rto_secs.unwrap_or(0.0);
        let h = rto / top * plot;
        let x = 50.0 + i as f64 * bar;
        let color = if d.passed { "#2a7d2a" } else { "#c0392b" };
        let target_y = 10.0 + plot - d.rto_target_secs as f64 / top * plot;
        let _ = write!(
            svg,
            r##"<rect class="bar" x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{}: {}</title></rect><line class="target" x1="{x:.1}" x2="{:.1}" y1="{target_y:.1}" y2="{target_y:.1}" stroke="#333" stroke-width="2"/>"##,
            10.0 + plot - h,
            (bar - 2.0).max(0.5),
            escape(&d.drill),
            escape(&d.started_at),
            x + (bar - 2.0).max(0.5)
        );
    }
    let _ = write!(svg, r#"<text x="0" y="18" font-size="10">{}</text></svg>"#, escape(&human_secs(top as i64)));
    svg
}
