-- The evidence ledger: records (append-only, hash-chained), the append head, and checkpoints.
CREATE TABLE evidence_records (
    seq           INTEGER PRIMARY KEY,
    time          TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    subject       TEXT    NOT NULL,
    actor_host    TEXT    NOT NULL,
    actor_pid     INTEGER NOT NULL,
    actor_version TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    details       TEXT    NOT NULL,
    prev_hash     BLOB    NOT NULL,
    hash          BLOB    NOT NULL
);
CREATE INDEX evidence_records_by_kind ON evidence_records (kind, seq);
CREATE INDEX evidence_records_by_subject ON evidence_records (subject, seq);

-- One row: the newest record's hash and the Merkle frontier after it, updated with every append
-- in the same transaction, so that a checkpoint costs O(log n) and appenders serialise here.
CREATE TABLE evidence_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    size      INTEGER NOT NULL,
    last_hash BLOB    NOT NULL,
    frontier  BLOB    NOT NULL
);
INSERT INTO evidence_head (id, size, last_hash, frontier) VALUES (1, 0, zeroblob(32), zeroblob(8));

CREATE TABLE evidence_checkpoints (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    size      INTEGER NOT NULL,
    root_hash BLOB    NOT NULL,
    key_name  TEXT    NOT NULL,
    key_id    TEXT    NOT NULL,
    signed_at TEXT    NOT NULL,
    note      TEXT    NOT NULL
);
CREATE INDEX evidence_checkpoints_by_size ON evidence_checkpoints (size, id);
