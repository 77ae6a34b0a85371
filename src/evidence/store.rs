//! The ledger's SQL: appends under the head row's lock, reads, checkpoints.

use futures_util::stream::StreamExt as _;
use sqlx::Row;

use super::EvidenceError;
use std::ops::ControlFlow;

use super::merkle::{Frontier, Hash};
use super::note::{self, Checkpoint, NoteVerifier};
use super::record::{Actor, Record, RecordRef};
use crate::state::{Db, Pool, StateError, check_fence, fenced, on_pool};

/// The columns of a record, in the order `decode_record` reads them.
macro_rules! record_columns {
    () => {
        "seq, time, kind, subject, actor_host, actor_pid, actor_version, outcome, details, prev_hash, hash"
    };
}

/// The ledger's newest state: how many records, the last one's hash, the Merkle frontier.
pub(super) struct Head {
    pub last_hash: Hash,
    pub frontier: Frontier,
}

impl Head {
    fn decode(size: i64, last_hash: Vec<u8>, frontier: Vec<u8>) -> Result<Self, EvidenceError> {
        let last_hash = last_hash.try_into().map_err(|_| EvidenceError::CorruptHead("last_hash is not 32 bytes"))?;
        let frontier =
            Frontier::from_bytes(&frontier).ok_or(EvidenceError::CorruptHead("frontier does not fit its size"))?;
        if i64::try_from(frontier.size()).ok() != Some(size) {
            return Err(EvidenceError::CorruptHead("frontier size differs from the head's size"));
        }
        Ok(Self { last_hash, frontier })
    }
}

/// A checkpoint as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredCheckpoint {
    /// Its row id, in signing order.
    pub id: i64,
    /// Records covered.
    pub size: u64,
    /// The key name and id that signed it, `name+hex(id)`.
    pub key: String,
    /// When it was signed.
    pub signed_at: String,
    /// The signed note.
    pub note: String,
}

fn decode_record<'r, R>(row: &'r R) -> Result<Record, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let hash = |bytes: Vec<u8>, column: &str| {
        bytes.try_into().map_err(|_| sqlx::Error::Decode(format!("{column} is not 32 bytes").into()))
    };
    let int = |value: i64, column: &str| {
        u64::try_from(value).map_err(|_| sqlx::Error::Decode(format!("{column} is negative").into()))
    };
    Ok(Record {
        seq: int(row.try_get(0)?, "seq")?,
        time: row.try_get(1)?,
        kind: row.try_get(2)?,
        subject: row.try_get(3)?,
        actor: Actor {
            host: row.try_get(4)?,
            pid: u32::try_from(int(row.try_get(5)?, "actor_pid")?)
                .map_err(|_| sqlx::Error::Decode("actor_pid is too large".into()))?,
            version: row.try_get(6)?,
        },
        outcome: row.try_get(7)?,
        details: row.try_get(8)?,
        prev_hash: hash(row.try_get(9)?, "prev_hash")?,
        hash: hash(row.try_get(10)?, "hash")?,
    })
}

fn decode_checkpoint<'r, R>(row: &'r R) -> Result<StoredCheckpoint, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let size: i64 = row.try_get(1)?;
    let key_name: String = row.try_get(2)?;
    let key_id: String = row.try_get(3)?;
    Ok(StoredCheckpoint {
        id: row.try_get(0)?,
        size: u64::try_from(size).map_err(|_| sqlx::Error::Decode("size is negative".into()))?,
        key: format!("{key_name}+{key_id}"),
        signed_at: row.try_get(4)?,
        note: row.try_get(5)?,
    })
}

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Appends records built by `build` (given each record's sequence number and the previous
/// hash) in one transaction, holding the head row's lock so that concurrent appenders, in this
/// process or another, take turns and the chain never forks. A fenced handle (a daemon leading
/// at an epoch, or a claimed work run) checks in the same transaction that its fence holds.
pub(super) async fn append(
    db: &Db,
    count: usize,
    mut build: impl FnMut(u64, Hash) -> Record,
) -> Result<(Vec<Record>, Frontier), EvidenceError> {
    macro_rules! append_in {
        ($tx:ident, $read_head:expr, $lock:literal) => {{
            let row = sqlx::query($read_head)
                .fetch_one(&mut *$tx)
                .await?;
            let guard = db.guard();
            check_fence!(guard.as_ref(), &mut *$tx, $lock).map_err(StateError::from)?;
            let mut head = Head::decode(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)?;
            let mut written = Vec::with_capacity(count);
            for _ in 0..count {
                let record = build(head.frontier.size() + 1, head.last_hash);
                sqlx::query(
                    "INSERT INTO evidence_records (seq, time, kind, subject, actor_host, actor_pid, actor_version, outcome, details, prev_hash, hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(seq_param(record.seq))
                .bind(&record.time)
                .bind(&record.kind)
                .bind(&record.subject)
                .bind(&record.actor.host)
                .bind(i64::from(record.actor.pid))
                .bind(&record.actor.version)
                .bind(&record.outcome)
                .bind(&record.details)
                .bind(record.prev_hash.to_vec())
                .bind(record.hash.to_vec())
                .execute(&mut *$tx)
                .await?;
                head.frontier.push(record.leaf_hash());
                head.last_hash = record.hash;
                written.push(record);
            }
            sqlx::query("UPDATE evidence_head SET size = $1, last_hash = $2, frontier = $3 WHERE id = 1")
                .bind(seq_param(head.frontier.size()))
                .bind(head.last_hash.to_vec())
                .bind(head.frontier.to_bytes())
                .execute(&mut *$tx)
                .await?;
            $tx.commit().await?;
            (written, head.frontier)
        }};
    }
    Ok(match db.pool() {
        Pool::Sqlite(pool) => {
            // BEGIN IMMEDIATE takes the database's write lock before reading the head.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            append_in!(tx, "SELECT size, last_hash, frontier FROM evidence_head WHERE id = 1", "")
        }
        Pool::Postgres(pool) => {
            // The row lock on the head serialises appenders across processes.
            let mut tx = pool.begin().await?;
            // The fence's row read FOR SHARE: a new leader's epoch, or a claim put back, waits for
            // this append to end.
            append_in!(tx, "SELECT size, last_hash, frontier FROM evidence_head WHERE id = 1 FOR UPDATE", " FOR SHARE")
        }
    })
}

/// The head, read without a lock (one row is read consistently).
pub(super) async fn head(db: &Db) -> Result<Head, EvidenceError> {
    const SQL: &str = "SELECT size, last_hash, frontier FROM evidence_head WHERE id = 1";
    on_pool!(db, pool => {
        let row = sqlx::query(SQL).fetch_one(pool).await?;
        Head::decode(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)
    })
}

/// The head row, and what disagrees with it if anything, after re-verifying every record the
/// next checkpoint would newly cover. A checkpoint signs the head, so a head or a record that a
/// database writer edited (a size of 2^62 over 3 records, a changed record below the newest)
/// must never reach the signing key.
///
/// The records are re-read from `base` on: the frontier stored with the newest checkpoint
/// `trusted` signed (its root checked against the signed one), or the empty tree when there is
/// none. Each record's hash is recomputed and its link to the one before checked, the frontier
/// is rebuilt from them, and the head row must be exactly that. All in one snapshot, so another
/// process appending meanwhile is not mistaken for tampering; the records are streamed, so the
/// first checkpoint after an upgrade (which starts from the genesis record) reads the ledger once
/// without holding it.
pub(super) async fn verified_head(db: &Db, trusted: &NoteVerifier) -> Result<(Head, Option<String>), EvidenceError> {
    const HEAD: &str = "SELECT size, last_hash, frontier FROM evidence_head WHERE id = 1";
    // max(seq) reads the primary key's last entry: a record appended past the head is found too.
    const NEWEST_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM evidence_records";
    const BASE: &str = "SELECT id, size, note, frontier FROM evidence_checkpoints \
                        WHERE frontier IS NOT NULL ORDER BY size DESC, id DESC LIMIT 1";
    const FROM: &str = concat!("SELECT ", record_columns!(), " FROM evidence_records WHERE seq >= $1 ORDER BY seq");
    macro_rules! read_in {
        ($tx:ident) => {{
            let row = sqlx::query(HEAD).fetch_one(&mut *$tx).await?;
            let head = Head::decode(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)?;
            let max: i64 = sqlx::query(NEWEST_SEQ).fetch_one(&mut *$tx).await?.try_get(0)?;
            let base = match sqlx::query(BASE).fetch_optional(&mut *$tx).await? {
                Some(row) => trusted_base(
                    trusted,
                    row.try_get(1)?,
                    &row.try_get::<String, _>(2)?,
                    &row.try_get::<Vec<u8>, _>(3)?,
                ),
                None => None,
            };
            let mut chain = Chain::from(base);
            // The record the base ends with is read too, for the link the next one makes.
            let mut rows = sqlx::query(FROM).bind(seq_param(chain.frontier.size())).fetch(&mut *$tx);
            while let Some(row) = rows.next().await {
                let record = decode_record(&row?)?;
                if chain.problem.is_some() || record.seq > head.frontier.size() {
                    break;
                }
                chain.extend(&record);
            }
            drop(rows);
            $tx.commit().await?;
            (head, max, chain)
        }};
    }
    let (head, max, chain) = match db.pool() {
        Pool::Sqlite(pool) => {
            // A deferred transaction in WAL mode reads one snapshot from its first read on.
            let mut tx = pool.begin().await?;
            read_in!(tx)
        }
        Pool::Postgres(pool) => {
            let mut tx = pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
            read_in!(tx)
        }
    };
    let size = head.frontier.size();
    let problem = if i64::try_from(size).ok() != Some(max) {
        Some(format!("the head row says {size} records, but {max} are stored"))
    } else if chain.base > size {
        Some(format!(
            "a signed checkpoint covers {} records, but the head row says {size}: records were removed",
            chain.base
        ))
    } else if let Some(problem) = chain.problem {
        Some(problem)
    } else if !chain.linked || chain.frontier.size() != size {
        Some(format!(
            "the head row says {size} records, but records {}..={size} cannot be read",
            chain.frontier.size().min(size) + 1
        ))
    } else if chain.last_hash != head.last_hash {
        Some(format!("the head row's last hash is not record {size}'s hash"))
    } else if chain.frontier != head.frontier {
        Some(format!("the head row's Merkle frontier is not the one records 1..={size} hash to"))
    } else {
        None
    };
    Ok((head, problem))
}

/// The frontier stored with a checkpoint, if `trusted` signed that checkpoint and the frontier
/// hashes to the root it signed: only then may re-verification start from it.
fn trusted_base(trusted: &NoteVerifier, size: i64, note: &str, frontier: &[u8]) -> Option<Frontier> {
    let (body, _) = note::open(note, std::slice::from_ref(trusted)).ok()?;
    let signed = Checkpoint::parse_body(body).ok()?;
    let frontier = Frontier::from_bytes(frontier)?;
    (i64::try_from(signed.size).ok() == Some(size) && frontier.size() == signed.size && frontier.root() == signed.root)
        .then_some(frontier)
}

/// Records re-verified one after another from a trusted frontier: what `verified_head` rebuilds.
struct Chain {
    frontier: Frontier,
    /// The hash of the record the frontier ends with; zeros before the genesis record.
    last_hash: Hash,
    /// The size of the trusted frontier it started from.
    base: u64,
    /// Whether the base's own last record was read (for its hash), or the base is empty.
    linked: bool,
    problem: Option<String>,
    buffer: Vec<u8>,
}

impl From<Option<Frontier>> for Chain {
    fn from(base: Option<Frontier>) -> Self {
        let frontier = base.unwrap_or_default();
        let base = frontier.size();
        Self { frontier, last_hash: [0; 32], base, linked: base == 0, problem: None, buffer: Vec::with_capacity(1024) }
    }
}

impl Chain {
    fn extend(&mut self, record: &Record) {
        let record = record.as_ref();
        let (hash, leaf) = record.hashes(&mut self.buffer);
        if !self.linked {
            // The base's last record: it is covered by the signed checkpoint already; only its
            // hash is taken, for the link the next record makes.
            self.linked = true;
            self.last_hash = hash;
            if record.seq != self.frontier.size() {
                self.problem = Some(format!(
                    "record {}, the last a signed checkpoint covers, is missing (the next stored record is {})",
                    self.frontier.size(),
                    record.seq
                ));
            }
            return;
        }
        let expected = self.frontier.size() + 1;
        self.problem = if record.seq != expected {
            Some(format!("record {expected} is missing (the next stored record is {})", record.seq))
        } else if &hash != record.hash {
            Some(format!("record {expected}'s contents do not match its stored hash"))
        } else if record.prev_hash != &self.last_hash {
            Some(format!("record {expected} does not link to record {}", expected - 1))
        } else {
            None
        };
        if self.problem.is_none() {
            self.last_hash = hash;
            self.frontier.push(leaf);
        }
    }
}

/// One record by sequence number.
pub(super) async fn record(db: &Db, seq: u64) -> Result<Option<Record>, EvidenceError> {
    const SQL: &str = concat!("SELECT ", record_columns!(), " FROM evidence_records WHERE seq = $1");
    Ok(on_pool!(db, pool => match sqlx::query(SQL).bind(seq_param(seq)).fetch_optional(pool).await? {
        Some(row) => Some(decode_record(&row)?),
        None => None,
    }))
}

/// Which records `list` returns.
#[derive(Debug, Default, Clone)]
pub struct RecordFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this subject.
    pub subject: Option<String>,
    /// Only records appended at or after this RFC 3339 time.
    pub since: Option<String>,
    /// At most this many, newest last.
    pub limit: u64,
}

/// Records matching `filter`, in sequence order (the newest `limit` of them).
pub(super) async fn records(db: &Db, filter: &RecordFilter) -> Result<Vec<Record>, EvidenceError> {
    const SQL: &str = concat!(
        "SELECT ",
        record_columns!(),
        " FROM (SELECT ",
        record_columns!(),
        " FROM evidence_records \
         WHERE ($1 IS NULL OR kind = $1) AND ($2 IS NULL OR subject = $2) AND ($3 IS NULL OR time >= $3) \
         ORDER BY seq DESC LIMIT $4) AS newest ORDER BY seq"
    );
    let rows = on_pool!(db, pool => sqlx::query(SQL)
        .bind(filter.kind.clone())
        .bind(filter.subject.clone())
        .bind(filter.since.clone())
        .bind(seq_param(filter.limit))
        .fetch_all(pool)
        .await?
        .iter()
        .map(decode_record)
        .collect::<Result<Vec<_>, _>>()?);
    Ok(rows)
}

/// Stores a signed checkpoint.
pub(super) async fn insert_checkpoint(
    db: &Db,
    frontier: &Frontier,
    key_name: &str,
    key_id: u32,
    signed_at: &str,
    note: &str,
) -> Result<i64, EvidenceError> {
    const SQL: &str = "INSERT INTO evidence_checkpoints (size, root_hash, key_name, key_id, signed_at, note, frontier) \
                       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";
    let key_id = format!("{key_id:08x}");
    // A fenced handle's checkpoint (a leader's, a claimed run's) is refused with its appends.
    let written: Result<Result<i64, crate::state::Fenced>, EvidenceError> = fenced!(db, db.guard(), tx => sqlx::query(SQL)
        .bind(seq_param(frontier.size()))
        .bind(frontier.root().to_vec())
        .bind(key_name)
        .bind(&key_id)
        .bind(signed_at)
        .bind(note)
        .bind(frontier.to_bytes())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?);
    Ok(written?.map_err(StateError::from)?)
}

/// Every checkpoint, by size then signing order.
pub(super) async fn checkpoints(db: &Db) -> Result<Vec<StoredCheckpoint>, EvidenceError> {
    const SQL: &str = "SELECT id, size, key_name, key_id, signed_at, note FROM evidence_checkpoints ORDER BY size, id";
    Ok(on_pool!(db, pool => sqlx::query(SQL)
        .fetch_all(pool)
        .await?
        .iter()
        .map(decode_checkpoint)
        .collect::<Result<Vec<_>, _>>()?))
}

/// A stored record as a scan meets it: readable, or not even that (a tampered column type).
pub(super) enum Scanned<'a> {
    /// The record's fields.
    Record(RecordRef<'a>),
    /// A row whose columns do not decode.
    Unreadable {
        /// Its sequence number, as far as it can be read.
        seq: u64,
        /// What does not decode.
        why: String,
    },
}

/// Feeds every record, in sequence order, to `step` until it breaks, and returns `state`.
///
/// SQLite is read through rusqlite on a blocking thread, borrowing each row's columns in place:
/// sqlx-sqlite's per-row overhead alone would exceed the verification budget (a million
/// records in two seconds). PostgreSQL is streamed through sqlx.
pub(super) async fn scan<S: Send + 'static>(
    db: &Db,
    mut state: S,
    step: fn(&mut S, Scanned<'_>) -> ControlFlow<()>,
) -> Result<S, EvidenceError> {
    match db.pool() {
        Pool::Sqlite(pool) => {
            let path = pool.connect_options().get_filename().to_owned();
            Ok(tokio::task::spawn_blocking(move || -> Result<S, EvidenceError> {
                let conn = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                let mut statement =
                    conn.prepare(concat!("SELECT ", record_columns!(), " FROM evidence_records ORDER BY seq"))?;
                let mut rows = statement.query([])?;
                while let Some(row) = rows.next()? {
                    let scanned = match sqlite_record(row) {
                        Ok(record) => Scanned::Record(record),
                        Err(why) => Scanned::Unreadable { seq: row.get::<_, i64>(0).unwrap_or(-1) as u64, why },
                    };
                    if step(&mut state, scanned).is_break() {
                        break;
                    }
                }
                Ok(state)
            })
            .await??)
        }
        Pool::Postgres(pool) => {
            let mut rows =
                sqlx::query(concat!("SELECT ", record_columns!(), " FROM evidence_records ORDER BY seq")).fetch(pool);
            while let Some(row) = rows.next().await {
                let row = row?;
                let flow = match decode_record(&row) {
                    Ok(record) => step(&mut state, Scanned::Record(record.as_ref())),
                    Err(err) => {
                        let seq = row.try_get::<i64, _>(0).unwrap_or(-1) as u64;
                        step(&mut state, Scanned::Unreadable { seq, why: err.to_string() })
                    }
                };
                if flow.is_break() {
                    break;
                }
            }
            Ok(state)
        }
    }
}

fn sqlite_record<'r>(row: &'r rusqlite::Row<'_>) -> Result<RecordRef<'r>, String> {
    let text = |i: usize| -> Result<&'r str, String> {
        row.get_ref(i).map_err(|e| e.to_string())?.as_str().map_err(|e| format!("column {i}: {e}"))
    };
    let hash = |i: usize| -> Result<&'r Hash, String> {
        let blob = row.get_ref(i).map_err(|e| e.to_string())?.as_blob().map_err(|e| format!("column {i}: {e}"))?;
        <&Hash>::try_from(blob).map_err(|_| format!("column {i} is {} bytes, not 32", blob.len()))
    };
    let int = |i: usize| -> Result<i64, String> {
        row.get_ref(i).map_err(|e| e.to_string())?.as_i64().map_err(|e| format!("column {i}: {e}"))
    };
    Ok(RecordRef {
        seq: u64::try_from(int(0)?).map_err(|_| "negative seq".to_owned())?,
        time: text(1)?,
        kind: text(2)?,
        subject: text(3)?,
        actor_host: text(4)?,
        actor_pid: u32::try_from(int(5)?).map_err(|_| "actor_pid out of range".to_owned())?,
        actor_version: text(6)?,
        outcome: text(7)?,
        details: text(8)?,
        prev_hash: hash(9)?,
        hash: hash(10)?,
    })
}

/// The checkpoint signed last, if any.
pub(super) async fn newest_checkpoint(db: &Db) -> Result<Option<StoredCheckpoint>, EvidenceError> {
    const SQL: &str =
        "SELECT id, size, key_name, key_id, signed_at, note FROM evidence_checkpoints ORDER BY id DESC LIMIT 1";
    Ok(on_pool!(db, pool => match sqlx::query(SQL).fetch_optional(pool).await? {
        Some(row) => Some(decode_checkpoint(&row)?),
        None => None,
    }))
}
