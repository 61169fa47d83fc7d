-- Sample producer for `docker compose up`: the application side of the
-- transactional outbox. Every transaction changes a business row (orders) and
-- inserts the event describing that change into the outbox table, so the event
-- exists if and only if the change committed. outbox-relay streams the outbox
-- INSERTs to Kafka; this script never talks to Kafka.
--
-- Run by the `producer` service:
--   psql -v ON_ERROR_STOP=1 -v seconds=30 -f /docker/produce.sql
-- and by hand, against the compose Postgres published on localhost:5432:
--   psql postgres://postgres:postgres@localhost:5432/app -v seconds=10 -f docker/produce.sql
--
-- seconds: how long the live part (step 3) keeps writing, one event a second.

\set ON_ERROR_STOP on
\set QUIET on
\if :{?seconds}
\else
  \set seconds 30
\endif
-- Hand the duration to the DO block below (psql variables do not reach inside
-- a dollar-quoted body; a custom setting does).
SET outbox_demo.seconds = :'seconds';

CREATE TABLE IF NOT EXISTS orders (
    id         text PRIMARY KEY,
    status     text NOT NULL,
    total      numeric(10, 2) NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

\echo 'producer: 1. orders 1..5 created, one transaction each (order row + order.created event)'
DO $$
BEGIN
    FOR i IN 1..5 LOOP
        INSERT INTO orders (id, status, total) VALUES (i::text, 'created', 10 * i + 0.99)
        ON CONFLICT (id) DO UPDATE SET status = 'created', total = excluded.total, updated_at = now();
        INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
        VALUES ('order', i::text, 'order.created',
                jsonb_build_object('orderId', i::text, 'total', 10 * i + 0.99, 'currency', 'EUR',
                                   'lines', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || i, 'qty', i))));
        COMMIT;  -- one transaction per order
    END LOOP;
END
$$;

\echo 'producer: 2. one transaction, three events: order 1 paid (with headers), a customer event, an audit event (topic column)'
BEGIN;
UPDATE orders SET status = 'paid', updated_at = now() WHERE id = '1';
-- headers: an object of string values, copied to the Kafka record's headers
-- next to the relay's own `id` and `type` headers.
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers)
VALUES ('order', '1', 'order.paid',
        '{"orderId": "1", "amount": 10.99, "currency": "EUR", "method": "card"}',
        '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "source": "docker-compose-producer"}');
-- Another aggregate type goes to another topic: outbox.event.customer.
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
VALUES ('customer', 'c-42', 'customer.registered', '{"customerId": "c-42", "name": "Ada", "tier": "gold"}');
-- A non-null topic column overrides the topic template.
INSERT INTO outbox (aggregatetype, aggregateid, type, payload, topic)
VALUES ('order', '1', 'order.audit', '{"orderId": "1", "action": "payment-captured"}', 'outbox.audit');
COMMIT;

\echo 'producer: 3. live stream: an order moves to its next status every second for' :seconds 's'
DO $$
DECLARE
    next_status constant jsonb := '{"created": "paid", "paid": "shipped", "shipped": "delivered", "delivered": "created"}';
    n  int := current_setting('outbox_demo.seconds')::int;
    agg text;
    st  text;
BEGIN
    FOR i IN 1..n LOOP
        agg := (1 + (i - 1) % 5)::text;  -- orders 1..5 in turn
        UPDATE orders SET status = next_status ->> status, updated_at = now()
        WHERE orders.id = agg
        RETURNING status INTO st;
        INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
        VALUES ('order', agg, 'order.' || st,
                jsonb_build_object('orderId', agg, 'status', st, 'seq', i, 'at', clock_timestamp()));
        COMMIT;
        RAISE NOTICE 'order % -> % (%/%)', agg, st, i, n;
        PERFORM pg_sleep(1);
    END LOOP;
END
$$;

\echo 'producer: done. Events still in the outbox table (with ACK_MODE=delete the relay removes them once Kafka acked them):'
\set QUIET off
SELECT count(*) AS rows_left_in_outbox FROM outbox;
