-- Shared state for several jobwire replicas on one database (docs/replicas.md, "What the replicas share").
--
-- * jobwire_settings: values every replica must agree on, made once by the first replica that
--   needs one (INSERT ... ON CONFLICT DO NOTHING) and read by all: the callback-token key.
-- * jobs changes are announced on channel `jobwire_jobs` (payload: the job's name) by a trigger,
--   so the NOTIFY is part of the very transaction that changes the row, whatever statement does
--   it: a replica LISTENing reloads that job; after a reconnect it re-reads them all.

CREATE TABLE jobwire_settings (
    name        text COLLATE "C" PRIMARY KEY,
    value       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION jobwire_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('jobwire_jobs', OLD.name);
    ELSE
        PERFORM pg_notify('jobwire_jobs', NEW.name);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobwire_jobs_notify AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobwire_jobs_notify();

-- The runs of one (job, concurrency key) holding or waiting for a slot: what an admission counts
-- (store/pgslots.py), under that pair's advisory lock.
CREATE INDEX runs_slots ON runs (job, concurrency_key, created_at, id)
    WHERE state IN ('queued', 'pending', 'running');
