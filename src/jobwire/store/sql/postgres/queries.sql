-- Named queries of jobwire.store.postgres. Times are timestamptz; JSON columns are `json`, sent as
-- text and cast. Batches are arrays unnested server-side: one statement (one round trip) per batch,
-- whatever its size. Column order must match _run_columns / _event_row in jobwire/store/postgres.py.

-- name: upsert_job
-- Insert or replace a definition; an existing row keeps `paused` unless the new one pauses.
INSERT INTO jobs (name, definition, origin, paused, updated_at)
VALUES ($1, $2::json, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET
    definition = excluded.definition,
    origin = excluded.origin,
    paused = excluded.paused OR jobs.paused,
    updated_at = excluded.updated_at
RETURNING name, definition, origin, paused, updated_at;

-- name: upsert_jobs
-- upsert_job for many definitions in one statement (save_jobs: 100,000 job-file jobs at a first
-- start); $1..$4 are parallel arrays (name, definition, origin, paused), the names unique.
INSERT INTO jobs (name, definition, origin, paused, updated_at)
SELECT t.name, t.definition::json, t.origin, t.paused, $5
FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[]) AS t(name, definition, origin, paused)
ON CONFLICT (name) DO UPDATE SET
    definition = excluded.definition,
    origin = excluded.origin,
    paused = excluded.paused OR jobs.paused,
    updated_at = excluded.updated_at
RETURNING name, paused;

-- name: get_job
SELECT name, definition, origin, paused, updated_at FROM jobs WHERE name = $1;

-- name: list_jobs
SELECT name, definition, origin, paused, updated_at FROM jobs ORDER BY name;

-- name: delete_job
DELETE FROM jobs WHERE name = $1;

-- name: delete_jobs
-- delete_job for many names in one statement (a removed job file's jobs, at a start or reload).
DELETE FROM jobs WHERE name = ANY($1::text[]);

-- name: set_paused
UPDATE jobs SET paused = $2, updated_at = $3 WHERE name = $1
RETURNING name, definition, origin, paused, updated_at;

-- name: update_runs
-- Every field but the identity (id, and key which id derives from), for a batch of runs. Conditional
-- (store/base.py ALLOWED_FROM): an ended run keeps its state, no run goes back to queued, and a
-- run owned by another replica ($22, the writer; NULL: not checked) is left alone; the ids written
-- are returned, so the caller knows which were refused.
UPDATE runs SET
    state = u.state, attempt = u.attempt, params = u.params::json, not_before = u.not_before,
    started_at = u.started_at, finished_at = u.finished_at, exit_code = u.exit_code, http_status = u.http_status,
    error = u.error::json, target_ref = u.target_ref, target_status = u.target_status::json,
    history = u.history::json, input_location = u.input_location, environment = u.environment
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[],
    $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[],
    $13::timestamptz[], $14::int[], $15::int[], $16::text[], $17::text[], $18::text[], $19::text[],
    $20::text[], $21::text[]
) AS u (
    id, job, trigger, event_id, state, attempt, params, concurrency_key, created_at,
    scheduled_at, not_before, started_at, finished_at, exit_code, http_status, error,
    target_ref, target_status, history, input_location, environment
)
WHERE runs.id = u.id
  AND (runs.state = u.state OR (runs.state IN ('queued', 'pending', 'running') AND u.state <> 'queued'))
  AND ($22::text IS NULL OR runs.owner IS NULL OR runs.owner = $22)
RETURNING runs.id;

-- name: select_runs
-- The prefix of every run read; callers append WHERE / ORDER BY.
SELECT
    id, key, job, trigger, event_id, state, attempt, params, concurrency_key, created_at,
    scheduled_at, not_before, started_at, finished_at, exit_code, http_status, error,
    target_ref, target_status, history, input_location, environment
FROM runs;

-- name: select_events
-- The prefix of every event read; callers append WHERE / ORDER BY.
SELECT
    id, job, trigger, source, received_at, scheduled_at, payload, outcome, run_id, reason,
    input_location
FROM events;

-- name: last_fire
SELECT scheduled_at FROM events
WHERE job = $1 AND trigger = $2 AND scheduled_at IS NOT NULL
ORDER BY scheduled_at DESC
LIMIT 1;

-- name: last_fires
SELECT job, trigger, max(scheduled_at) FROM events
WHERE scheduled_at IS NOT NULL AND job IS NOT NULL
GROUP BY job, trigger;

-- name: prune_runs
-- Finished runs of the job created before the cut-off, except its `keep` newest runs (any state).
DELETE FROM runs
WHERE job = $1
  AND state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted')
  AND created_at < $3
  AND id NOT IN (
      SELECT id FROM runs WHERE job = $1 ORDER BY created_at DESC, id DESC LIMIT $2
  )
RETURNING id;

-- name: prune_events
-- Events of the job older than the cut-off that no longer point at a run that exists. Kept anyway:
-- the event a run was made by, and the newest fire of each time trigger (last_fire survives retention).
DELETE FROM events
WHERE job = $1
  AND received_at < $2
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
-- prune_runs for many jobs, each with its own keep and cut-off: $1 jobs, $2 keeps, $3 cut-offs.
-- Per job: one probe for a finished run past its cut-off; only for a job with one, the run it
-- keeps last (its keep-th newest, a LATERAL walk of `keep` index entries) and the finished runs
-- older than both.
WITH rules AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS r (job, keep, older_than)
),
due AS MATERIALIZED (
    SELECT rules.job, rules.keep, rules.older_than, kept.created_at AS kept_at, kept.id AS kept_id
    FROM rules
    LEFT JOIN LATERAL (
        SELECT runs.created_at, runs.id FROM runs WHERE runs.job = rules.job
        ORDER BY runs.created_at DESC, runs.id DESC
        OFFSET greatest(rules.keep - 1, 0) LIMIT 1
    ) AS kept ON rules.keep > 0
    WHERE EXISTS (
        SELECT 1 FROM runs
        WHERE runs.job = rules.job
          AND runs.created_at < rules.older_than
          AND runs.state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted')
    )
)
SELECT runs.id
FROM due
JOIN runs ON runs.job = due.job AND runs.created_at < due.older_than
WHERE runs.state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'interrupted')
  AND (due.keep = 0 OR (runs.created_at, runs.id) < (due.kept_at, due.kept_id));

-- name: prune_jobs_events
-- prune_events for many jobs at once: $1 jobs, $2 cut-offs.
WITH rules AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[]) AS r (job, older_than)
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

-- name: delete_runs
DELETE FROM runs WHERE id = ANY($1::text[]);

-- name: delete_events
DELETE FROM events WHERE id = ANY($1::text[]);

-- name: insert_outbox
INSERT INTO outbox (sink, doc)
SELECT u.sink, u.doc FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u (sink, doc, n) ORDER BY u.n;

-- name: take_outbox
SELECT seq, doc FROM outbox WHERE sink = $1 ORDER BY seq LIMIT $2;

-- name: delete_outbox
DELETE FROM outbox WHERE sink = $1 AND seq <= $2;

-- name: count_outbox
SELECT count(*) FROM outbox WHERE sink = $1;

-- name: record_batch
-- A batch's runs ($1-$22, in _run_columns' order) and events ($23-$33, _event_row's) in ONE statement
-- (one round trip). The events go in as the caller made them; an event whose run was not inserted
-- (a repeated run key) is then marked by mark_duplicates in the same transaction. Returns the runs
-- inserted. A repeated run key (or id), also one repeated inside the batch, inserts nothing.
-- $34: the owner replica of the runs (NULL: none, claimable).
WITH inserted AS (
    INSERT INTO runs (
        id, key, job, trigger, event_id, state, attempt, params, concurrency_key, created_at,
        scheduled_at, not_before, started_at, finished_at, exit_code, http_status, error,
        target_ref, target_status, history, input_location, environment, owner
    )
    SELECT
        u.id, u.key, u.job, u.trigger, u.event_id, u.state, u.attempt, u.params::json,
        u.concurrency_key, u.created_at, u.scheduled_at, u.not_before, u.started_at, u.finished_at,
        u.exit_code, u.http_status, u.error::json, u.target_ref, u.target_status::json,
        u.history::json, u.input_location, u.environment, $34::text
    FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::text[],
        $9::text[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[], $13::timestamptz[],
        $14::timestamptz[], $15::int[], $16::int[], $17::text[], $18::text[], $19::text[], $20::text[],
        $21::text[], $22::text[]
    ) WITH ORDINALITY AS u (
        id, key, job, trigger, event_id, state, attempt, params, concurrency_key, created_at,
        scheduled_at, not_before, started_at, finished_at, exit_code, http_status, error,
        target_ref, target_status, history, input_location, environment, n
    )
    ORDER BY u.n
    ON CONFLICT DO NOTHING
    RETURNING id, key, event_id
),
events_in AS (
    INSERT INTO events (
        id, job, trigger, source, received_at, scheduled_at, payload, outcome, run_id, reason,
        input_location
    )
    SELECT v.id, v.job, v.trigger, v.source, v.received_at, v.scheduled_at, v.payload::json,
           v.outcome, v.run_id, v.reason, v.input_location
    FROM unnest(
        $23::text[], $24::text[], $25::text[], $26::text[], $27::timestamptz[], $28::timestamptz[],
        $29::text[], $30::text[], $31::text[], $32::text[], $33::text[]
    ) WITH ORDINALITY AS v (
        id, job, trigger, source, received_at, scheduled_at, payload, outcome, run_id, reason,
        input_location, n
    )
    ORDER BY v.n
)
SELECT id, key, event_id FROM inserted;

-- name: mark_duplicates
-- Events of a batch whose run key had a run already: outcome duplicate, pointing at that run.
UPDATE events SET outcome = 'duplicate', run_id = u.run_id, reason = u.reason
FROM unnest($1::text[], $2::text[], $3::text[]) AS u (id, run_id, reason)
WHERE events.id = u.id;

-- name: update_runs_with_outbox
-- update_runs ($1-$21) and insert_outbox ($22, $23) in ONE statement: a commit of state changes
-- and their status documents is one round trip, and atomic without BEGIN/COMMIT. Returns the ids
-- of the runs written (conditional, as update_runs; $24 the writing replica).
WITH updated AS (
    UPDATE runs SET
        state = u.state, attempt = u.attempt, params = u.params::json, not_before = u.not_before,
        started_at = u.started_at, finished_at = u.finished_at, exit_code = u.exit_code, http_status = u.http_status,
        error = u.error::json, target_ref = u.target_ref, target_status = u.target_status::json,
        history = u.history::json, input_location = u.input_location, environment = u.environment
    FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[],
        $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[],
        $13::timestamptz[], $14::int[], $15::int[], $16::text[], $17::text[], $18::text[], $19::text[],
        $20::text[], $21::text[]
    ) AS u (
        id, job, trigger, event_id, state, attempt, params, concurrency_key, created_at,
        scheduled_at, not_before, started_at, finished_at, exit_code, http_status, error,
        target_ref, target_status, history, input_location, environment
    )
    WHERE runs.id = u.id
      AND (runs.state = u.state OR (runs.state IN ('queued', 'pending', 'running') AND u.state <> 'queued'))
      AND ($24::text IS NULL OR runs.owner IS NULL OR runs.owner = $24)
    RETURNING runs.id
),
outbox_in AS (
    INSERT INTO outbox (sink, doc)
    SELECT o.sink, o.doc FROM unnest($22::text[], $23::text[]) WITH ORDINALITY AS o (sink, doc, n) ORDER BY o.n
)
SELECT id FROM updated;

-- name: shared_secret
-- A secret shared by every replica: inserted once (from $2, or random bytes made by the server when
-- $2 is NULL, so the key never travels as a parameter), then read by all.
WITH made AS (
    INSERT INTO jobwire_settings (name, value)
    VALUES ($1, coalesce($2, decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')))
    ON CONFLICT (name) DO NOTHING
    RETURNING value
)
SELECT value FROM made
UNION ALL
SELECT value FROM jobwire_settings WHERE name = $1
LIMIT 1;

-- name: slot_lock
-- The lock of one (job, concurrency key)'s slots, held to the end of the transaction: every
-- replica's admission decision for that pair is made under it, one at a time.
SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || coalesce($2, chr(30)), 7));

-- name: slot_holders
-- The oldest $3 runs of (job, concurrency key) holding a slot (pending, running): bounded by what
-- the decision needs, however many runs a job has.
SELECT id FROM runs
WHERE job = $1 AND concurrency_key IS NOT DISTINCT FROM $2 AND state IN ('pending', 'running')
ORDER BY created_at, id
LIMIT $3;

-- name: slot_first_queued
-- The run of (job, concurrency key) queued first, if any: the next to take a slot.
SELECT id FROM runs
WHERE job = $1 AND concurrency_key IS NOT DISTINCT FROM $2 AND state = 'queued'
ORDER BY created_at, id
LIMIT 1;

-- name: promote_queued
UPDATE runs SET state = 'pending' WHERE id = $1 AND state = 'queued' RETURNING id;

-- name: notify_many
SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p;

-- name: last_run_ids
-- The newest run of each job in $1: one probe of runs_job_created per job.
SELECT (SELECT r.id FROM runs AS r WHERE r.job = j ORDER BY r.created_at DESC, r.id DESC LIMIT 1)
FROM unnest($1::text[]) AS j;

-- name: activity_runs
-- The overview: runs created in [$1, $1 + $3 × $2) per bucket and state — one counted range of the
-- covering index runs_state_created (0002) per (bucket, state).
SELECT b, s,
       (SELECT count(*) FROM runs
        WHERE state = s AND created_at >= $1::timestamptz + b * $2::interval
          AND created_at < $1::timestamptz + (b + 1) * $2::interval)
FROM generate_series(0, $3 - 1) AS b, unnest($4::text[]) AS s;

-- name: activity_events
SELECT source, outcome, count(*) FROM events
WHERE received_at >= $1
GROUP BY source, outcome
ORDER BY source, outcome;

-- ---------------------------------------------------------------- replicas, leases, claims
-- Expiries are by the database's clock (now()), so replicas' clocks need not agree.

-- name: register_replica
-- $1 id, $2 role, $3 ttl (s), $4 host, $5 pid. A live replica of that id is left alone (no row).
INSERT INTO replicas AS r (id, role, host, pid, started_at, heartbeat_at, expires_at)
VALUES ($1, $2, $4, $5, now(), now(), now() + make_interval(secs => $3::float8))
ON CONFLICT (id) DO UPDATE SET
    role = excluded.role, host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,
    heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at
WHERE r.expires_at <= now()
RETURNING started_at;

-- name: heartbeat
-- $1 id, $2 ttl, $3 started_at of this incarnation. An expired replica never comes back to life.
UPDATE replicas SET heartbeat_at = now(), expires_at = now() + make_interval(secs => $2::float8)
WHERE id = $1 AND started_at = $3 AND expires_at > now()
RETURNING id;

-- name: unregister_replica
DELETE FROM replicas WHERE id = $1 AND started_at = $2;

-- name: list_replicas
SELECT id, role, started_at, heartbeat_at, expires_at, expires_at > now(), host, pid
FROM replicas ORDER BY started_at, id;

-- name: acquire_lease
-- $1 name, $2 holder, $3 ttl. Takes a free or expired lease (token + 1); no row if it is held.
INSERT INTO leases AS l (name, holder, token, acquired_at, expires_at)
VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3::float8))
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder, token = l.token + 1, acquired_at = excluded.acquired_at,
    expires_at = excluded.expires_at
WHERE l.holder IS NULL OR l.expires_at <= now()
RETURNING name, holder, token, expires_at;

-- name: get_lease
SELECT name, holder, token, expires_at, expires_at > now() FROM leases WHERE name = $1;

-- name: renew_lease
-- $1 name, $2 holder, $3 token, $4 ttl: only while still held with that token and not expired.
UPDATE leases SET expires_at = now() + make_interval(secs => $4::float8)
WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > now()
RETURNING name, holder, token, expires_at;

-- name: release_lease
-- The token is kept: the next acquisition takes token + 1.
UPDATE leases SET holder = NULL, expires_at = now()
WHERE name = $1 AND holder = $2 AND token = $3;

-- name: check_fence
-- The first statement of a fenced transaction: the lease still held with that token. FOR SHARE:
-- an acquisition by another replica waits until this transaction ended.
SELECT 1 FROM leases
WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > now()
FOR SHARE;

-- name: claim_runs
-- $1 replica, $2 limit, $3 mine. Active runs whose owner is no live replica (or none; or, with
-- mine, this replica), oldest first; SKIP LOCKED: concurrent claimers never take the same run.
WITH claimed AS (
    SELECT runs.id FROM runs
    WHERE runs.state IN ('queued', 'pending', 'running')
      AND (
          runs.owner IS NULL
          OR ($3 AND runs.owner = $1)
          OR (
              runs.owner <> $1
              AND NOT EXISTS (
                  SELECT 1 FROM replicas
                  WHERE replicas.id = runs.owner AND replicas.expires_at > now()
              )
          )
      )
    ORDER BY runs.created_at, runs.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE runs SET owner = $1 FROM claimed WHERE runs.id = claimed.id
RETURNING runs.id;

-- name: run_owners
SELECT id, owner FROM runs WHERE id = ANY($1::text[]);
