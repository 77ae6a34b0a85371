-- Sagas: multi-step jobs (rotations, later backups and drills) whose current step is recorded
-- before it acts, so that a restart resumes or unwinds them.
CREATE TABLE sagas (
    id         TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    step       TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    attempts   BIGINT  NOT NULL,
    error      TEXT,
    started_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
-- At most one saga in flight per subject.
CREATE UNIQUE INDEX sagas_one_in_flight ON sagas (subject) WHERE status IN ('running', 'unwinding');

-- What each rotated secret's status page shows.
CREATE TABLE secret_status (
    subject         TEXT PRIMARY KEY,
    last_rotated    TEXT,
    last_rotation   TEXT,
    last_flip       TEXT,
    needs_attention TEXT,
    updated_at      TEXT NOT NULL
);
