//! `/healthz`, `/readyz`, `/metrics` and `/status`, served by every daemon, leader or standby.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::{Shared, status};
use crate::state::{Db, on_pool};
use secrecy::ExposeSecret as _;

/// Serves until `cancel`.
pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(shared);
    if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
        tracing::error!(%err, "the HTTP server stopped");
    }
}

/// The process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The configuration is loaded and the state store answers; the body says whether this daemon
/// leads or stands by.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let role = if shared.leading.load(Ordering::Relaxed) { "leader" } else { "standby" };
    let (code, state_store) = match ping(&shared.db).await {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    };
    let leader = super::store::epoch(&shared.db).await.ok().flatten();
    let body = serde_json::json!({
        "ready": code == StatusCode::OK,
        "role": role,
        "leader": leader.map(|(epoch, holder)| serde_json::json!({ "epoch": epoch, "holder": holder })),
        "state_store": state_store,
        "config_loaded": shared.metrics.config_ok.get() == 1,
    });
    (code, axum::Json(body)).into_response()
}

/// Whether two tokens are equal, in time that does not depend on where they differ.
fn same(given: &[u8], token: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(given, token).is_ok()
}

async fn ping(db: &Db) -> Result<(), sqlx::Error> {
    on_pool!(db, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
}

/// Every metric, the standing gauges refreshed from the state store first.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let plan = shared.plan();
    let metrics = &shared.metrics;
    match status::secrets(&plan, &shared.db, shared.clock.as_ref()).await {
        Ok(secrets) => {
            // A secret removed from the configuration leaves no stale series behind.
            metrics.secret_due.clear();
            let mut attention = 0;
            for secret in &secrets {
                let labels = vec![("secret", secret.secret.clone()), ("kind", secret.kind.to_owned())];
                metrics.secret_due.get_or_create(&labels).set(secret.due_in_secs as f64);
                attention += i64::from(secret.needs_attention.is_some());
            }
            metrics.needing_attention.set(attention);
        }
        Err(err) => tracing::warn!(%err, "cannot read the secrets' standing for /metrics"),
    }
    match crate::alerts::firing(&shared.db).await {
        Ok(firing) => {
            metrics.alerts_firing.clear();
            for alert in &firing {
                metrics.alerts_firing.get_or_create(&super::metrics::label("kind", &alert.kind)).inc();
            }
        }
        Err(err) => tracing::warn!(%err, "cannot read the alerts firing for /metrics"),
    }
    if let Ok(size) = crate::evidence::size(&shared.db).await {
        metrics.ledger_size(size);
    }
    if let Ok(Some(newest)) = crate::evidence::newest_checkpoint(&shared.db).await
        && let Ok(at) = chrono::DateTime::parse_from_rfc3339(&newest.signed_at)
    {
        let age = shared.clock.now() - at.to_utc();
        metrics.checkpoint_age.set(age.num_milliseconds() as f64 / 1000.0);
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode())
        .into_response()
}

/// What `vigil status --output json` prints, with the archives as the RPO watch last measured
/// them (a standby, which runs no watch, shows none). With `[daemon] status_token`, only to a
/// request that carries it as `Authorization: Bearer …`.
async fn status(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    let plan = shared.plan();
    if let Some(token) = &plan.daemon.status_token {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match token.resolve_local() {
            Ok(token) if given.is_some_and(|given| same(given.as_bytes(), token.expose_secret().as_bytes())) => {}
            Ok(_) => {
                let body =
                    serde_json::json!({ "error": "this /status asks for the bearer token of [daemon] status_token" });
                return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], axum::Json(body))
                    .into_response();
            }
            Err(err) => {
                let body = serde_json::json!({ "error": format!("cannot read [daemon] status_token: {err}") });
                return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
            }
        }
    }
    let archives = shared.archives.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    match status::cached(&plan, &shared.db, shared.clock.as_ref(), archives).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(serde_json::json!({ "error": err.to_string() })))
            .into_response(),
    }
}
