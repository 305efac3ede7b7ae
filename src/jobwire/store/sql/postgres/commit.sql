-- The group commit of jobwire.store.postgres in ONE statement: one round trip, atomic on its own
-- (an implicit transaction: no BEGIN, no COMMIT, durable when the answer arrives).

-- name: commit_batch
-- A batch's runs ($1-$22, _run_columns' order) and events ($23-$33, _event_row's), owned by $34
-- (also the writer of the updates: NULL, not checked), under the fence $35-$37 (lease name, holder,
-- token; NULL: none), the state changes of other runs ($38-$58, update_runs' order) and outbox
-- rows ($59 sinks, $60 documents).
--
-- * The fence is checked FOR SHARE first: without the lease nothing is written and the answer is one
--   row ('f', NULL). The lock holds until this statement's transaction ends, so an acquisition by
--   another replica waits for it, as with check_fence in a transaction.
-- * The runs go in with ON CONFLICT DO NOTHING. The events, the updates and the outbox rows are
--   written only if EVERY run of the batch was inserted. When a run key (or id) was taken, the
--   runs inserted beside it have no events: the deferred foreign key runs.event_id → events
--   (0001) fails the statement at its end, so nothing of it stays; when none was inserted, nothing
--   was written. Either way the caller sees fewer 'r' rows than runs and commits the batch again
--   the slow way (BEGIN, record_batch, mark_duplicates, COMMIT), which records the duplicates.
-- * Updates never name a run inserted by the same statement (a run is updated only once its
--   intake committed), so one snapshot for both is right.
-- Rows: ('r', id) per run inserted, ('u', id) per run updated (the others were refused).
WITH fence AS (
    SELECT 1 FROM leases
    WHERE $35::text IS NOT NULL AND name = $35 AND holder = $36 AND token = $37 AND expires_at > now()
    FOR SHARE
),
held AS (
    SELECT $35::text IS NULL OR EXISTS (SELECT 1 FROM fence) AS ok
),
inserted AS (
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
    WHERE (SELECT ok FROM held)
    ORDER BY u.n
    ON CONFLICT DO NOTHING
    RETURNING id
),
go AS (
    SELECT (SELECT ok FROM held) AND (SELECT count(*) FROM inserted) = cardinality($1::text[]) AS ok
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
    WHERE (SELECT ok FROM go)
    ORDER BY v.n
),
updated AS (
    UPDATE runs SET
        state = u.state, attempt = u.attempt, params = u.params::json, not_before = u.not_before,
        started_at = u.started_at, finished_at = u.finished_at, exit_code = u.exit_code, http_status = u.http_status,
        error = u.error::json, target_ref = u.target_ref, target_status = u.target_status::json,
        history = u.history::json, input_location = u.input_location, environment = u.environment
    FROM unnest(
        $38::text[], $39::text[], $40::text[], $41::text[], $42::text[], $43::int[], $44::text[],
        $45::text[], $46::timestamptz[], $47::timestamptz[], $48::timestamptz[], $49::timestamptz[],
        $50::timestamptz[], $51::int[], $52::int[], $53::text[], $54::text[], $55::text[], $56::text[],
        $57::text[], $58::text[]
    ) AS u (
        id, job, trigger, event_id, state, attempt, params, concurrency_key, created_at,
        scheduled_at, not_before, started_at, finished_at, exit_code, http_status, error,
        target_ref, target_status, history, input_location, environment
    )
    WHERE (SELECT ok FROM go)
      AND runs.id = u.id
      AND (runs.state = u.state OR (runs.state IN ('queued', 'pending', 'running') AND u.state <> 'queued'))
      AND ($34::text IS NULL OR runs.owner IS NULL OR runs.owner = $34)
    RETURNING runs.id
),
outbox_in AS (
    INSERT INTO outbox (sink, doc)
    SELECT o.sink, o.doc FROM unnest($59::text[], $60::text[]) WITH ORDINALITY AS o (sink, doc, n)
    WHERE (SELECT ok FROM go)
    ORDER BY o.n
)
SELECT 'f'::text, NULL::text FROM held WHERE NOT held.ok
UNION ALL
SELECT 'r', id FROM inserted
UNION ALL
SELECT 'u', id FROM updated;

-- name: commit_intakes
-- commit_batch without state changes and outbox rows ($1-$37 as there): a batch of intakes alone
-- (the common case under load) skips the two empty modifications, whose plan nodes still open
-- the runs and outbox tables and their indexes (~60 µs of the server's CPU per commit here).
WITH fence AS (
    SELECT 1 FROM leases
    WHERE $35::text IS NOT NULL AND name = $35 AND holder = $36 AND token = $37 AND expires_at > now()
    FOR SHARE
),
held AS (
    SELECT $35::text IS NULL OR EXISTS (SELECT 1 FROM fence) AS ok
),
inserted AS (
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
    WHERE (SELECT ok FROM held)
    ORDER BY u.n
    ON CONFLICT DO NOTHING
    RETURNING id
),
go AS (
    SELECT (SELECT ok FROM held) AND (SELECT count(*) FROM inserted) = cardinality($1::text[]) AS ok
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
    WHERE (SELECT ok FROM go)
    ORDER BY v.n
)
SELECT 'f'::text, NULL::text FROM held WHERE NOT held.ok
UNION ALL
SELECT 'r', id FROM inserted;
