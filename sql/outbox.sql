-- The outbox table. Column names match Debezium's outbox event router, so a
-- team can switch relays without touching the application.
-- {{TABLE}} is replaced by the quoted OUTBOX_RELAY_TABLE, {{ID}} by the id
-- column (OUTBOX_RELAY_COLUMN_ID).
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
-- {{DEAD_LETTER_SECTION}}
-- The dead-letter table: a row whose dead-letter record cannot carry it whole
-- (a record too large for its topic goes to the dead-letter topic as a stub)
-- is kept here, moved (ACK_MODE delete) or copied (mark) in the transaction
-- that records its delivery. `outbox-relay dlq ls` lists these rows and
-- `dlq replay` sends them once the limit was raised, then deletes them.
-- Columns: the outbox row's own, plus why it was dead-lettered.
CREATE TABLE IF NOT EXISTS {{DEAD_LETTER_TABLE}} (
    LIKE {{TABLE}},
    reason           text NOT NULL,  -- outbox.dlq.reason, e.g. message_too_large
    error            text NOT NULL,  -- outbox.dlq.error
    lsn              pg_lsn,         -- WAL position of the row's INSERT (NULL when found by a backfill)
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);
-- A row re-sent after a crash is kept once.
CREATE UNIQUE INDEX IF NOT EXISTS {{DEAD_LETTER_INDEX}} ON {{DEAD_LETTER_TABLE}} ({{ID}});
