-- The dashboard's overview (`Store.activity`): covering indexes, so counting the runs of the last
-- day per state and bucket (one counted range per state and bucket) and the events by source is an index-only scan of one range.
CREATE INDEX IF NOT EXISTS runs_state_created ON runs (state, created_at);
CREATE INDEX IF NOT EXISTS events_received_source ON events (received_at, source, outcome);
