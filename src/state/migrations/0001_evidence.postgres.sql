-- The evidence ledger: records (append-only, hash-chained), the append head, and checkpoints.
CREATE TABLE evidence_records (
    seq           BIGINT PRIMARY KEY,
    time          TEXT   NOT NULL,
    kind          TEXT   NOT NULL,
    subject       TEXT   NOT NULL,
    actor_host    TEXT   NOT NULL,
    actor_pid     BIGINT NOT NULL,
    actor_version TEXT   NOT NULL,
    outcome       TEXT   NOT NULL,
    details       TEXT   NOT NULL,
    prev_hash     BYTEA  NOT NULL,
    hash          BYTEA  NOT NULL
);
CREATE INDEX evidence_records_by_kind ON evidence_records (kind, seq);
CREATE INDEX evidence_records_by_subject ON evidence_records (subject, seq);

-- One row: the newest record's hash and the Merkle frontier after it, updated with every append
-- in the same transaction; appenders in any process serialise on its row lock.
CREATE TABLE evidence_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    size      BIGINT NOT NULL,
    last_hash BYTEA  NOT NULL,
    frontier  BYTEA  NOT NULL
);
INSERT INTO evidence_head (id, size, last_hash, frontier)
VALUES (1, 0, decode(repeat('00', 32), 'hex'), decode(repeat('00', 8), 'hex'));

CREATE TABLE evidence_checkpoints (
    id        BIGSERIAL PRIMARY KEY,
    size      BIGINT NOT NULL,
    root_hash BYTEA  NOT NULL,
    key_name  TEXT   NOT NULL,
    key_id    TEXT   NOT NULL,
    signed_at TEXT   NOT NULL,
    note      TEXT   NOT NULL
);
CREATE INDEX evidence_checkpoints_by_size ON evidence_checkpoints (size, id);
