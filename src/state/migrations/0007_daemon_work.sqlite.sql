-- Heavy jobs (backups, drills) the leading daemon queued, one row per job, slot and attempt:
-- any replica claims one (FOR UPDATE SKIP LOCKED on PostgreSQL) and runs it as the saga whose
-- id is the row's, so whoever finds the row after a crash finds the saga. A row is queued in
-- the same transaction that moves the job's next run on, so a slot is queued exactly once.
CREATE TABLE daemon_work (
    id          TEXT    PRIMARY KEY,
    job         TEXT    NOT NULL,
    slot        TEXT    NOT NULL,
    attempt     BIGINT  NOT NULL,
    -- The saga subject it acts on (`backup:orders`), and the one it waits for (a drill waits
    -- for a backup of its set that is due or running).
    subject     TEXT    NOT NULL,
    after       TEXT,
    -- The epoch of the leader it is queued under: only the newest leader's work is claimed.
    epoch       BIGINT  NOT NULL,
    -- queued, running, succeeded, failed, superseded.
    state       TEXT    NOT NULL,
    not_before  TEXT    NOT NULL,
    -- The claimer's session: while it lives, nobody else takes the row.
    session     TEXT,
    worker      TEXT,
    queued_at   TEXT    NOT NULL,
    claimed_at  TEXT,
    finished_at TEXT,
    outcome     TEXT,
    UNIQUE (job, slot, attempt)
);

CREATE INDEX daemon_work_open ON daemon_work (state, not_before) WHERE state IN ('queued', 'running');
