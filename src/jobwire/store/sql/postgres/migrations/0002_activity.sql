-- The dashboard's overview (`Store.activity`): covering indexes, so counting the runs of the last
-- day by state and the events by source is an index-only scan of one range.
CREATE INDEX IF NOT EXISTS runs_created_state ON runs (created_at, state);
CREATE INDEX IF NOT EXISTS events_received_source ON events (received_at, source, outcome);
