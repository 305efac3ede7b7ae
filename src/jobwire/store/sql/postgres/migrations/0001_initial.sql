-- jobwire PostgreSQL schema, version 1.
-- Applied in one transaction by jobwire.store.postgres (the runner records the version in
-- jobwire_schema_version, under an advisory lock).
--
-- Times are timestamptz (microseconds, as the SQLite store's integer µs). JSON columns are `json`,
-- not `jsonb`: the exact text jobwire wrote comes back (key order, as in SQLite), and a "\u0000"
-- escape inside a payload is accepted as SQLite accepts it (jsonb refuses it). Identifiers and
-- names sort with COLLATE "C" (byte order) so keyset paging orders ids exactly as Python does,
-- whatever the database's collation.
--
-- MIGRATIONS ARE ADDITIVE (procrastinate's pre/post style): a new migration may add tables,
-- columns (nullable or with a default), indexes and functions that the running older jobwire
-- ignores; it never renames, drops or tightens what an older replica still uses. Removing
-- something takes two releases: stop using it (release N), drop it in a later "post" migration
-- (release N+1), so an old and a new replica can run side by side during a rolling upgrade.

CREATE TABLE jobs (
    name        text COLLATE "C" PRIMARY KEY,
    definition  json NOT NULL,              -- the Job, model_dump_json()
    origin      text NOT NULL,              -- "api" or "file:<path>"
    paused      boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE events (
    id              text COLLATE "C" PRIMARY KEY,
    job             text COLLATE "C",
    trigger         text COLLATE "C" NOT NULL,
    source          text NOT NULL,
    received_at     timestamptz NOT NULL,
    scheduled_at    timestamptz,
    payload         json,                   -- NULL when the event has none
    outcome         text NOT NULL,
    run_id          text COLLATE "C",       -- the run it made, or for a duplicate the run that existed
    reason          text,
    input_location  text
);

-- list_events: newest first, per job or overall
CREATE INDEX events_job_received ON events (job, received_at, id);
CREATE INDEX events_received ON events (received_at, id);
-- last_fire(s): the latest scheduled_at of a time trigger
CREATE INDEX events_fire ON events (job, trigger, scheduled_at) WHERE scheduled_at IS NOT NULL;

CREATE TABLE runs (
    id               text COLLATE "C" PRIMARY KEY,
    key              text COLLATE "C" NOT NULL,
    job              text COLLATE "C" NOT NULL,
    trigger          text COLLATE "C" NOT NULL,
    -- the event that made the run; deferred so a batch may write the run before its event
    event_id         text COLLATE "C" NOT NULL REFERENCES events (id) DEFERRABLE INITIALLY DEFERRED,
    state            text NOT NULL,
    attempt          integer NOT NULL,
    params           json NOT NULL,         -- JSON object
    concurrency_key  text,
    created_at       timestamptz NOT NULL,
    scheduled_at     timestamptz,
    not_before       timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    exit_code        integer,
    http_status      integer,
    error            json,                  -- RunError or NULL
    target_ref       text,
    target_status    json NOT NULL,         -- JSON object
    history          json NOT NULL,         -- JSON list of transitions
    input_location   text,
    environment      text,
    -- the dedupe constraint: one run per run key, ever
    CONSTRAINT runs_key_unique UNIQUE (key)
);

-- list_runs (per job / overall, newest first) and prune (per job, newest kept)
CREATE INDEX runs_job_created ON runs (job, created_at, id);
CREATE INDEX runs_created ON runs (created_at, id);
-- active_runs (reconcile) and filters on active states
CREATE INDEX runs_active ON runs (state, created_at, id) WHERE state IN ('queued', 'pending', 'running');
-- list_runs by event, and the foreign key check when an event is deleted
CREATE INDEX runs_event ON runs (event_id);

-- The outbox: status documents for durable sinks, written in the same transaction as the state
-- change they describe, deleted once the sink confirmed them.
CREATE TABLE outbox (
    seq   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink  text NOT NULL,
    doc   text NOT NULL
);
CREATE INDEX outbox_by_sink ON outbox (sink, seq);
