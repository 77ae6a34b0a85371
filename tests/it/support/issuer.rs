//! A real API-key issuer on loopback implementing `docs/api-key-issuer.md`, for tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};

#[derive(Default)]
struct Keys {
    /// id -> (secret, revoked)
    keys: HashMap<String, (String, bool)>,
    by_idempotency: HashMap<String, String>,
    next: u32,
}

/// A running issuer.
pub struct Issuer {
    pub url: String,
    pub admin: String,
    keys: Arc<Mutex<Keys>>,
}

type Shared = (Arc<Mutex<Keys>>, String);

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::to_owned)
}

fn new_key(keys: &mut Keys) -> (String, String) {
    keys.next += 1;
    let id = format!("key_{:04}", keys.next);
    let secret = format!("sk_{}_{}", crate::support::unique("issued").replace('-', ""), keys.next);
    keys.keys.insert(id.clone(), (secret.clone(), false));
    (id, secret)
}

async fn issue(
    State((keys, admin)): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> (StatusCode, Json<serde_json::Value>) {
    if bearer(&headers).as_deref() != Some(admin.as_str()) {
        return (StatusCode::UNAUTHORIZED, Json(serde_json::json!({})));
    }
    let mut keys = keys.lock().unwrap();
    let idempotency = body["idempotency_key"].as_str().unwrap_or_default().to_owned();
    if let Some(id) = keys.by_idempotency.get(&idempotency).cloned() {
        let secret = keys.keys[&id].0.clone();
        return (StatusCode::OK, Json(serde_json::json!({ "id": id, "secret": secret })));
    }
    let (id, secret) = new_key(&mut keys);
    keys.by_idempotency.insert(idempotency, id.clone());
    (StatusCode::CREATED, Json(serde_json::json!({ "id": id, "secret": secret })))
}

async fn whoami(State((keys, _)): State<Shared>, headers: HeaderMap) -> (StatusCode, Json<serde_json::Value>) {
    let presented = bearer(&headers).unwrap_or_default();
    let keys = keys.lock().unwrap();
    match keys.keys.iter().find(|(_, (secret, revoked))| *secret == presented && !revoked) {
        Some((id, _)) => (StatusCode::OK, Json(serde_json::json!({ "id": id }))),
        None => (StatusCode::UNAUTHORIZED, Json(serde_json::json!({}))),
    }
}

async fn revoke(State((keys, admin)): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> StatusCode {
    if bearer(&headers).as_deref() != Some(admin.as_str()) {
        return StatusCode::UNAUTHORIZED;
    }
    match keys.lock().unwrap().keys.get_mut(&id) {
        Some((_, revoked)) if !*revoked => {
            *revoked = true;
            StatusCode::NO_CONTENT
        }
        _ => StatusCode::NOT_FOUND,
    }
}

impl Issuer {
    /// Starts an issuer on a free loopback port, on the current tokio runtime.
    pub async fn start() -> Self {
        let keys = Arc::new(Mutex::new(Keys::default()));
        let admin = format!("admin-{}", crate::support::unique("token"));
        let app = axum::Router::new()
            .route("/keys", post(issue))
            .route("/keys/{id}", delete(revoke))
            .route("/whoami", get(whoami))
            .with_state((keys.clone(), admin.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, admin, keys }
    }

    /// Issues a key directly, as the service's operators would have the first one.
    pub fn issue_first(&self) -> (String, String) {
        new_key(&mut self.keys.lock().unwrap())
    }

    /// Whether `secret` is a valid, unrevoked key.
    pub fn accepts(&self, secret: &str) -> bool {
        self.keys.lock().unwrap().keys.values().any(|(s, revoked)| s == secret && !revoked)
    }

    /// Every key secret it ever issued.
    pub fn all_secrets(&self) -> Vec<String> {
        self.keys.lock().unwrap().keys.values().map(|(s, _)| s.clone()).collect()
    }
}
