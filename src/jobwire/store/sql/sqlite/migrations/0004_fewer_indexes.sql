-- Fewer indexes to write. Every intake wrote 13 B-trees (the events and runs tables, their keys and
-- nine indexes) and every state change 3 (the runs table, runs_active, runs_state_created); each
-- dirtied page is written to the WAL and synced. Two pairs held the same leading columns:
--
-- * runs_active (state, created_at, id) WHERE active and runs_state_created (state, created_at)
--   are one index runs_state_created (state, created_at, id): the active runs are its ranges of
--   the three active states, and the overview's counts stay one covered range per (bucket, state);
-- * events_received (received_at, id) and events_received_source (received_at, source, outcome)
--   are one index events_received (received_at, id, source, outcome): newest-first listing in its
--   order, and the overview's events by source and outcome stay an index-only range.
--
-- An intake now writes 11 B-trees and a state change 2. No query needs an index that goes.
DROP INDEX IF EXISTS runs_active;
DROP INDEX IF EXISTS runs_state_created;
CREATE INDEX runs_state_created ON runs (state, created_at, id);
DROP INDEX IF EXISTS events_received;
DROP INDEX IF EXISTS events_received_source;
CREATE INDEX events_received ON events (received_at, id, source, outcome);
