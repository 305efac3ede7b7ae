-- jobwire SQLite schema, version 1.
-- Times are INTEGER microseconds since the Unix epoch, UTC. JSON columns are TEXT.
-- Applied inside one transaction by jobwire.store.sqlite (the runner records the version).

CREATE TABLE jobs (
    name        TEXT PRIMARY KEY,
    definition  TEXT NOT NULL CHECK (json_valid(definition)),  -- the Job, model_dump_json()
    origin      TEXT NOT NULL,                                  -- "api" or "file:<path>"
    paused      INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    updated_at  INTEGER NOT NULL
);

CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    job             TEXT,
    trigger         TEXT NOT NULL,
    source          TEXT NOT NULL,
    received_at     INTEGER NOT NULL,
    scheduled_at    INTEGER,
    payload         TEXT,                 -- JSON; NULL when the event has none
    outcome         TEXT NOT NULL,
    run_id          TEXT,                 -- the run it made, or for a duplicate the run that existed
    reason          TEXT,
    input_location  TEXT
);

-- list_events: newest first, per job or overall
CREATE INDEX events_job_received ON events (job, received_at, id);
CREATE INDEX events_received ON events (received_at, id);
-- last_fire: the latest scheduled_at of a time trigger
CREATE INDEX events_fire ON events (job, trigger, scheduled_at) WHERE scheduled_at IS NOT NULL;

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    key              TEXT NOT NULL,
    job              TEXT NOT NULL,
    trigger          TEXT NOT NULL,
    -- the event that made the run; deferred so a batch may write the run before its event
    event_id         TEXT NOT NULL REFERENCES events (id) DEFERRABLE INITIALLY DEFERRED,
    state            TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    params           TEXT NOT NULL,       -- JSON object
    concurrency_key  TEXT,
    created_at       INTEGER NOT NULL,
    scheduled_at     INTEGER,
    not_before       INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    exit_code        INTEGER,
    http_status      INTEGER,
    error            TEXT,                -- JSON RunError or NULL
    target_ref       TEXT,
    target_status    TEXT NOT NULL,       -- JSON object
    history          TEXT NOT NULL,       -- JSON list of transitions
    input_location   TEXT,
    environment      TEXT,
    -- the dedupe constraint: one run per run key, ever
    CONSTRAINT runs_key_unique UNIQUE (key)
);

-- list_runs (per job / overall, newest first) and prune (per job, newest kept)
CREATE INDEX runs_job_created ON runs (job, created_at, id);
CREATE INDEX runs_created ON runs (created_at, id);
-- active_runs (reconcile) and filters on active states; terminal states page through runs_created
CREATE INDEX runs_active ON runs (state, created_at, id) WHERE state IN ('queued', 'pending', 'running');
-- list_runs by event, and the foreign key check when an event is deleted
CREATE INDEX runs_event ON runs (event_id);
