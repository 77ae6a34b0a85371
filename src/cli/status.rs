//! `vigil status`: each secret's rotation state.

use serde::Serialize;

use super::output::{print_json, table};
use super::{Exit, GlobalArgs, OutputFormat, load_plan};
use crate::clock::{Clock, SystemClock};
use crate::rotation;
use crate::state::Db;

/// Show each secret's last rotation, next due time, and any rotation in flight or needing attention.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:\n  vigil status\n  vigil status --output json")]
pub struct StatusArgs {}

#[derive(Serialize)]
struct Shown {
    secret: String,
    kind: &'static str,
    store: String,
    strategy: &'static str,
    last_rotated: Option<String>,
    next_due: String,
    overdue_days: i64,
    in_flight: Option<String>,
    needs_attention: Option<String>,
}

impl StatusArgs {
    pub(super) async fn run(&self, global: &GlobalArgs) -> anyhow::Result<Exit> {
        let plan = load_plan(global)?;
        let db = Db::open(&plan.evidence.store).await?;
        let states = rotation::states(&plan, &db, SystemClock.now()).await;
        db.close().await;
        let mut shown = Vec::new();
        for (name, state) in states? {
            let spec = &plan.secrets[&name];
            shown.push(Shown {
                secret: name,
                kind: spec.kind.as_str(),
                store: format!("{}:{}", spec.store, spec.path),
                strategy: spec.strategy.as_str(),
                last_rotated: state.status.last_rotated,
                next_due: state.standing.next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                overdue_days: state.standing.overdue_days(),
                in_flight: state.in_flight.map(|s| {
                    format!(
                        "{} at {} ({})",
                        s.id,
                        s.step,
                        serde_json::to_string(&s.status).unwrap_or_default().trim_matches('"')
                    )
                }),
                needs_attention: state.status.needs_attention,
            });
        }
        match global.output {
            OutputFormat::Json => print_json(&shown)?,
            OutputFormat::Human => {
                let mut rows = vec![
                    [
                        "SECRET",
                        "KIND",
                        "STRATEGY",
                        "LAST ROTATED",
                        "NEXT DUE",
                        "OVERDUE",
                        "IN FLIGHT",
                        "NEEDS ATTENTION",
                    ]
                    .map(String::from)
                    .to_vec(),
                ];
                for s in &shown {
                    rows.push(vec![
                        s.secret.clone(),
                        s.kind.into(),
                        s.strategy.into(),
                        s.last_rotated.clone().unwrap_or_else(|| "never".into()),
                        s.next_due.clone(),
                        if s.overdue_days > 0 { format!("{}d", s.overdue_days) } else { "-".into() },
                        s.in_flight.clone().unwrap_or_else(|| "-".into()),
                        s.needs_attention.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                print!("{}", table("", &rows));
            }
        }
        Ok(Exit::Success)
    }
}
