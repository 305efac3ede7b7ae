-- Named queries of jobwire.store.sqlite. Times are integer microseconds since the epoch (UTC).
-- Column lists of runs/events must match RUN_COLUMNS / EVENT_COLUMNS in jobwire/store/sqlite.py.

-- name: upsert_job
-- Insert or replace a definition; an existing row keeps `paused` unless the new one pauses.
-- save_jobs runs it without its RETURNING (jobwire/store/sqlite.py UPSERT_JOBS).
INSERT INTO jobs (name, definition, origin, paused, updated_at)
VALUES (:name, :definition, :origin, :paused, :updated_at)
ON CONFLICT (name) DO UPDATE SET
    definition = excluded.definition,
    origin = excluded.origin,
    paused = CASE WHEN excluded.paused THEN 1 ELSE jobs.paused END,
    updated_at = excluded.updated_at
RETURNING name, definition, origin, paused, updated_at;

-- name: paused_jobs
SELECT name FROM jobs WHERE paused = 1;

-- name: get_job
SELECT name, definition, origin, paused, updated_at FROM jobs WHERE name = :name;

-- name: list_jobs
SELECT name, definition, origin, paused, updated_at FROM jobs ORDER BY name;

-- name: delete_job
DELETE FROM jobs WHERE name = :name;

-- name: set_paused
UPDATE jobs SET paused = :paused, updated_at = :updated_at WHERE name = :name
RETURNING name, definition, origin, paused, updated_at;

-- name: insert_run
-- A repeat run key (or id) inserts nothing: the caller then reads the run that exists.
INSERT INTO runs (
    id, key, job, trigger, event_id, state, attempt, params, concurrency_key, created_at,
    scheduled_at, not_before, started_at, finished_at, exit_code, http_status, error,
    target_ref, target_status, history, input_location, environment
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING;

-- name: update_run
-- What a run's life changes. Parameters: every field in insert order, id first (?2 job, ?3 trigger,
-- ?4 event_id, ?8 concurrency_key, ?9 created_at, ?10 scheduled_at are fixed at intake and not
-- written again: SQLite maintains an index for every column in the SET list, changed or not, and
-- checks the deferred foreign key of event_id — three indexes and a lookup per update saved,
-- ~15–25 µs of a run's two updates each).
-- Conditional (store/base.py ALLOWED_FROM): an ended run keeps its state, no run goes back to queued.
UPDATE runs SET
    state = ?5, attempt = ?6, params = ?7, not_before = ?11, started_at = ?12,
    finished_at = ?13, exit_code = ?14, http_status = ?15, error = ?16, target_ref = ?17,
    target_status = ?18, history = ?19, input_location = ?20, environment = ?21
WHERE id = ?1 AND (state = ?5 OR (state IN ('queued', 'pending', 'running') AND ?5 <> 'queued'));

-- name: select_runs
-- The prefix of every run read; callers append WHERE / ORDER BY.
SELECT
    id, key, job, trigger, event_id, state, attempt, params, concurrency_key, created_at,
    scheduled_at, not_before, started_at, finished_at, exit_code, http_status, error,
    target_ref, target_status, history, input_location, environment
FROM runs;

-- name: run_identity_by_key
SELECT id, event_id FROM runs WHERE key = ?;

-- name: insert_event
INSERT INTO events (
    id, job, trigger, source, received_at, scheduled_at, payload, outcome, run_id, reason,
    input_location
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: select_events
-- The prefix of every event read; callers append WHERE / ORDER BY.
SELECT
    id, job, trigger, source, received_at, scheduled_at, payload, outcome, run_id, reason,
    input_location
FROM events;

-- name: last_fire
SELECT scheduled_at FROM events
WHERE job = :job AND trigger = :trigger AND scheduled_at IS NOT NULL
ORDER BY scheduled_at DESC
LIMIT 1;

-- name: last_fires
-- last_fire of every time trigger at once (catch-up at startup): one ordered scan of the partial
-- covering index events_fire, grouped without a sort.
SELECT job, trigger, max(scheduled_at) FROM events
WHERE scheduled_at IS NOT NULL AND job IS NOT NULL
GROUP BY job, trigger;

-- name: prune_runs
-- Finished runs of the job created before the cut-off, except its `keep` newest runs (any state).
DELETE FROM runs
WHERE job = :job
  AND state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted')
  AND created_at < :older_than
  AND id NOT IN (
      SELECT id FROM runs WHERE job = :job ORDER BY created_at DESC, id DESC LIMIT :keep
  )
RETURNING id;

-- name: prune_events
-- Events of the job older than the cut-off that no longer point at a run that exists. Kept anyway:
-- the event a run was made by, and the newest fire of each time trigger (last_fire survives retention).
DELETE FROM events
WHERE job = :job
  AND received_at < :older_than
  AND (run_id IS NULL OR NOT EXISTS (SELECT 1 FROM runs WHERE runs.id = events.run_id))
  AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.event_id = events.id)
  AND NOT (
      scheduled_at IS NOT NULL
      AND scheduled_at = (
          SELECT max(e2.scheduled_at) FROM events AS e2
          WHERE e2.job = events.job AND e2.trigger = events.trigger AND e2.scheduled_at IS NOT NULL
      )
  );

-- name: prune_jobs_runs
-- prune_runs for many jobs that keep the same number of runs, :keep. :rules is a JSON array of
-- [job, older_than], one per job. Per job one index probe for a finished run past its cut-off; only
-- for a job with one: the run it keeps last (its :keep-th newest: a walk of :keep index entries)
-- and a range scan of the finished runs older than both (none when the job has fewer than :keep runs).
WITH rules (job, older_than) AS (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:rules)
),
due (job, older_than, kept_at, kept_id) AS MATERIALIZED (
    SELECT rules.job, rules.older_than, kept.created_at, kept.id
    FROM rules
    LEFT JOIN runs AS kept ON kept.id = (
        SELECT id FROM runs WHERE runs.job = rules.job
        ORDER BY created_at DESC, id DESC
        LIMIT 1 OFFSET :keep - 1
    )
    WHERE EXISTS (
        SELECT 1 FROM runs
        WHERE runs.job = rules.job
          AND runs.created_at < rules.older_than
          AND runs.state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted')
    )
)
SELECT runs.id
FROM due
JOIN runs
  ON runs.job = due.job
 AND runs.created_at < CASE WHEN :keep = 0 THEN due.older_than ELSE min(due.older_than, due.kept_at + 1) END
WHERE runs.state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted')
  AND (:keep = 0 OR (runs.created_at, runs.id) < (due.kept_at, due.kept_id));

-- name: prune_jobs_events
-- prune_events for many jobs at once; :rules as for prune_jobs_runs (any keep). The same terms, the
-- index-only one first: the event of a kept run is passed over without reading its row.
WITH rules (job, older_than) AS (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:rules)
)
SELECT events.id FROM rules
JOIN events ON events.job = rules.job AND events.received_at < rules.older_than
WHERE NOT EXISTS (SELECT 1 FROM runs WHERE runs.event_id = events.id)
  AND (events.run_id IS NULL OR NOT EXISTS (SELECT 1 FROM runs WHERE runs.id = events.run_id))
  AND NOT (
      events.scheduled_at IS NOT NULL
      AND events.scheduled_at = (
          SELECT max(e2.scheduled_at) FROM events AS e2
          WHERE e2.job = events.job AND e2.trigger = events.trigger AND e2.scheduled_at IS NOT NULL
      )
  );

-- name: delete_run
DELETE FROM runs WHERE id = ?;

-- name: delete_event
DELETE FROM events WHERE id = ?;

-- name: insert_outbox
INSERT INTO outbox (sink, doc) VALUES (:sink, :doc);

-- name: take_outbox
SELECT seq, doc FROM outbox WHERE sink = :sink ORDER BY seq LIMIT :limit;

-- name: delete_outbox
DELETE FROM outbox WHERE sink = :sink AND seq <= :upto;

-- name: count_outbox
SELECT count(*) FROM outbox WHERE sink = :sink;

-- name: last_run_ids
-- The newest run of each job in the JSON list :jobs: one probe of runs_job_created per job.
SELECT (SELECT r.id FROM runs AS r WHERE r.job = j.value ORDER BY r.created_at DESC, r.id DESC LIMIT 1)
FROM json_each(:jobs) AS j;

-- name: activity_runs
-- The overview: runs created in [:since, :since + :n × :bucket) per bucket and state — one counted
-- range of the covering index runs_state_created (0003) per (bucket, state), not a sort of the
-- window's rows: ~2 ms for a day of 33,000 runs where GROUP BY took ~25 ms.
WITH RECURSIVE buckets(b, lo) AS (
    SELECT 0, :since
    UNION ALL SELECT b + 1, lo + :bucket FROM buckets WHERE b + 1 < :n
)
SELECT b, s.value,
       (SELECT count(*) FROM runs WHERE state = s.value AND created_at >= lo AND created_at < lo + :bucket)
FROM buckets, json_each(:states) AS s;

-- name: activity_events
-- Events received since :since by source and outcome, over the covering index events_received_source
-- (the overview asks for the last hour).
SELECT source, outcome, count(*) FROM events
WHERE received_at >= :since
GROUP BY source, outcome
ORDER BY source, outcome;
