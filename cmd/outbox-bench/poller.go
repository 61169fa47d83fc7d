package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"
)

// pollBatch is the polling relay's LIMIT.
const pollBatch = 100

// The polling baseline: the design most outbox libraries use. The table's
// id is a random uuid, so it orders by created_at to take rows in arrival
// order, as a serial id would; the outbox DDL's partial index on created_at
// WHERE published_at IS NULL serves exactly this query (ORDER BY created_at,
// id would sort the whole backlog on every poll).
const pollSQL = `SELECT id::text, aggregatetype, aggregateid, type, payload::text FROM outbox
	WHERE published_at IS NULL ORDER BY created_at LIMIT 100 FOR UPDATE SKIP LOCKED`

// runPoller is a minimal polling relay: in one transaction, lock a batch of
// rows, publish them (acks=all) and delete them; sleep pollInterval after a
// batch that was not full. It returns nil when ctx ends.
func runPoller(ctx context.Context, pgURL string, brokers []string) error {
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	w := &kafka.Writer{
		Addr:                   kafka.TCP(brokers...),
		Balancer:               &kafka.Hash{},
		RequiredAcks:           kafka.RequireAll,
		BatchSize:              pollBatch,
		BatchTimeout:           time.Millisecond, // the default 1 s would be a latency floor
		AllowAutoTopicCreation: true,
	}
	defer w.Close()
	msgs := make([]kafka.Message, 0, pollBatch)
	ids := make([]string, 0, pollBatch)
	for ctx.Err() == nil {
		n, err := pollOnce(ctx, conn, w, msgs, ids)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if n < pollBatch {
			sleep(ctx, pollInterval)
		}
	}
	return nil
}

func pollOnce(ctx context.Context, conn *pgx.Conn, w *kafka.Writer, msgs []kafka.Message, ids []string) (int, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, pollSQL)
	if err != nil {
		return 0, err
	}
	for rows.Next() {
		var id, aggType, aggID, typ, payload string
		if err := rows.Scan(&id, &aggType, &aggID, &typ, &payload); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
		msgs = append(msgs, kafka.Message{
			Topic: "outbox.event." + aggType, Key: []byte(aggID), Value: []byte(payload),
			Headers: []kafka.Header{{Key: "id", Value: []byte(id)}, {Key: "type", Value: []byte(typ)}},
		})
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if len(msgs) == 0 {
		return 0, tx.Commit(ctx)
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		return 0, fmt.Errorf("poller publish %d records: %w", len(msgs), err)
	}
	if _, err := tx.Exec(ctx, "DELETE FROM outbox WHERE id = ANY($1::uuid[])", ids); err != nil {
		return 0, err
	}
	return len(msgs), tx.Commit(ctx)
}
