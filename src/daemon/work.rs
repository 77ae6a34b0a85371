//! The work queue: backups and drills the leader queued (`daemon_work`), claimed and run by any
//! replica, so that a fleet of databases spreads its dumps across replicas while scheduling
//! stays with the leader.
//!
//! - The leader queues a job's slot in the transaction that moves the job's next run on, under
//!   its epoch: a slot is queued exactly once, whoever crashes when.
//! - A replica claims a row (`FOR UPDATE SKIP LOCKED` on PostgreSQL) with its **session**: on
//!   PostgreSQL a dedicated connection (its backend's pid and start time), which the server ends
//!   once it goes silent for [`LEASE`](super::lease::LEASE); on SQLite the one daemon's process.
//!   Only the newest leader's work is claimed, and never two rows acting on one subject at once.
//! - The row's id is the id of the saga that runs it, so whoever finds the row after a crash
//!   finds the saga: in flight, it is resumed; ended, the row is closed with its outcome; absent,
//!   the job runs. The leader puts the rows of ended sessions back in the queue.
//! - A failed run queues a retry of its slot after a backoff (1 minute, doubling up to an hour);
//!   a newer slot of the job supersedes older rows still queued.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;

use super::{Ran, Shared, alongside, ended_line, lease, metrics, store};
use crate::alerts::AlertKind;
use crate::context::Ctx;
use crate::drill::Drills;
use crate::evidence::Ledger;
use crate::saga::{self, Subject};
use crate::state::{Claim, Db, Fence, Fenced, Pool, fenced};

pub use super::timetable::Job;

/// How often a replica looks for work (and its session says it is alive).
const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the leader looks for the work of ended sessions.
const RECOVER: std::time::Duration = std::time::Duration::from_secs(5);

/// After a failed run, its slot is tried again this long after, doubling up to an hour.
const RETRY_FIRST: chrono::Duration = chrono::Duration::minutes(1);
const RETRY_MAX: chrono::Duration = chrono::Duration::hours(1);

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One queued run of a job.
#[derive(Debug, Clone)]
pub struct Item {
    /// The row's id, and the id of the saga that runs it.
    pub id: String,
    /// The job.
    pub job: Job,
    /// The slot it runs for.
    pub slot: String,
    /// 0 for the slot's first run, then one more per retry.
    pub attempt: i64,
    /// The saga subject it acts on.
    pub subject: String,
    /// The subject it waits for.
    pub after: Option<String>,
    /// The epoch of the leader it was queued under.
    pub epoch: i64,
}

const ITEM_COLUMNS: &str = "id, job, slot, attempt, subject, after, epoch";

/// A claimed row: its item, or the id and name of a job this vigil does not know.
fn decode<'r, R>(row: &'r R) -> Result<Result<Item, (String, String)>, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let name: String = row.try_get(1)?;
    let Some(job) = Job::parse(&name) else { return Ok(Err((row.try_get(0)?, name))) };
    Ok(Ok(Item {
        id: row.try_get(0)?,
        job,
        slot: row.try_get(2)?,
        attempt: row.try_get(3)?,
        subject: row.try_get(4)?,
        after: row.try_get(5)?,
        epoch: row.try_get(6)?,
    }))
}

/// Queues `job`'s `slot` under `epoch`, superseding its older rows still queued, and moves its
/// next run to `next_run`, all in one transaction refused once a newer leader exists. `after`
/// is the subject the run waits for. Returns the new row's id (none when the slot was queued
/// before).
pub async fn enqueue(
    db: &Db,
    epoch: i64,
    job: &Job,
    slot: DateTime<Utc>,
    after: Option<&str>,
    next_run: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Result<Option<String>, Fenced>, sqlx::Error> {
    const SUPERSEDE: &str = "UPDATE daemon_work SET state = 'superseded', finished_at = $1, outcome = $2 \
                             WHERE job = $3 AND state = 'queued'";
    const INSERT: &str = "INSERT INTO daemon_work (id, job, slot, attempt, subject, after, epoch, state, not_before, queued_at) \
                          VALUES ($1, $2, $3, 0, $4, $5, $6, 'queued', $7, $7) ON CONFLICT (job, slot, attempt) DO NOTHING";
    let id = crate::clock::sortable_id_at(now);
    let (name, slot) = (job.to_string(), stamp(slot));
    let superseded = format!("superseded by the slot of {slot}");
    fenced!(db, Some(Fence::Epoch(epoch)), tx => {
        sqlx::query(SUPERSEDE).bind(stamp(now)).bind(&superseded).bind(&name).execute(&mut *tx).await?;
        let inserted = sqlx::query(INSERT)
            .bind(&id)
            .bind(&name)
            .bind(&slot)
            .bind(job.claim())
            .bind(after)
            .bind(epoch)
            .bind(stamp(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(store::SAVE)
            .bind(&name)
            .bind(stamp(next_run))
            .bind(Some(stamp(now)))
            .bind(Some("queued"))
            .bind(stamp(now))
            .bind(None::<String>)
            .execute(&mut *tx)
            .await?;
        (inserted == 1).then_some(id)
    })
}

/// Puts back in the queue, under `epoch`, every row whose claimer's session ended, and moves
/// queued rows of an older leader to it. Returns how many rows were put back.
pub async fn recover(db: &Db, epoch: i64, session: &Session) -> Result<Result<u64, Fenced>, sqlx::Error> {
    const RESTAMP: &str = "UPDATE daemon_work SET epoch = $1 WHERE state = 'queued' AND epoch <> $1";
    const SQLITE: &str = "UPDATE daemon_work SET state = 'queued', session = NULL, worker = NULL, epoch = $1 \
                          WHERE state = 'running' AND (session IS NULL OR session <> $2)";
    // pg_stat_activity shows backend_start of the sessions of one's own role (or with
    // pg_read_all_stats): replicas share the state store's role (docs/privileges.md).
    const POSTGRES: &str = "UPDATE daemon_work SET state = 'queued', session = NULL, worker = NULL, epoch = $1 \
                            WHERE state = 'running' AND (session IS NULL OR (session <> $2 AND session NOT IN \
                            (SELECT format('%s@%s', pid, extract(epoch FROM backend_start)) FROM pg_stat_activity \
                             WHERE backend_start IS NOT NULL)))";
    let sql = match db.pool() {
        Pool::Sqlite(_) => SQLITE,
        Pool::Postgres(_) => POSTGRES,
    };
    fenced!(db, Some(Fence::Epoch(epoch)), tx => {
        sqlx::query(RESTAMP).bind(epoch).execute(&mut *tx).await?;
        sqlx::query(sql).bind(epoch).bind(&session.token).execute(&mut *tx).await?.rows_affected()
    })
}

/// Closes `item` with how its run ended, if `session` still holds it; a failed run queues a
/// retry of its slot. A run that was stopped (a signal, the lead lost) is put back instead, to
/// be resumed by the next claimer.
pub async fn finish(db: &Db, item: &Item, session: &Session, end: End, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    const CLOSE: &str = "UPDATE daemon_work SET state = $1, finished_at = $2, outcome = $3 \
                         WHERE id = $4 AND session = $5 AND state = 'running'";
    const RELEASE: &str = "UPDATE daemon_work SET state = 'queued', session = NULL, worker = NULL \
                           WHERE id = $1 AND session = $2 AND state = 'running'";
    const RETRY: &str = "INSERT INTO daemon_work (id, job, slot, attempt, subject, after, epoch, state, not_before, queued_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9) ON CONFLICT (job, slot, attempt) DO NOTHING";
    macro_rules! finish_in {
        ($tx:ident) => {{
            let closed = match &end {
                End::Stopped => {
                    sqlx::query(RELEASE).bind(&item.id).bind(&session.token).execute(&mut *$tx).await?.rows_affected()
                }
                End::Ran(ran) => sqlx::query(CLOSE)
                    .bind(if ran.ok { "succeeded" } else { "failed" })
                    .bind(stamp(now))
                    .bind(&ran.outcome)
                    .bind(&item.id)
                    .bind(&session.token)
                    .execute(&mut *$tx)
                    .await?
                    .rows_affected(),
            };
            if closed == 0 {
                tracing::warn!(job = %item.job, run = %item.id, "the work was put back while this replica ran it (its session ended); whoever claimed it next carries it on");
            } else if let End::Ran(ran) = &end
                && !ran.ok
            {
                let wait = (RETRY_FIRST * 2i32.saturating_pow(u32::try_from(item.attempt.min(10)).unwrap_or(10))).min(RETRY_MAX);
                sqlx::query(RETRY)
                    .bind(crate::clock::sortable_id_at(now))
                    .bind(item.job.to_string())
                    .bind(&item.slot)
                    .bind(item.attempt + 1)
                    .bind(&item.subject)
                    .bind(&item.after)
                    .bind(item.epoch)
                    .bind(stamp(now + wait))
                    .bind(stamp(now))
                    .execute(&mut *$tx)
                    .await?;
                tracing::info!(job = %item.job, retry_in_secs = wait.num_seconds(), "its slot is tried again");
            }
            $tx.commit().await
        }};
    }
    match db.pool() {
        Pool::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            finish_in!(tx)
        }
        Pool::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            finish_in!(tx)
        }
    }
}

/// How a claimed run ended.
pub enum End {
    /// It ran to an outcome.
    Ran(Ran),
    /// It was stopped before its end: its saga is left to resume.
    Stopped,
}

/// The subjects of rows running, or queued and due: what the RPO watch waits for.
pub async fn open_subjects(db: &Db, now: DateTime<Utc>) -> Result<BTreeSet<String>, sqlx::Error> {
    const SQL: &str = "SELECT DISTINCT subject FROM daemon_work \
                       WHERE state = 'running' OR (state = 'queued' AND not_before <= $1)";
    let subjects: Vec<String> =
        crate::state::on_pool!(db, pool => sqlx::query_scalar(SQL).bind(stamp(now)).fetch_all(pool).await?);
    Ok(subjects.into_iter().collect())
}

/// Whether any row is queued and due: the read a replica makes before it tries to claim.
pub async fn due_work(db: &Db, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    const SQL: &str = "SELECT count(*) FROM daemon_work WHERE state = 'queued' AND not_before <= $1";
    let count: i64 =
        crate::state::on_pool!(db, pool => sqlx::query_scalar(SQL).bind(stamp(now)).fetch_one(pool).await?);
    Ok(count > 0)
}

/// The rows queued or running: their sagas are the queue's to resume, not the catch-up's, and so
/// is a saga on one of their subjects under another id (an earlier attempt's, which a retry
/// adopts).
pub struct Open {
    /// The rows' ids (their sagas' ids).
    pub ids: BTreeSet<String>,
    /// Their subjects, as sagas name them (`backup:SET`, `drill:NAME`).
    pub subjects: BTreeSet<String>,
}

/// The rows queued or running.
pub async fn open_work(db: &Db) -> Result<Open, sqlx::Error> {
    const SQL: &str = "SELECT id, subject FROM daemon_work WHERE state IN ('queued', 'running')";
    let rows: Vec<(String, String)> = crate::state::on_pool!(db, pool => sqlx::query_as(SQL).fetch_all(pool).await?);
    let (ids, subjects) = rows.into_iter().unzip();
    Ok(Open { ids, subjects })
}

/// Each of `ids` that has ended: its job, whether it succeeded and its outcome.
pub async fn ended(db: &Db, ids: &[String]) -> Result<Vec<(String, String, bool, String)>, sqlx::Error> {
    const SQL: &str = "SELECT id, job, state, coalesce(outcome, '') FROM daemon_work \
                       WHERE id = $1 AND state IN ('succeeded', 'failed', 'superseded')";
    let mut out = Vec::new();
    for id in ids {
        let row = crate::state::on_pool!(db, pool => match sqlx::query(SQL).bind(id).fetch_optional(pool).await? {
            Some(row) => Some((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?, row.try_get::<String, _>(2)?, row.try_get::<String, _>(3)?)),
            None => None,
        });
        if let Some((id, job, state, outcome)) = row {
            out.push((id, job, state != "failed", outcome));
        }
    }
    Ok(out)
}

/// What claims work: a replica's session.
pub struct Session {
    /// Who claims, as rows name it.
    worker: String,
    /// The session's token: `pid@start` of a PostgreSQL backend, or this process's own.
    token: String,
    /// The dedicated PostgreSQL connection the session is (none on SQLite).
    conn: Option<sqlx::PgConnection>,
}

impl Session {
    /// Opens this replica's session: on PostgreSQL a dedicated connection that the server ends
    /// once it goes silent for the lease (claims keep it busy); on SQLite, this process.
    pub async fn open(db: &Db, worker: &str, now: DateTime<Utc>) -> Result<Self, sqlx::Error> {
        match db.pool() {
            Pool::Sqlite(_) => {
                Ok(Self { worker: worker.to_owned(), token: crate::clock::sortable_id_at(now), conn: None })
            }
            Pool::Postgres(pool) => {
                let mut conn = lease::session(pool).await?;
                let token: String = sqlx::query_scalar(
                    "SELECT format('%s@%s', pid, extract(epoch FROM backend_start)) FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                )
                .fetch_one(&mut conn)
                .await?;
                Ok(Self { worker: worker.to_owned(), token, conn: Some(conn) })
            }
        }
    }

    /// Claims the oldest due row of the newest leader's that no running row shares a subject
    /// with and whose awaited subject is idle.
    pub async fn claim(&mut self, db: &Db, now: DateTime<Utc>) -> Result<Option<Item>, sqlx::Error> {
        macro_rules! claim_sql {
            ($lock:literal) => {
                concat!(
                    "UPDATE daemon_work SET state = 'running', session = $1, worker = $2, claimed_at = $3 WHERE id = (\
                     SELECT w.id FROM daemon_work w WHERE w.state = 'queued' AND w.not_before <= $3 \
                     AND w.epoch = (SELECT epoch FROM daemon_leader WHERE id = 1) \
                     AND NOT EXISTS (SELECT 1 FROM daemon_work r WHERE r.subject = w.subject AND r.state = 'running') \
                     AND (w.after IS NULL OR NOT EXISTS (SELECT 1 FROM daemon_work b WHERE b.subject = w.after \
                          AND (b.state = 'running' OR (b.state = 'queued' AND b.not_before <= $3)))) \
                     ORDER BY w.not_before, w.id LIMIT 1",
                    $lock,
                    ") RETURNING id, job, slot, attempt, subject, after, epoch"
                )
            };
        }
        debug_assert_eq!(ITEM_COLUMNS, "id, job, slot, attempt, subject, after, epoch");
        let at = stamp(now);
        let row = match (&mut self.conn, db.pool()) {
            (Some(conn), _) => {
                let query = sqlx::query(claim_sql!(" FOR UPDATE SKIP LOCKED"));
                match query.bind(&self.token).bind(&self.worker).bind(&at).fetch_optional(conn).await? {
                    Some(row) => Some(decode(&row)?),
                    None => None,
                }
            }
            (None, Pool::Sqlite(pool)) => {
                match sqlx::query(claim_sql!(""))
                    .bind(&self.token)
                    .bind(&self.worker)
                    .bind(&at)
                    .fetch_optional(pool)
                    .await?
                {
                    Some(row) => Some(decode(&row)?),
                    None => None,
                }
            }
            (None, Pool::Postgres(_)) => return Err(sqlx::Error::PoolClosed),
        };
        match row {
            None => Ok(None),
            Some(Ok(item)) => Ok(Some(item)),
            Some(Err((id, job))) => {
                // Queued by a newer vigil during an upgrade: closed, not retried by this one.
                tracing::error!(%job, run = %id, "a queued job this vigil does not know; closing it as failed");
                const FAIL: &str =
                    "UPDATE daemon_work SET state = 'failed', finished_at = $1, outcome = $2 WHERE id = $3";
                let outcome = format!("{job} is unknown to vigil {}", env!("CARGO_PKG_VERSION"));
                crate::state::on_pool!(db, pool => sqlx::query(FAIL).bind(&at).bind(outcome).bind(&id).execute(pool).await.map(drop))?;
                Ok(None)
            }
        }
    }

    /// Says the session is alive: a replica whose runs fill its concurrency claims nothing, and
    /// a session silent for the lease would be ended under its runs.
    pub async fn ping(&mut self) -> Result<(), sqlx::Error> {
        if let Some(conn) = &mut self.conn {
            sqlx::query("SELECT 1").execute(conn).await?;
        }
        Ok(())
    }

    /// Ends the session.
    pub async fn close(self) {
        if let Some(conn) = self.conn {
            use sqlx::Connection as _;
            let _ = conn.close().await;
        }
    }
}

/// Claims and runs queued work until `stop`, up to `[daemon] concurrency` runs at once; while
/// this replica leads, also puts back the work of ended sessions. Runs in flight when `stop`
/// comes finish their step (up to `shutdown_grace`) and are put back.
///
/// Runs end with their session: when it fails, its runs are cancelled and no new session claims
/// anything until they have stopped (or, after `shutdown_grace`, been dropped), since the leader puts
/// their rows back for another replica to resume.
pub async fn work(shared: &Arc<Shared>, ledger: &Ledger, stop: &CancellationToken, worker: &str) {
    let db = &shared.db;
    let mut session: Option<Session> = None;
    let mut running: FuturesUnordered<BoxFuture<'_, (Item, End)>> = FuturesUnordered::new();
    let mut done: VecDeque<(Item, End)> = VecDeque::new();
    // Runs of a session that failed, cancelled, and when they are dropped if still running.
    let mut orphaned: FuturesUnordered<BoxFuture<'_, (Item, End)>> = FuturesUnordered::new();
    let mut orphaned_until = tokio::time::Instant::now();
    // The loop's own queries run while the runs go on: a run may hold a lock they wait for.
    macro_rules! meanwhile {
        ($work:expr) => {
            alongside(&mut running, &mut done, $work).await
        };
    }
    let runs = stop.child_token();
    // The runs of the session in use: cancelled when it fails.
    let mut session_runs = runs.child_token();
    // The epoch last recovered under, and when.
    let mut recovered: Option<(i64, tokio::time::Instant)> = None;
    macro_rules! lose_session {
        () => {{
            if let Some(lost) = session.take() {
                lost.close().await;
            }
            // The next session recovers at once (on SQLite too, where it would otherwise wait for
            // the next lead): the failed session's rows are its to put back.
            recovered = None;
            session_runs.cancel();
            session_runs = runs.child_token();
            if !running.is_empty() {
                tracing::warn!(
                    runs = running.len(),
                    "the work session failed: its runs are stopped, and nothing is claimed until they have"
                );
                orphaned.extend(std::mem::take(&mut running));
                // As long as a SIGTERM gives the steps in flight (at least the lease): their
                // writes are refused already, and a run that ends removes what it wrote.
                let grace = shared.plan().daemon.shutdown_grace.to_std().max(lease::LEASE);
                orphaned_until = tokio::time::Instant::now() + grace;
            }
        }};
    }
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        while let Some((item, end)) = done.pop_front() {
            let close = match &session {
                Some(open) => meanwhile!(finish(db, &item, open, end, shared.clock.now())),
                None => Ok(()),
            };
            if let Err(err) = close {
                tracing::error!(%err, job = %item.job, "cannot record the run's end; the leader puts it back once this session ends");
            }
        }
        let stopping = stop.is_cancelled();
        let now = shared.clock.now();
        // Kept alive while runs finish after a stop too: they hold their claims by it.
        if let Some(open) = session.as_mut()
            && let Err(err) = meanwhile!(open.ping())
        {
            tracing::warn!(%err, "the work session failed");
            lose_session!();
        }
        // A leader that lost the lead claims nothing until its lead has ended.
        if !stopping && !shared.deposed.load(Ordering::SeqCst) && orphaned.is_empty() {
            if session.is_none() {
                match meanwhile!(Session::open(db, worker, now)) {
                    Ok(opened) => session = Some(opened),
                    Err(err) => tracing::warn!(%err, "cannot open a session to claim work; retrying"),
                }
            }
            let claimed = match session.as_mut() {
                Some(open) => {
                    let claims = Claims { shared, ledger, runs: &session_runs, now, recovered: &mut recovered };
                    let busy = running.len();
                    meanwhile!(claims.take(open, busy))
                }
                None => Ok(Vec::new()),
            };
            match claimed {
                Ok(claimed) => running.extend(claimed),
                Err(err) => {
                    tracing::warn!(%err, "the work session failed");
                    lose_session!();
                }
            }
        }
        if stopping && running.is_empty() && done.is_empty() {
            break;
        }
        if stopping && deadline.is_none() {
            runs.cancel();
            deadline = Some(tokio::time::Instant::now() + shared.plan().daemon.shutdown_grace.to_std());
        }
        tokio::select! {
            Some(ended) = running.next(), if !running.is_empty() => done.push_back(ended),
            Some((item, _)) = orphaned.next(), if !orphaned.is_empty() => {
                tracing::warn!(job = %item.job, run = %item.id, "a run of the failed session stopped; whoever claims it next resumes it");
            }
            () = tokio::time::sleep_until(orphaned_until), if !orphaned.is_empty() => {
                tracing::warn!(runs = orphaned.len(), "runs of the failed session did not stop within shutdown_grace; dropped, to be resumed by whoever claims them next");
                orphaned = FuturesUnordered::new();
            }
            () = stop.cancelled(), if !stopping => {}
            () = tokio::time::sleep(POLL) => {}
            () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                tracing::warn!(runs = running.len(), "the work in flight did not finish within shutdown_grace; it resumes on the next claim");
                break;
            }
        }
    }
    drop(running);
    drop(orphaned);
    if let Some(open) = session {
        open.close().await;
    }
}

/// One look for work by a session: what `work` hands it.
struct Claims<'s, 'r> {
    shared: &'s Arc<Shared>,
    ledger: &'s Ledger,
    /// The session's runs' token.
    runs: &'r CancellationToken,
    now: DateTime<Utc>,
    /// The epoch last recovered under, and when.
    recovered: &'r mut Option<(i64, tokio::time::Instant)>,
}

impl<'s> Claims<'s, '_> {
    /// While leading, puts back the work of ended sessions (on SQLite once per lead); then
    /// claims due rows until `running` reaches the concurrency. An error is the session's.
    async fn take(self, open: &mut Session, running: usize) -> Result<Vec<BoxFuture<'s, (Item, End)>>, sqlx::Error> {
        let (shared, db, now) = (self.shared, &self.shared.db, self.now);
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let due = match *self.recovered {
            Some((last, _)) if last != epoch => true,
            Some((_, when)) => open.conn.is_some() && when.elapsed() >= RECOVER,
            None => true,
        };
        if epoch > 0 && due {
            *self.recovered = Some((epoch, tokio::time::Instant::now()));
            match recover(db, epoch, open).await {
                Ok(Ok(0)) => {}
                Ok(Ok(back)) => tracing::warn!(rows = back, "work of ended sessions put back in the queue"),
                Ok(Err(fenced)) => tracing::error!(%fenced, "cannot recover work"),
                Err(err) => tracing::warn!(%err, "cannot recover the work of ended sessions"),
            }
        }
        let plan = shared.plan();
        // A read first: an idle replica takes no write lock once a second.
        let waiting = due_work(db, now).await.unwrap_or_else(|err| {
            tracing::warn!(%err, "cannot look for work");
            false
        });
        let mut claimed = Vec::new();
        while waiting && running + claimed.len() < plan.daemon.concurrency {
            let Some(item) = open.claim(db, now).await? else { break };
            tracing::info!(job = %item.job, run = %item.id, attempt = item.attempt, "running");
            let claim = Claim { run: item.id.clone(), session: open.token.clone() };
            claimed.push(run(shared, self.ledger, plan.clone(), item, claim, self.runs.child_token()).boxed());
        }
        Ok(claimed)
    }
}

/// Runs `item` with a context of its own over `plan`, every write of it through `claim`: once
/// the claim is lost (this replica paused or cut off past its lease, the row put back and
/// claimed by another), its saga writes, catalog writes, records and alerts are refused, and its
/// end is reported as stopped, for whoever holds the claim now to report.
async fn run(
    shared: &Shared,
    ledger: &Ledger,
    plan: Arc<crate::config::Plan>,
    item: Item,
    claim: Claim,
    cancel: CancellationToken,
) -> (Item, End) {
    let db = shared.db.claimed(claim);
    let ledger = ledger.claimed(db.clone());
    let alerts = shared.alerts.through(db.clone());
    let drills = Drills::new(Ctx::new(&plan, &db, &ledger, shared.clock.as_ref(), cancel.clone()));
    let Some(ran) = execute(&drills, &shared.metrics, &item).await else {
        tracing::warn!(job = %item.job, run = %item.id, "this replica lost the run's claim while it ran; whoever claimed it next carries it on");
        return (item, End::Stopped);
    };
    let end = if cancel.is_cancelled() && !ran.ok { End::Stopped } else { End::Ran(ran) };
    if let End::Ran(ran) = &end {
        let kind = match &item.job {
            Job::Drill(_) => AlertKind::DrillFailed,
            _ => AlertKind::BackupFailed,
        };
        alerts.settle(kind, &item.subject, (!ran.ok).then_some(ran.outcome.as_str())).await;
        if ran.ok {
            tracing::info!(job = %item.job, outcome = %ran.outcome, "done");
        } else {
            tracing::error!(job = %item.job, outcome = %ran.outcome, "failed");
            let kind = item.job.to_string().split(':').next().unwrap_or_default().to_owned();
            shared.metrics.job_failures.get_or_create(&metrics::label("job", &kind)).inc();
        }
    }
    (item, end)
}

/// Whether the run's claim was lost: asked before anything about its end is said (a metric, an
/// alert, the row). A store that cannot be reached loses no claim here: what is said then is
/// refused by the fence anyway.
async fn claim_lost(db: &Db) -> bool {
    matches!(db.check_fence().await, Err(crate::state::StateError::Fenced(_)))
}

/// Runs the saga `item` names: resumed if a crash left it in flight, closed with its outcome
/// if it ended, started otherwise (after a saga an earlier attempt left on the subject). `None`
/// when the run's claim was lost by its end.
async fn execute(drills: &Drills<'_>, metrics: &super::Metrics, item: &Item) -> Option<Ran> {
    let db = drills.ctx().db;
    let found = match saga::get(db, &item.id).await {
        Ok(found) => found,
        Err(err) => return Some(Ran::failed(err.to_string())),
    };
    if let Some(saga) = &found
        && !saga.status.in_flight()
    {
        let ok = saga.status == saga::Status::Done;
        let outcome = format!("{} {} had ended: {}", saga.kind, saga.id, saga.status.as_str());
        return Some(if ok { Ran::ok(outcome) } else { Ran::failed(outcome) });
    }
    match &item.job {
        Job::Backup { set, kind } => {
            let began = std::time::Instant::now();
            let result = async {
                let left = match found {
                    Some(saga) => Some(saga),
                    None => saga::in_flight(db).await?.into_iter().find(|s| s.subject == Subject::Backup(set.clone())),
                };
                if let Some(saga) = left {
                    // This run's own saga, however it ends, or an earlier attempt's that
                    // completes, is the slot's backup.
                    let own = saga.id == item.id;
                    if let Some(report) = drills.backups().resume_one(saga).await?
                        && (own || matches!(report.ended, saga::Ended::Done))
                    {
                        return Ok(report);
                    }
                }
                drills.backups().run_as(set, *kind, &item.id).await
            }
            .await;
            if claim_lost(db).await {
                return None;
            }
            Some(backup_ran(drills, metrics, set, began, result).await)
        }
        Job::Drill(name) => {
            let result = match found {
                Some(saga) => drills.resume_one(saga).await,
                None => drills.run_as(name, &item.id).await,
            };
            if claim_lost(db).await {
                return None;
            }
            Some(drill_ran(metrics, name, result))
        }
        other => Some(Ran::failed(format!("{other} is not queued work"))),
    }
}

async fn backup_ran(
    drills: &Drills<'_>,
    metrics: &super::Metrics,
    set: &str,
    began: std::time::Instant,
    result: Result<crate::backup::BackupReport, crate::backup::BackupError>,
) -> Ran {
    metrics.backup_duration.get_or_create(&metrics::label("set", set)).set(began.elapsed().as_secs_f64());
    match result {
        Ok(report) if report.verified => {
            metrics.backups.get_or_create(&metrics::labels(("set", set), ("outcome", "verified"))).inc();
            if let Some(bytes) = report.bytes {
                metrics
                    .backup_bytes
                    .get_or_create(&metrics::label("set", set))
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            // Retention applies as backups land; a failure to prune fails no backup.
            let pruned = match drills.backups().prune(false).await {
                Ok(pruned) => pruned.iter().map(|p| p.deleted.len()).sum(),
                Err(err) => {
                    tracing::error!(%err, set, "retention could not be applied");
                    0
                }
            };
            Ran::ok(format!("backup {} verified; {pruned} pruned", report.backup_id))
        }
        Ok(report) => {
            metrics.backups.get_or_create(&metrics::labels(("set", set), ("outcome", "failed"))).inc();
            Ran::failed(format!("backup {}: {}", report.backup_id, ended_line(&report.ended)))
        }
        Err(err) => {
            metrics.backups.get_or_create(&metrics::labels(("set", set), ("outcome", "failed"))).inc();
            Ran::failed(err.to_string())
        }
    }
}

fn drill_ran(
    metrics: &super::Metrics,
    name: &str,
    result: Result<crate::drill::DrillReport, crate::drill::DrillError>,
) -> Ran {
    match result {
        Ok(report) => {
            let outcome = if report.passed { "passed" } else { "failed" };
            metrics.drills.get_or_create(&metrics::labels(("drill", name), ("outcome", outcome))).inc();
            if let Some(rto) = report.data.rto_secs {
                metrics.drill_rto.get_or_create(&metrics::label("drill", name)).set(rto);
            }
            if let Some(rpo) = report.data.rpo_secs {
                metrics.drill_rpo.get_or_create(&metrics::label("drill", name)).set(rpo as f64);
            }
            match report.reason {
                None if report.passed => Ran::ok(format!("drill {} passed", report.id)),
                reason => Ran::failed(format!("drill {} failed: {}", report.id, reason.unwrap_or_default())),
            }
        }
        Err(err) => {
            metrics.drills.get_or_create(&metrics::labels(("drill", name), ("outcome", "failed"))).inc();
            Ran::failed(err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::clock::SystemClock;
    use crate::evidence::{Kind, LedgerKey, NewRecord, Outcome};
    use crate::saga::{Expected, SagaRow, SagaStore as _, Status};
    use crate::state::StateStore;

    async fn db() -> (Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Db::open(&StateStore::Sqlite { path: dir.path().join("state.db") }).await.unwrap(), dir)
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn backup(set: &str) -> Job {
        Job::Backup { set: set.into(), kind: None }
    }

    fn saga(id: &str) -> SagaRow {
        SagaRow {
            id: id.into(),
            kind: "backup.dump".into(),
            subject: Subject::Backup(id.into()),
            step: "write".into(),
            status: Status::Running,
            data: serde_json::json!({}),
            failed_step: None,
            error: None,
            started_at: "t0".into(),
            updated_at: "t0".into(),
            waiting_until: None,
        }
    }

    fn fenced(err: impl std::fmt::Debug) -> bool {
        format!("{err:?}").contains("Fenced")
    }

    /// The fencing token: a daemon leading at epoch 1 writes sagas and evidence; once another
    /// took epoch 2, its next saga insert, saga update and evidence append are each refused and
    /// leave nothing behind, while the new leader's go through.
    #[tokio::test]
    async fn writes_fenced_with_an_older_epoch_are_refused_and_leave_nothing() {
        let (db, _dir) = db().await;
        let ledger = crate::evidence::Ledger::open(db.clone(), LedgerKey::generate("test"), Arc::new(SystemClock))
            .await
            .unwrap();
        let now = Utc::now();
        let old = store::next_epoch(&db, "old", now).await.unwrap();
        db.fence(old);
        assert!(db.insert(&saga("a")).await.unwrap().is_none(), "the leader writes");
        let record = || NewRecord {
            kind: Kind::DaemonLeading.into(),
            subject: "daemon".into(),
            outcome: Outcome::Info,
            details: serde_json::json!({}),
        };
        ledger.append(record()).await.unwrap();
        let size = crate::evidence::size(&db).await.unwrap();

        let new = store::next_epoch(&db, "new", now).await.unwrap();
        assert_eq!(new, old + 1);
        assert!(fenced(db.insert(&saga("b")).await.unwrap_err()));
        let mut moved = saga("a");
        moved.step = "verify".into();
        moved.updated_at = "t1".into();
        let expected = Expected { status: Status::Running, updated_at: "t0".into() };
        let refused = db.update(&moved, &expected).await.unwrap_err();
        assert!(fenced(&refused), "{refused:?}");
        assert!(refused.to_string().contains("epoch 1") && refused.to_string().contains("epoch 2"), "{refused}");
        let refused = ledger.append(record()).await.unwrap_err();
        assert!(fenced(&refused), "{refused:?}");
        assert_eq!(crate::evidence::size(&db).await.unwrap(), size, "no record landed");
        let rows = crate::saga::in_flight(&db).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].step, "write", "the update did not land");

        db.fence(new);
        db.update(&moved, &expected).await.unwrap();
        ledger.append(record()).await.unwrap();
        db.unfence();
        assert!(db.insert(&saga("c")).await.unwrap().is_none(), "an unfenced handle (the CLI) is not refused");
    }

    /// The claim as fencing token: a run claimed by session `one` writes its saga, a record, a
    /// catalog row and an alert through its claimed handle; once the row went back to the queue
    /// (its session ended) and `two` claimed it, each of `one`'s writes is refused and leaves
    /// nothing, and `two`'s go through.
    #[tokio::test]
    async fn writes_of_a_run_whose_claim_was_lost_are_refused_and_leave_nothing() {
        let (db, _dir) = db().await;
        let ledger = crate::evidence::Ledger::open(db.clone(), LedgerKey::generate("test"), Arc::new(SystemClock))
            .await
            .unwrap();
        let now = at("2026-11-30T03:00:00Z");
        let epoch = store::next_epoch(&db, "me", now).await.unwrap();
        enqueue(&db, epoch, &backup("orders"), now, None, at("2026-12-01T03:00:00Z"), now).await.unwrap().unwrap();
        let mut one = Session::open(&db, "one", now).await.unwrap();
        let item = one.claim(&db, now).await.unwrap().unwrap();
        let first = db.claimed(Claim { run: item.id.clone(), session: one.token.clone() });
        let first_ledger = ledger.claimed(first.clone());
        let record = || NewRecord {
            kind: Kind::BackupWritten.into(),
            subject: "orders".into(),
            outcome: Outcome::Info,
            details: serde_json::json!({}),
        };
        assert!(first.insert(&saga(&item.id)).await.unwrap().is_none(), "the claimer writes");
        first_ledger.append(record()).await.unwrap();
        first.check_fence().await.unwrap();

        // `one` falls silent; the leader puts its row back and `two` claims it.
        let mut two = Session::open(&db, "two", now).await.unwrap();
        assert_eq!(recover(&db, epoch, &two).await.unwrap().unwrap(), 1);
        let again = two.claim(&db, now).await.unwrap().unwrap();
        assert_eq!(again.id, item.id);
        let size = crate::evidence::size(&db).await.unwrap();
        let refused = |err: &dyn std::fmt::Display| err.to_string().contains("no longer this replica's");

        let mut moved = saga(&item.id);
        moved.step = "verify".into();
        moved.updated_at = "t1".into();
        let expected = Expected { status: Status::Running, updated_at: "t0".into() };
        let err = first.update(&moved, &expected).await.unwrap_err();
        assert!(refused(&err), "{err}");
        let err = first_ledger.append(record()).await.unwrap_err();
        assert!(refused(&err), "{err}");
        let err = first_ledger.checkpoint().await.unwrap_err();
        assert!(refused(&err), "{err}");
        let started = crate::backup::catalog::Started {
            id: &item.id,
            set: "orders",
            target: "db",
            method: "dump",
            location: "somewhere",
        };
        let err = crate::backup::catalog::started(&first, &started, "t1").await.unwrap_err();
        assert!(refused(&err), "{err}");
        let (alerts, mut outbox) = crate::alerts::Alerts::new(db.clone(), Arc::new(SystemClock));
        let err = alerts.through(first.clone()).raise(AlertKind::BackupFailed, "backup:orders", "x").await.unwrap_err();
        assert!(refused(&err), "{err}");
        assert!(outbox.try_next().is_none(), "no alert sent for a run this replica lost");
        assert!(matches!(first.check_fence().await, Err(crate::state::StateError::Fenced(_))));
        assert!(claim_lost(&first).await);

        assert_eq!(crate::evidence::size(&db).await.unwrap(), size, "no record landed");
        assert!(crate::backup::catalog::get(&db, &item.id).await.unwrap().is_none(), "no catalog row");
        assert!(crate::alerts::firing(&db).await.unwrap().is_empty(), "no alert row");
        assert_eq!(crate::saga::in_flight(&db).await.unwrap()[0].step, "write", "the update did not land");

        let second = db.claimed(Claim { run: again.id.clone(), session: two.token.clone() });
        second.update(&moved, &expected).await.unwrap();
        ledger.claimed(second.clone()).append(record()).await.unwrap();
        crate::backup::catalog::started(&second, &started, "t1").await.unwrap();
        assert!(!claim_lost(&second).await);
    }

    /// A slot is queued once however often the leader tries, with the job's next run in the
    /// same transaction; a newer slot supersedes the older still queued; a leader with an older
    /// epoch queues nothing.
    #[tokio::test]
    async fn a_slot_is_queued_once_and_a_newer_slot_supersedes_it() {
        let (db, _dir) = db().await;
        let now = at("2026-11-30T03:00:00Z");
        let epoch = store::next_epoch(&db, "me", now).await.unwrap();
        let job = backup("orders");
        let first = enqueue(&db, epoch, &job, now, None, at("2026-12-01T03:00:00Z"), now).await.unwrap().unwrap();
        assert!(first.is_some());
        let again = enqueue(&db, epoch, &job, now, None, at("2026-12-01T03:00:00Z"), now).await.unwrap().unwrap();
        assert_eq!(again, None, "the same slot is not queued twice");
        assert_eq!(store::jobs(&db).await.unwrap()["backup:orders"].next_run, at("2026-12-01T03:00:00Z"));
        let later = at("2026-12-01T03:00:00Z");
        let second = enqueue(&db, epoch, &job, later, None, at("2026-12-02T03:00:00Z"), later).await.unwrap().unwrap();
        let first = first.unwrap();
        assert_eq!(open_work(&db).await.unwrap().ids.into_iter().collect::<Vec<_>>(), [second.clone().unwrap()]);
        let ended = ended(&db, &[first]).await.unwrap();
        assert!(ended[0].3.starts_with("superseded"), "{ended:?}");

        store::next_epoch(&db, "newer", now).await.unwrap();
        let refused = enqueue(&db, epoch, &backup("other"), now, None, later, now).await.unwrap();
        assert!(refused.is_err(), "an old leader queues nothing");
    }

    /// Claims take the oldest due row; never two on one subject; a drill waits while a backup
    /// of its set is due or running; a failed run queues a retry of its slot a minute on; the
    /// rows of an ended session go back to the queue; an older leader's rows are not claimed
    /// until the new leader takes them over.
    #[tokio::test]
    async fn claims_respect_subjects_gates_retries_sessions_and_epochs() {
        let (db, _dir) = db().await;
        let now = at("2026-11-30T03:00:00Z");
        let epoch = store::next_epoch(&db, "me", now).await.unwrap();
        let next = at("2026-12-01T03:00:00Z");
        let full = Job::Backup { set: "orders".into(), kind: Some(crate::pgbackrest::BackupType::Full) };
        let drill = Job::Drill("orders-restore".into());
        enqueue(&db, epoch, &backup("orders"), now, None, next, now).await.unwrap().unwrap();
        enqueue(&db, epoch, &full, now, None, next, now).await.unwrap().unwrap();
        enqueue(&db, epoch, &drill, now, Some("backup:orders"), next, now).await.unwrap().unwrap();

        let mut one = Session::open(&db, "one", now).await.unwrap();
        let mut two = Session::open(&db, "two", now).await.unwrap();
        let claimed = one.claim(&db, now).await.unwrap().unwrap();
        assert_eq!(claimed.subject, "backup:orders");
        assert!(two.claim(&db, now).await.unwrap().is_none(), "the other backup of the set and the drill wait");
        let ran = Ran { ok: false, outcome: "the store was down".into(), waiting: None, next_wait: None };
        finish(&db, &claimed, &one, End::Ran(ran), now).await.unwrap();
        let second = two.claim(&db, now).await.unwrap().unwrap();
        assert_eq!(second.subject, "backup:orders", "the set's other backup runs once the first ended");
        assert_ne!(second.job, claimed.job);
        assert!([backup("orders"), full].contains(&second.job));
        finish(&db, &second, &two, End::Ran(Ran::ok("verified")), now).await.unwrap();
        let drill_run = one.claim(&db, now).await.unwrap().unwrap();
        assert_eq!(drill_run.job, drill, "the drill runs once no backup of its set is due or running");
        let minute = now + chrono::Duration::minutes(1);
        let retry = two.claim(&db, minute).await.unwrap().unwrap();
        assert_eq!(
            (retry.job.clone(), retry.attempt, retry.slot.clone()),
            (claimed.job.clone(), 1, claimed.slot.clone())
        );

        // `one` ends (on SQLite, every session but the one daemon's has): its drill goes back to
        // the queue, and is claimed again with its own id once the set's retry ended.
        drop(one);
        assert_eq!(recover(&db, epoch, &two).await.unwrap().unwrap(), 1, "`one`'s drill");
        assert!(two.claim(&db, minute).await.unwrap().is_none(), "the drill waits for the running retry");
        finish(&db, &retry, &two, End::Ran(Ran::ok("verified")), minute).await.unwrap();
        let again = two.claim(&db, minute).await.unwrap().unwrap();
        assert_eq!(again.id, drill_run.id, "the same run, so its saga is found");
        finish(&db, &again, &two, End::Stopped, minute).await.unwrap();
        assert_eq!(two.claim(&db, minute).await.unwrap().unwrap().id, drill_run.id, "a stopped run is put back");
        let three = Session::open(&db, "three", minute).await.unwrap();

        // A newer leader: nothing of the old epoch is claimed until it takes the rows over.
        enqueue(&db, epoch, &backup("later"), minute, None, next, minute).await.unwrap().unwrap();
        let newer = store::next_epoch(&db, "newer", minute).await.unwrap();
        let mut three = three;
        assert!(three.claim(&db, minute).await.unwrap().is_none());
        recover(&db, newer, &three).await.unwrap().unwrap();
        assert_eq!(three.claim(&db, minute).await.unwrap().unwrap().epoch, newer);
    }
}
