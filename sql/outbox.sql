-- The outbox table. Column names match Debezium's outbox event router, so a
-- team can switch relays without touching the application.
-- {{TABLE}} is replaced by the quoted OUTBOX_RELAY_TABLE.
CREATE TABLE IF NOT EXISTS {{TABLE}} (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text NOT NULL,
    aggregateid   text NOT NULL,
    type          text NOT NULL,
    payload       jsonb,
    headers       jsonb,        -- optional: object of string values, copied to Kafka headers
    topic         text,         -- optional per-row topic override
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz   -- set by ACK_MODE=mark
);
-- The reconciler looks for old unacknowledged rows.
CREATE INDEX IF NOT EXISTS {{INDEX}} ON {{TABLE}} (created_at) WHERE published_at IS NULL;
