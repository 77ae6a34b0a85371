//! Database password rotation: AWS's four rotation steps as a saga.
//!
//! 1. **create**: a new password, staged as pending in the store under the rotation id;
//! 2. **set**: the pending password given to the database user;
//! 3. **test**: a login with it, and the secret's probe queries;
//! 4. **finish**: the pending value promoted to current.
//!
//! Single user changes the one user's password in place; alternating users changes the user the
//! store does not label current, so the current credential keeps working throughout. The
//! pending password lives only in the store: the saga row names the user, never the password.
//!
//! A rotation that runs from start to finish in one process reads the store once: the current
//! value read before the saga began, and the value it staged, are kept in memory for the later
//! steps ([`Memo`]). A resumed rotation has no memo and reads both back from the store. The
//! memo never weakens the end of the saga: `finish` promotes only the version staged under
//! this rotation's id, so a value replaced in the store after `create` fails the promotion and
//! the saga unwinds.

use std::sync::Mutex;

use secrecy::ExposeSecret as _;
use serde_json::Value;

use crate::config::{DbPassword, SecretSpec, Strategy};
use crate::engines::{Credential, DbEngine, EngineError};
use crate::saga::{SagaDef, SagaRow, Step, StepError};
use crate::secret::SecretString;
use crate::stores::{SecretStore, StoreError};

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbStep {
    /// Stage a new password.
    Create,
    /// Give it to the database user.
    Set,
    /// Log in with it and run the probes.
    Test,
    /// Make it current.
    Finish,
}

impl Step for DbStep {
    const ALL: &'static [Self] = &[Self::Create, Self::Set, Self::Test, Self::Finish];

    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Set => "set",
            Self::Test => "test",
            Self::Finish => "finish",
        }
    }
}

/// What a database-password rotation records: the user it changes and how it chose it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DbData {
    /// `single_user` or `alternating_users`.
    pub strategy: String,
    /// The database target.
    pub target: String,
    /// The user whose password changes.
    pub user: String,
    /// Whether an alternating flip came sooner than `min_flip_interval`, by `--force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<bool>,
    /// Sessions the inactive user of an alternating pair still held when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_sessions: Option<u64>,
}

/// One secret's rotation: its settings, its store and its database.
pub struct DbPasswordRotation<'a> {
    /// The secret's settings.
    pub spec: &'a SecretSpec,
    /// Its database user's.
    pub db: &'a DbPassword,
    /// Where it is stored.
    pub store: &'a dyn SecretStore,
    /// The database it opens.
    pub engine: &'a dyn DbEngine,
    memo: Memo,
}

/// What this process learnt while running a rotation, so that later steps need not ask the
/// store again. Empty for a resumed rotation.
#[derive(Default)]
struct Memo {
    /// The current value, read just before a fresh rotation began; `create` takes it.
    current: Mutex<Option<Parsed>>,
    /// The value this process staged (or is staging) under the rotation's id.
    staged: Mutex<Option<SecretString>>,
}

impl<'a> DbPasswordRotation<'a> {
    /// A rotation about to start from `current`, the value just read from the store.
    pub(super) fn fresh(
        spec: &'a SecretSpec,
        db: &'a DbPassword,
        store: &'a dyn SecretStore,
        engine: &'a dyn DbEngine,
        current: Parsed,
    ) -> Self {
        let memo = Memo { current: Mutex::new(Some(current)), staged: Mutex::default() };
        Self { spec, db, store, engine, memo }
    }

    /// A rotation resumed from its row: everything it needs is read back from the store.
    pub(super) fn resumed(
        spec: &'a SecretSpec,
        db: &'a DbPassword,
        store: &'a dyn SecretStore,
        engine: &'a dyn DbEngine,
    ) -> Self {
        Self { spec, db, store, engine, memo: Memo::default() }
    }
}

impl Memo {
    fn take_current(&self) -> Option<Parsed> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn staged(&self) -> Option<SecretString> {
        self.staged.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_staged(&self, value: SecretString) {
        *self.staged.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
    }
}

impl From<StoreError> for StepError {
    fn from(err: StoreError) -> Self {
        if err.is_transient() { Self::Transient(err.to_string()) } else { Self::Failed(err.to_string()) }
    }
}

impl From<EngineError> for StepError {
    fn from(err: EngineError) -> Self {
        if err.is_transient() { Self::Transient(err.to_string()) } else { Self::Failed(err.to_string()) }
    }
}

/// A stored credential: the JSON object, and its user and password.
pub(super) struct Parsed {
    pub object: serde_json::Map<String, Value>,
    pub username: String,
    pub password: SecretString,
}

/// Reads a stored value in AWS's template form; never shows the value in an error.
pub(super) fn parse(path: &str, value: &SecretString) -> Result<Parsed, StepError> {
    let malformed =
        || StepError::Failed(format!("secret {path} is not a JSON object with string `username` and `password`"));
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(value.expose_secret()) else {
        return Err(malformed());
    };
    let (Some(Value::String(username)), Some(Value::String(password))) =
        (object.get("username"), object.get("password"))
    else {
        return Err(malformed());
    };
    Ok(Parsed { username: username.clone(), password: SecretString::from(password.clone()), object })
}

impl DbPasswordRotation<'_> {
    /// The value this rotation staged, if it is still staged.
    async fn staged(&self, saga: &SagaRow) -> Result<Option<Parsed>, StepError> {
        match self.store.pending(&self.spec.path).await? {
            Some(pending) if pending.token == saga.id => Ok(Some(parse(&self.spec.path, &pending.value)?)),
            _ => Ok(None),
        }
    }

    /// The value this rotation staged: from the memo when this process staged it, else from
    /// the store.
    async fn staged_or_fail(&self, saga: &SagaRow) -> Result<Parsed, StepError> {
        if let Some(value) = self.memo.staged() {
            return parse(&self.spec.path, &value);
        }
        self.staged(saga)
            .await?
            .ok_or_else(|| StepError::Failed(format!("the value rotation {} staged is gone from the store", saga.id)))
    }
}

impl SagaDef for DbPasswordRotation<'_> {
    type Step = DbStep;
    type Data = DbData;
    const KIND: &'static str = "rotation.db_password";
    const AREA: crate::evidence::Area = crate::evidence::Area::Rotation;
    const RESUME: &'static str = "vigil rotate --resume";

    async fn act(&self, saga: &SagaRow, data: &DbData, step: DbStep) -> Result<Option<DbData>, StepError> {
        self.act_step(saga, &data.user, step).await.map(|()| None)
    }

    async fn undo(&self, saga: &SagaRow, data: &DbData, step: DbStep) -> Result<(), StepError> {
        self.undo_step(saga, &data.user, step).await
    }
}

impl DbPasswordRotation<'_> {
    async fn act_step(&self, saga: &SagaRow, user: &str, step: DbStep) -> Result<(), StepError> {
        match step {
            DbStep::Create => {
                if let Some(value) = self.memo.staged() {
                    // A retry of this process's own attempt: the same value under the same
                    // token again, which the store takes as a repeat.
                    self.store.put_pending(&self.spec.path, &saga.id, &value).await?;
                    return Ok(());
                }
                let current = match self.memo.take_current() {
                    // A fresh start: nothing can be staged under an id made a moment ago, and the
                    // current value was read just before the saga began.
                    Some(current) => current,
                    None => {
                        if self.staged(saga).await?.is_some() {
                            return Ok(());
                        }
                        parse(&self.spec.path, &self.store.current(&self.spec.path).await?.value)?
                    }
                };
                let password = self.db.policy.generate();
                let mut object = current.object;
                object.insert("username".into(), Value::String(user.to_owned()));
                object.insert("password".into(), Value::String(password.expose_secret().to_owned()));
                let value = SecretString::from(Value::Object(object).to_string());
                self.memo.set_staged(value.clone());
                self.store.put_pending(&self.spec.path, &saga.id, &value).await?;
                Ok(())
            }
            DbStep::Set => {
                let staged = self.staged_or_fail(saga).await?;
                self.engine.set_password(user, &staged.password).await?;
                Ok(())
            }
            DbStep::Test => {
                let staged = self.staged_or_fail(saga).await?;
                let credential = Credential { username: user.to_owned(), password: staged.password };
                match self.engine.test_login(&credential, &self.db.probes).await {
                    Ok(()) => Ok(()),
                    Err(err) if err.is_transient() => Err(StepError::Transient(err.to_string())),
                    Err(err) => Err(StepError::Failed(format!("the new password failed its test: {err}"))),
                }
            }
            DbStep::Finish => {
                self.store.promote(&self.spec.path, &saga.id).await?;
                Ok(())
            }
        }
    }

    async fn undo_step(&self, saga: &SagaRow, user: &str, step: DbStep) -> Result<(), StepError> {
        match step {
            // Nothing to take back: testing changes nothing, and a failed promotion promoted nothing.
            DbStep::Test | DbStep::Finish => Ok(()),
            DbStep::Set => {
                // Alternating: the changed user is not the current one; it is simply left unused.
                if !matches!(self.spec.strategy, Strategy::SingleUser) {
                    return Ok(());
                }
                // Still staged means not promoted: put the current password back on the user, so
                // that the credential labelled current logs in again. Not staged means promoted
                // (or never staged, in which case set never ran): nothing to put back.
                if self.staged(saga).await?.is_none() {
                    return Ok(());
                }
                let current = parse(&self.spec.path, &self.store.current(&self.spec.path).await?.value)?;
                // Only the user this rotation changed gets a password back, and only the one the
                // current value holds for that user: a stored value naming another user (which
                // anyone who can write the secret could plant) never makes vigil change it.
                if current.username != user {
                    return Err(StepError::Failed(format!(
                        "cannot put user {user}'s password back: the current value of {} names user {}; set {user}'s password to the stored one by hand, or fix the stored value and rotate again",
                        self.spec.path, current.username
                    )));
                }
                self.engine.set_password(user, &current.password).await?;
                Ok(())
            }
            DbStep::Create => {
                self.store.discard_pending(&self.spec.path, &saga.id).await?;
                Ok(())
            }
        }
    }
}
