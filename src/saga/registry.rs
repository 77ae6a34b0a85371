//! The saga registry: every saga kind registered with what resumes it, so that one call,
//! [`Registry::resume_all`], finishes or unwinds every saga a crash or a signal left in flight,
//! whatever its kind, as steno's recovery re-registers its actions and replays each log.
//!
//! A failure resuming one saga is reported for it and does not stop the others: each ends
//! resumed (done or rolled back), waiting at a step not yet due, or failed (and left in flight
//! for a person, its row untouched).

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{Ended, SagaError, SagaRow, SagaStore, Subject};

/// What resumes sagas of the kinds it is registered for.
pub trait Resume: Send + Sync {
    /// Runs `saga` on from its recorded step to its end (or its next wait).
    fn resume(&self, saga: SagaRow) -> BoxFuture<'_, Result<Ended, String>>;
}

/// How one in-flight saga came out of [`Registry::resume_all`].
#[derive(Debug, Clone)]
pub struct Resumed {
    /// The saga.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// What it acts on.
    pub subject: Subject,
    /// How it ended, or why resuming it failed.
    pub outcome: Result<Ended, String>,
}

/// Saga kinds and what resumes each.
#[derive(Default)]
pub struct Registry<'a> {
    kinds: BTreeMap<&'static str, &'a dyn Resume>,
}

impl<'a> Registry<'a> {
    /// Registers `resumer` for sagas of `kind`.
    pub fn register(&mut self, kind: &'static str, resumer: &'a dyn Resume) {
        self.kinds.insert(kind, resumer);
    }

    /// Resumes every saga in flight in `store`, oldest first, each of a registered kind; stops
    /// starting new ones once `cancel` is cancelled.
    pub async fn resume_all(
        &self,
        store: &dyn SagaStore,
        cancel: &CancellationToken,
    ) -> Result<Vec<Resumed>, SagaError> {
        Ok(self.resume_each(store.in_flight().await?, cancel).await)
    }

    /// Resumes each of `sagas` in turn; stops starting new ones once `cancel` is cancelled.
    pub async fn resume_each(&self, sagas: Vec<SagaRow>, cancel: &CancellationToken) -> Vec<Resumed> {
        let mut resumed = Vec::new();
        for saga in sagas {
            if cancel.is_cancelled() {
                break;
            }
            resumed.push(self.resume(saga).await);
        }
        resumed
    }

    /// Resumes one saga by its kind's resumer.
    pub async fn resume(&self, saga: SagaRow) -> Resumed {
        let (id, kind, subject) = (saga.id.clone(), saga.kind.clone(), saga.subject.clone());
        let outcome = match self.kinds.get(kind.as_str()) {
            Some(resumer) => resumer.resume(saga).await,
            None => Err(format!(
                "no saga kind {kind} is known to this vigil; it was started by another version, which must finish it"
            )),
        };
        if let Err(why) = &outcome {
            tracing::error!(saga = %id, %kind, %subject, %why, "could not resume this saga; the others go on");
        }
        Resumed { id, kind, subject, outcome }
    }
}
