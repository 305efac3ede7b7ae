-- Fewer indexes to write. Two pairs of indexes held the same leading columns:
--
-- * runs_active (state, created_at, id) WHERE active and runs_state_created (state, created_at)
--   are one index runs_state_created (state, created_at, id): the active runs are its ranges of
--   the three active states, and the overview's counts stay one index-only range per (bucket, state);
-- * events_received (received_at, id) and events_received_source (received_at, source, outcome)
--   are one index events_received (received_at, id, source, outcome): newest-first listing in its
--   order, and the overview's events by source and outcome stay an index-only range.
--
-- A run's state is indexed, so each state change is a new row version with an entry in every index
-- of runs: one index fewer is one entry fewer per intake and per state change. A replica still on
-- the previous version runs its queries unchanged: none names an index, and none needs one that goes.
DROP INDEX IF EXISTS runs_active;
DROP INDEX IF EXISTS runs_state_created;
CREATE INDEX runs_state_created ON runs (state, created_at, id);
DROP INDEX IF EXISTS events_received;
DROP INDEX IF EXISTS events_received_source;
CREATE INDEX events_received ON events (received_at, id, source, outcome);
