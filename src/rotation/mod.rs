//! Credential rotation: which user to change, whether it may happen now, running the saga,
//! and what it leaves for `vigil status`.
//!
//! **Invariant:** the credential the store labels current logs in to its target at every
//! instant, except for single-user rotation's inherent window between `set` and `finish`
//! (documented, and avoided by alternating users). Nothing here holds a password longer than
//! the call that sends it to the store or the database.

mod api_key;
mod db_password;
mod jwt_key;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use api_key::{ApiKeyRotation, KeyData, KeyStep};
pub use db_password::{DbData, DbPasswordRotation, DbStep};
pub use jwt_key::{JwtData, JwtKeyRotation, JwtStep};

use crate::config::{ApiKey, DbPassword, JwtKey, Plan, SecretKind, SecretSpec, Strategy};
use crate::context::Ctx;
use crate::engines::{Credential, DbEngine, EngineError};
use crate::evidence::{Kind, NewRecord, Outcome};
use crate::issuers;
use crate::jwks::{self, SigningKey};
use crate::saga::{self, Ended, Executor, SagaError, SagaRow, Subject};
use crate::schedule;
use crate::secret::{SecretRef, SecretString, StoreKind};
use crate::state::Db;
use crate::stores::{self, SecretStore, StoreError, Stores};

/// Why a rotation did not start, or could not be run.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// No secret of that name is configured.
    #[error("no secret named {0} in the schedules; `vigil config check` lists them")]
    UnknownSecret(String),
    /// The secret is not of the sort this needs: its kind changed under a rotation in flight.
    #[error(
        "{name} is a {kind} secret, not a {wanted}; if its kind changed while a rotation was in flight, restore the old kind until `vigil rotate --resume` finishes it"
    )]
    WrongKind {
        /// The secret.
        name: String,
        /// Its kind now.
        kind: &'static str,
        /// The kind needed.
        wanted: &'static str,
    },
    /// An alternating pair flipped too recently.
    #[error(
        "{name} flipped at {last_flip}, less than min_flip_interval ({interval}) ago; clients that cache the secret may still hold the other user's password. Wait until {allowed}, or pass --force (recorded)"
    )]
    TooSoon {
        /// The secret.
        name: String,
        /// When it last flipped.
        last_flip: String,
        /// The configured interval.
        interval: String,
        /// When a flip is allowed.
        allowed: String,
    },
    /// The two users of an alternating pair may do different things.
    #[error(
        "{name}: users {a} and {b} have different privileges ({difference}); flipping would change what the application may do. Grant both the same group role and retry"
    )]
    GrantDrift {
        /// The secret.
        name: String,
        /// One user.
        a: String,
        /// The other.
        b: String,
        /// What differs, briefly.
        difference: String,
    },
    /// The stored secret names a database user the configuration does not give this secret.
    #[error(
        "{name}: the stored value at {path} names user {found}, but this secret rotates {configured}; vigil changes no other user. Put the right user back in the stored value (or fix `username` in the configuration) and retry"
    )]
    ForeignUser {
        /// The secret.
        name: String,
        /// Where it is stored.
        path: String,
        /// The user the stored value names.
        found: String,
        /// The users the configuration names, e.g. `app` or `app or app_clone`.
        configured: String,
    },
    /// An admin credential or issuer token could not be read.
    #[error("cannot read the credential vigil manages {target} with: {why}")]
    Admin {
        /// The target.
        target: String,
        /// Why.
        why: String,
    },
    /// A store failed before the saga started.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The JWKS publisher could not be reached before the saga started.
    #[error(transparent)]
    Publish(#[from] jwks::PublishError),
    /// A database failed before the saga started.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The API-key issuer could not be set up or reached before the saga started.
    #[error(transparent)]
    Issuer(#[from] issuers::IssuerError),
    /// The saga machinery failed.
    #[error(transparent)]
    Saga(#[from] SagaError),
}

/// How one rotation went.
#[derive(Debug, Serialize)]
pub struct RotationReport {
    /// The secret.
    pub secret: String,
    /// The rotation id (the stores' idempotency token).
    pub rotation: String,
    /// What it changed: the database user, or the new key's id (API key id, JWT `kid`).
    pub user: String,
    /// How it ended.
    #[serde(flatten)]
    pub ended: Ended,
}

/// What the drift check found for one secret.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// The secret.
    pub secret: String,
    /// Whether the current credential logs in (and runs the probes).
    pub ok: bool,
    /// Why not, if not.
    pub problem: Option<String>,
}

/// What an application-like prober saw for one secret.
#[derive(Debug, Default, Serialize)]
pub struct WatchReport {
    /// The secret.
    pub secret: String,
    /// Logins attempted with the credential labelled current at that moment.
    pub attempts: u32,
    /// Logins that failed.
    pub failures: u32,
    /// Why the last failure failed.
    pub last_failure: Option<String>,
}

/// Everything a rotation needs, for one run of the command or the daemon.
pub struct Rotator<'a> {
    /// What it runs with.
    pub ctx: Ctx<'a>,
}

fn wrong_kind(name: &str, spec: &SecretSpec, wanted: &'static str) -> RotationError {
    RotationError::WrongKind { name: name.to_owned(), kind: spec.kind.as_str(), wanted }
}

fn admin_error(whose: &str, err: stores::ReferenceError) -> RotationError {
    match err {
        stores::ReferenceError::Store(err) => RotationError::Store(err),
        stores::ReferenceError::Unreadable(why) => RotationError::Admin { target: whose.to_owned(), why },
    }
}

/// A secret's store and database, connected.
struct Connected {
    store: Arc<dyn SecretStore>,
    engine: Arc<dyn DbEngine>,
}

impl<'a> Rotator<'a> {
    /// A rotator running with `ctx`.
    pub fn new(ctx: Ctx<'a>) -> Self {
        Self { ctx }
    }

    /// The client for `kind`, connected once per rotator.
    async fn store(&self, kind: StoreKind) -> Result<Arc<dyn SecretStore>, RotationError> {
        Ok(self.ctx.stores.get(kind).await?)
    }

    fn secret(&self, name: &str) -> Result<&'a SecretSpec, RotationError> {
        self.ctx.plan.secrets.get(name).ok_or_else(|| RotationError::UnknownSecret(name.to_owned()))
    }

    /// A database password's settings.
    fn password(&self, name: &str) -> Result<(&'a SecretSpec, &'a DbPassword), RotationError> {
        let spec = self.secret(name)?;
        let db = spec.kind.db_password().ok_or_else(|| wrong_kind(name, spec, "database password"))?;
        Ok((spec, db))
    }

    async fn connect(&self, spec: &SecretSpec, db: &DbPassword) -> Result<Connected, RotationError> {
        let store = self.store(spec.store).await?;
        let engine = self.ctx.engine(&db.target).await.map_err(|err| admin_error(&db.target.name, err))?;
        Ok(Connected { store, engine })
    }

    /// The value `reference` names. `whose` names what it is for, in errors.
    async fn resolve(&self, whose: &str, reference: &SecretRef) -> Result<SecretString, RotationError> {
        self.ctx.stores.resolve(reference).await.map_err(|err| admin_error(whose, err))
    }

    /// Rotates `name` now. `force` allows an alternating flip sooner than min_flip_interval.
    pub async fn rotate(&self, name: &str, force: bool) -> Result<RotationReport, RotationError> {
        let spec = self.secret(name)?;
        match spec.kind {
            SecretKind::ApiKey(_) => return self.rotate_api_key(name, None).await,
            SecretKind::JwtSigningKey(_) => return self.rotate_jwt(name, None).await,
            SecretKind::PostgresPassword(_) | SecretKind::MysqlPassword(_) => {}
        }
        let (spec, db) = self.password(name)?;
        let connected = self.connect(spec, db).await?;
        let current = db_password::parse(&spec.path, &connected.store.current(&spec.path).await?.value)
            .map_err(|err| unreadable(&spec.path, &err))?;
        let username = db.username.clone();
        // The stored value is writable by whoever writes the application's secret; it never
        // chooses which database user vigil, as admin, changes.
        let configured: Vec<&String> = match &spec.strategy {
            Strategy::AlternatingUsers { clone_username, .. } => vec![&username, clone_username],
            Strategy::SingleUser | Strategy::Overlap { .. } => vec![&username],
        };
        if !configured.contains(&&current.username) {
            let err = RotationError::ForeignUser {
                name: name.to_owned(),
                path: spec.path.clone(),
                found: current.username.clone(),
                configured: configured.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(" or "),
            };
            status::needs_attention(self.ctx.db, name, &err.to_string(), self.ctx.clock).await?;
            return Err(err);
        }
        let mut data = DbData {
            strategy: spec.strategy.as_str().to_owned(),
            target: db.target.name.clone(),
            user: String::new(),
            forced: None,
            inactive_sessions: None,
        };
        let user = match &spec.strategy {
            Strategy::AlternatingUsers { clone_username, min_flip_interval } => {
                let status = status::load(self.ctx.db, name).await?;
                if let Some(last_flip) = &status.last_flip
                    && let Ok(at) = DateTime::parse_from_rfc3339(last_flip)
                {
                    let allowed = at.with_timezone(&Utc) + min_flip_interval.to_chrono();
                    if self.ctx.clock.now() < allowed && !force {
                        return Err(RotationError::TooSoon {
                            name: name.to_owned(),
                            last_flip: last_flip.clone(),
                            interval: min_flip_interval.to_string(),
                            allowed: allowed.to_rfc3339(),
                        });
                    }
                    data.forced = Some(self.ctx.clock.now() < allowed);
                }
                let (a, b) = (&username, clone_username);
                let (grants_a, grants_b) = (connected.engine.grants(a).await?, connected.engine.grants(b).await?);
                if grants_a != grants_b {
                    let only_a: Vec<_> = grants_a.iter().filter(|g| !grants_b.contains(g)).cloned().collect();
                    let only_b: Vec<_> = grants_b.iter().filter(|g| !grants_a.contains(g)).cloned().collect();
                    return Err(RotationError::GrantDrift {
                        name: name.to_owned(),
                        a: a.clone(),
                        b: b.clone(),
                        difference: format!("only {a}: {only_a:?}; only {b}: {only_b:?}"),
                    });
                }
                let inactive = if current.username == *a { b.clone() } else { a.clone() };
                // Sessions the inactive user still holds keep working (a new password does not
                // end them); they are recorded so that a lingering client shows up in evidence.
                data.inactive_sessions = Some(connected.engine.sessions(&inactive).await?);
                inactive
            }
            _ => username.clone(),
        };
        data.user = user.clone();
        let id = new_rotation_id();
        let def = DbPasswordRotation::fresh(spec, db, connected.store.as_ref(), connected.engine.as_ref(), current);
        let (_, ended) = self.executor().start(&def, &id, &Subject::Secret(name.to_owned()), data).await?;
        self.conclude(name, &id, &user, spec, &ended).await?;
        Ok(RotationReport { secret: name.to_owned(), rotation: id, user, ended })
    }

    async fn issuer(&self, name: &str, spec: &SecretSpec) -> Result<issuers::HttpIssuer, RotationError> {
        let SecretKind::ApiKey(ApiKey { issuer }) = &spec.kind else {
            return Err(wrong_kind(name, spec, "api_key"));
        };
        Ok(issuers::HttpIssuer::new(&issuer.url, issuer.ca_file.as_deref(), self.resolve(name, &issuer.token).await?)?)
    }

    /// Starts an API-key rotation of `name`, or resumes `saga`.
    async fn rotate_api_key(&self, name: &str, saga: Option<SagaRow>) -> Result<RotationReport, RotationError> {
        let spec = self.secret(name)?;
        let store = self.store(spec.store).await?;
        let issuer = self.issuer(name, spec).await?;
        let def = ApiKeyRotation { name, spec, store: store.as_ref(), issuer: &issuer, clock: self.ctx.clock };
        let start = async || {
            let current = api_key::parse_key(&spec.path, &store.current(&spec.path).await?.value)
                .map_err(|err| unreadable(&spec.path, &err))?;
            Ok(KeyData {
                strategy: spec.strategy.as_str().to_owned(),
                previous_id: current.id,
                key_id: None,
                retire_at: None,
            })
        };
        let (saga, ended) = self.launch(&def, name, saga, start).await?;
        let key = saga.decode::<KeyData>()?.key_id.unwrap_or_default();
        self.conclude_overlap(name, &saga.id, &key, None, &ended).await?;
        Ok(RotationReport { secret: name.to_owned(), rotation: saga.id, user: key, ended })
    }

    /// Starts a JWT signing-key rotation of `name`, or resumes `saga`.
    async fn rotate_jwt(&self, name: &str, saga: Option<SagaRow>) -> Result<RotationReport, RotationError> {
        let spec = self.secret(name)?;
        let store = self.store(spec.store).await?;
        let SecretKind::JwtSigningKey(JwtKey { jwt }) = &spec.kind else {
            return Err(wrong_kind(name, spec, "jwt_signing_key"));
        };
        let publisher = jwks::connect(&jwt.jwks, self.ctx.plan.aws.as_ref(), self.ctx.plan.vault.as_ref()).await?;
        let def =
            JwtKeyRotation { spec, jwt, store: store.as_ref(), publisher: publisher.as_ref(), clock: self.ctx.clock };
        let start = async || {
            let current = SigningKey::from_stored(&store.current(&spec.path).await?.value)
                .map_err(|err| unreadable(&spec.path, &err.into()))?;
            Ok(JwtData {
                strategy: spec.strategy.as_str().to_owned(),
                algorithm: jwt.algorithm.as_str().to_owned(),
                current_jwk: current.map(|k| k.public),
                next_jwk: None,
                sign_at: None,
                retire_at: None,
            })
        };
        let (saga, ended) = self.launch(&def, name, saga, start).await?;
        let kid = saga.decode::<JwtData>()?.next_kid().unwrap_or_default().to_owned();
        self.conclude_overlap(name, &saga.id, &kid, Some(saga::Step::name(JwtStep::Promote)), &ended).await?;
        Ok(RotationReport { secret: name.to_owned(), rotation: saga.id, user: kid, ended })
    }

    /// Resumes `saga`, or starts a new saga of `def`'s kind with the data `start` reads.
    async fn launch<D: saga::SagaDef>(
        &self,
        def: &D,
        name: &str,
        saga: Option<SagaRow>,
        start: impl AsyncFnOnce() -> Result<D::Data, RotationError>,
    ) -> Result<(SagaRow, Ended), RotationError> {
        Ok(match saga {
            Some(saga) => {
                tracing::info!(secret = %name, rotation = %saga.id, step = %saga.step, "resuming a rotation left in flight");
                self.executor().run(def, saga).await?
            }
            None => {
                let subject = Subject::Secret(name.to_owned());
                self.executor().start(def, &new_rotation_id(), &subject, start().await?).await?
            }
        })
    }

    /// Records how an overlap rotation (API key or JWT key) ended. Waiting at `not_current_at`
    /// means the new credential is not current yet; waiting elsewhere, that it is, and the old
    /// one is retired later.
    async fn conclude_overlap(
        &self,
        name: &str,
        id: &str,
        key: &str,
        not_current_at: Option<&str>,
        ended: &Ended,
    ) -> Result<(), RotationError> {
        match ended {
            Ended::Waiting { step, .. } if Some(step.as_str()) == not_current_at => {}
            Ended::Done | Ended::Waiting { .. } => {
                status::rotated(self.ctx.db, name, id, false, self.ctx.clock).await?
            }
            Ended::RolledBack { step, reason } | Ended::Stuck { step, reason } => {
                let why = format!("rotation {id} of key {key} failed at {step}: {reason}");
                status::needs_attention(self.ctx.db, name, &why, self.ctx.clock).await?;
            }
        }
        Ok(())
    }

    /// Finishes or rolls back every rotation a crash left in flight, and runs the waiting steps
    /// (promotions, retirements) that have come due.
    pub async fn resume(&self) -> Result<Vec<RotationReport>, RotationError> {
        let mut reports = Vec::new();
        for saga in saga::in_flight(self.ctx.db).await? {
            if self.ctx.cancel.is_cancelled() {
                break;
            }
            if let Some(report) = self.resume_one(saga).await? {
                reports.push(report);
            }
        }
        Ok(reports)
    }

    /// Resumes `saga` if it is a rotation (`None` for another kind).
    async fn resume_one(&self, saga: SagaRow) -> Result<Option<RotationReport>, RotationError> {
        let Subject::Secret(subject) = saga.subject.clone() else { return Ok(None) };
        Ok(Some(match saga.kind.as_str() {
            kind if kind == ApiKeyRotation::KIND_NAME => self.rotate_api_key(&subject, Some(saga)).await?,
            kind if kind == JwtKeyRotation::KIND_NAME => self.rotate_jwt(&subject, Some(saga)).await?,
            kind if kind == DbPasswordRotation::KIND_NAME => self.resume_db(saga).await?,
            _ => return Ok(None),
        }))
    }

    /// Registers the rotation kinds with `registry`, resumed by this rotator.
    pub fn register<'r>(&'r self, registry: &mut saga::Registry<'r>) {
        for kind in [DbPasswordRotation::KIND_NAME, ApiKeyRotation::KIND_NAME, JwtKeyRotation::KIND_NAME] {
            registry.register(kind, self);
        }
    }

    async fn resume_db(&self, saga: SagaRow) -> Result<RotationReport, RotationError> {
        let subject = saga.subject.name().to_owned();
        let (spec, db) = self.password(&subject)?;
        let connected = self.connect(spec, db).await?;
        let def = DbPasswordRotation::resumed(spec, db, connected.store.as_ref(), connected.engine.as_ref());
        let user = saga.decode::<DbData>()?.user;
        tracing::info!(secret = %subject, rotation = %saga.id, step = %saga.step, "resuming a rotation left in flight");
        let (saga, ended) = self.executor().run(&def, saga).await?;
        self.conclude(&subject, &saga.id, &user, spec, &ended).await?;
        Ok(RotationReport { secret: subject, rotation: saga.id, user, ended })
    }

    /// The configured database-password secrets.
    fn password_secrets(&self) -> impl Iterator<Item = (&String, &SecretSpec)> {
        self.ctx.plan.secrets.iter().filter(|(_, spec)| spec.kind.db_password().is_some())
    }

    /// The secrets whose cadence has run out.
    /// A secret with a rotation in flight is not due: `resume` carries that rotation on.
    pub async fn due(&self) -> Result<Vec<String>, RotationError> {
        let states = states(self.ctx.plan, self.ctx.db, self.ctx.clock.now()).await?;
        Ok(states.into_iter().filter(|(_, state)| state.standing.is_due()).map(|(name, _)| name).collect())
    }

    /// Logs in with each current credential and runs its probes: an out-of-band change shows
    /// here instead of at the next rotation.
    pub async fn check(&self) -> Result<Vec<CheckReport>, RotationError> {
        let mut reports = Vec::new();
        for (name, _) in self.password_secrets() {
            let (spec, db) = self.password(name)?;
            let problem = match self.check_one(spec, db).await {
                Ok(()) => None,
                Err(err) => Some(err.to_string()),
            };
            let outcome = if problem.is_none() { Outcome::Succeeded } else { Outcome::Failed };
            self.ctx
                .ledger
                .append(NewRecord {
                    kind: Kind::RotationCheck.into(),
                    subject: name.clone(),
                    outcome,
                    details: serde_json::json!({ "problem": problem }),
                })
                .await
                .map_err(SagaError::from)?;
            reports.push(CheckReport { secret: name.clone(), ok: problem.is_none(), problem });
        }
        Ok(reports)
    }

    /// Probes like an application for `duration`: every `interval`, re-reads each current
    /// credential and logs in with it. Records one summary per secret in the evidence.
    pub async fn watch(
        &self,
        duration: std::time::Duration,
        interval: std::time::Duration,
    ) -> Result<Vec<WatchReport>, RotationError> {
        let mut watched = Vec::new();
        for (name, _) in self.password_secrets() {
            let (spec, db) = self.password(name)?;
            watched.push((name.clone(), spec, db, WatchReport { secret: name.clone(), ..WatchReport::default() }));
        }
        let deadline = tokio::time::Instant::now() + duration;
        // Cancelled, the watch ends early and still records what it saw.
        while tokio::time::Instant::now() < deadline && !self.ctx.cancel.is_cancelled() {
            for (_, spec, db, report) in &mut watched {
                report.attempts += 1;
                if let Err(err) = self.check_one(spec, db).await {
                    report.failures += 1;
                    report.last_failure = Some(err.to_string());
                }
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.ctx.cancel.cancelled() => {}
            }
        }
        let mut reports = Vec::new();
        for (name, _, _, report) in watched {
            let outcome = if report.failures == 0 { Outcome::Succeeded } else { Outcome::Failed };
            let details = serde_json::json!({ "attempts": report.attempts, "failures": report.failures });
            self.ctx
                .ledger
                .append(NewRecord { kind: Kind::RotationWatch.into(), subject: name, outcome, details })
                .await
                .map_err(SagaError::from)?;
            reports.push(report);
        }
        Ok(reports)
    }

    async fn check_one(&self, spec: &SecretSpec, db: &DbPassword) -> Result<(), RotationError> {
        let connected = self.connect(spec, db).await?;
        let current = db_password::parse(&spec.path, &connected.store.current(&spec.path).await?.value)
            .map_err(|err| unreadable(&spec.path, &err))?;
        connected
            .engine
            .test_login(&Credential { username: current.username, password: current.password }, &db.probes)
            .await?;
        Ok(())
    }

    fn executor(&self) -> Executor<'_> {
        self.ctx.executor()
    }

    async fn conclude(
        &self,
        name: &str,
        id: &str,
        user: &str,
        spec: &SecretSpec,
        ended: &Ended,
    ) -> Result<(), RotationError> {
        match ended {
            Ended::Done => {
                let flipped = matches!(spec.strategy, Strategy::AlternatingUsers { .. });
                status::rotated(self.ctx.db, name, id, flipped, self.ctx.clock).await?;
            }
            // Database rotations never wait; a waiting saga is in flight, not finished or failed.
            Ended::Waiting { .. } => {}
            Ended::RolledBack { step, reason } | Ended::Stuck { step, reason } => {
                let why = format!("rotation {id} of user {user} failed at {step}: {reason}");
                status::needs_attention(self.ctx.db, name, &why, self.ctx.clock).await?;
            }
        }
        Ok(())
    }
}

impl DbPasswordRotation<'_> {
    /// The saga kind, for matching stored sagas without a value of the type.
    const KIND_NAME: &'static str = <DbPasswordRotation<'static> as saga::SagaDef>::KIND;
}

impl ApiKeyRotation<'_> {
    /// The saga kind, for matching stored sagas without a value of the type.
    const KIND_NAME: &'static str = <ApiKeyRotation<'static> as saga::SagaDef>::KIND;
}

impl JwtKeyRotation<'_> {
    /// The saga kind, for matching stored sagas without a value of the type.
    const KIND_NAME: &'static str = <JwtKeyRotation<'static> as saga::SagaDef>::KIND;
}

/// A stored value that is not a credential vigil can rotate.
/// The credential database-password secret `spec` holds now, as its applications read it: what
/// a restore drill logs in to the restored database with.
pub async fn current_credential(stores: &Stores<'_>, spec: &SecretSpec) -> Result<Credential, RotationError> {
    let store = stores.get(spec.store).await?;
    let current = db_password::parse(&spec.path, &store.current(&spec.path).await?.value)
        .map_err(|err| unreadable(&spec.path, &err))?;
    Ok(Credential { username: current.username, password: current.password })
}

fn unreadable(path: &str, err: &saga::StepError) -> RotationError {
    RotationError::Store(StoreError::Refused { what: format!("read secret {path}"), reason: err.to_string() })
}

/// A fresh rotation id: a random (version 4) UUID, which AWS accepts as a ClientRequestToken.
fn new_rotation_id() -> String {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

impl saga::Resume for Rotator<'_> {
    fn resume(&self, saga: SagaRow) -> futures_util::future::BoxFuture<'_, Result<Ended, String>> {
        use futures_util::FutureExt as _;
        async move {
            match self.resume_one(saga).await {
                Ok(Some(report)) => Ok(report.ended),
                Ok(None) => Err("not a rotation".to_owned()),
                Err(err) => Err(err.to_string()),
            }
        }
        .boxed()
    }
}

/// One secret's rotation state: its status row, the rotation in flight, and where it stands
/// against its cadence.
#[derive(Debug, Clone)]
pub struct SecretState {
    /// The recorded status.
    pub status: status::StatusRow,
    /// The rotation in flight, if any.
    pub in_flight: Option<saga::SagaRow>,
    /// Whether a rotation is due, and since or until when.
    pub standing: schedule::Standing,
}

/// Every configured secret's rotation state at `now`: what `vigil status` shows and what
/// `vigil rotate --all-due` starts.
pub async fn states(plan: &Plan, db: &Db, now: DateTime<Utc>) -> Result<BTreeMap<String, SecretState>, SagaError> {
    let in_flight = saga::in_flight(db).await?;
    let mut all = BTreeMap::new();
    for (name, spec) in &plan.secrets {
        let status = status::load(db, name).await?;
        let in_flight = in_flight.iter().find(|s| s.subject == Subject::Secret(name.clone())).cloned();
        let standing = schedule::standing(spec.cadence, status.last_rotated_at(), in_flight.is_some(), now);
        all.insert(name.clone(), SecretState { status, in_flight, standing });
    }
    Ok(all)
}
