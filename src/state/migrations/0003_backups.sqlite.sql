-- The backup catalog: every backup vigil took, where it is, and whether it was verified. The
-- manifest here is the one recorded in the evidence ledger; the copy beside each backup in its
-- store is checked against it.
CREATE TABLE backups (
    id              TEXT PRIMARY KEY,
    set_name        TEXT NOT NULL,
    target          TEXT NOT NULL,
    method          TEXT NOT NULL,
    status          TEXT NOT NULL,
    location        TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    verified_at     TEXT,
    bytes           BIGINT,
    manifest        TEXT,
    manifest_sha256 TEXT,
    error           TEXT,
    updated_at      TEXT NOT NULL
);
CREATE INDEX backups_by_set ON backups (set_name, started_at);
