-- jobwire PostgreSQL schema, version 2: several replicas on one database (docs/replicas.md).
--
-- A "pre" migration in the sense of 0001's header: it only adds (two tables, a nullable column, an
-- index). A jobwire of version 1 never reads them.
--
-- replicas: one row per running `jobwire serve`; its heartbeat keeps expires_at ahead. Past it the
--   replica is dead: it may not write its heartbeat again (it must restart as a new incarnation)
--   and the active runs it owns may be claimed by any other replica.
-- leases: named leases ('leader'); token grows by one on every acquisition and never goes back: the
--   fencing token every leader write (time-trigger fires) is checked against in its transaction.
-- runs.owner: the replica that runs it (NULL: recorded before version 2, or claimable by anyone).

CREATE TABLE replicas (
    id            text COLLATE "C" PRIMARY KEY,
    role          text NOT NULL,
    host          text NOT NULL DEFAULT '',
    pid           integer NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);

CREATE TABLE leases (
    name         text COLLATE "C" PRIMARY KEY,
    holder       text COLLATE "C",            -- NULL once released
    token        bigint NOT NULL,
    acquired_at  timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);

ALTER TABLE runs ADD COLUMN owner text COLLATE "C";

-- claim_runs: the active runs of one owner, oldest first
CREATE INDEX runs_owner_active ON runs (owner, created_at, id)
    WHERE state IN ('queued', 'pending', 'running');
