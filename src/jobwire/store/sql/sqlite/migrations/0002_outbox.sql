-- The outbox: status documents for durable sinks (RabbitMQ), written in the same transaction as
-- the state change they describe, deleted once the broker confirmed them. Additive only: an older
-- jobwire on the same file ignores the table.
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_sink ON outbox (sink, seq);
