//! What every command and every saga kind runs with: the plan, the state store, the evidence
//! ledger, the clock, the retry policy, the cancellation token and the clients made once per
//! process. Rotation and backups (and later drills and the daemon) take one [`Ctx`] instead of
//! carrying the same fields each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Named, Plan, Target};
use crate::engines::{self, DbEngine};
use crate::evidence::Ledger;
use crate::saga::{Executor, RetryPolicy};
use crate::state::Db;
use crate::stores::{ReferenceError, Stores};

/// The shared context of one command or one daemon.
pub struct Ctx<'a> {
    /// The configuration.
    pub plan: &'a Plan,
    /// The state store: saga rows, statuses, the backup catalog.
    pub db: &'a Db,
    /// Where every step is recorded.
    pub ledger: &'a Ledger,
    /// The time: injected, so tests never sleep for a schedule.
    pub clock: &'a dyn Clock,
    /// Retries of transient failures within a step.
    pub retry: RetryPolicy,
    /// Cancelled on Ctrl-C or SIGTERM: the step in flight finishes and is recorded, no new
    /// step starts, and what is left resumes on the next run.
    pub cancel: CancellationToken,
    /// Secret store clients, connected on first use and kept for the process.
    pub stores: Stores<'a>,
    /// Database engines by target name, each with its pool of admin connections, made on first
    /// use and kept for the process.
    engines: Mutex<HashMap<String, Arc<dyn DbEngine>>>,
}

impl<'a> Ctx<'a> {
    /// A context over `plan`, recording in `db` and `ledger`, stopped by `cancel`, with the
    /// default retry policy.
    pub fn new(
        plan: &'a Plan,
        db: &'a Db,
        ledger: &'a Ledger,
        clock: &'a dyn Clock,
        cancel: CancellationToken,
    ) -> Self {
        let stores = Stores::new(plan.aws.as_ref(), plan.vault.as_ref());
        Self { plan, db, ledger, clock, retry: RetryPolicy::default(), cancel, stores, engines: Mutex::default() }
    }

    /// The engine of `target`, administered with its admin credential, which is read once per
    /// process. No lock is held while the credential is read.
    pub async fn engine(&self, target: &Named<Target>) -> Result<Arc<dyn DbEngine>, ReferenceError> {
        let known = self.engines.lock().unwrap_or_else(|p| p.into_inner()).get(&target.name).cloned();
        if let Some(engine) = known {
            return Ok(engine);
        }
        let admin = self.stores.login(&target.value.admin).await?;
        let settings = &target.value;
        let made: Arc<dyn DbEngine> = Arc::from(engines::connect(settings.engine, settings.endpoint(), admin));
        // Two callers may both have made one: the first kept wins, so one pool serves both.
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        Ok(engines.entry(target.name.clone()).or_insert(made).clone())
    }

    /// The saga executor of this context.
    pub fn executor(&self) -> Executor<'_> {
        Executor { store: self.db, ledger: self.ledger, clock: self.clock, retry: self.retry, cancel: &self.cancel }
    }
}
