-- A saga waiting at a step until a time (an API key's retirement, a JWT key's promotion)
-- says until when, so that the daemon finds the waits that have come due without resuming
-- sagas another process is running. Cleared when the saga next moves.
ALTER TABLE sagas ADD COLUMN waiting_until TEXT;

-- The daemon's timetable: when each job (`backup:orders`, `drill:orders-restore`, …) runs
-- next, persisted so that work that fell due while no daemon ran is caught up once.
CREATE TABLE daemon_jobs (
    job          TEXT PRIMARY KEY,
    next_run     TEXT NOT NULL,
    last_run     TEXT,
    last_outcome TEXT,
    updated_at   TEXT NOT NULL
);

-- The leader of the daemons sharing this store, and its epoch: the fencing token a new leader
-- increments when it takes over.
CREATE TABLE daemon_leader (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    epoch  INTEGER NOT NULL,
    holder TEXT    NOT NULL,
    since  TEXT    NOT NULL
);
