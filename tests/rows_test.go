package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// event is one outbox row as a test writes it, and what Postgres stored.
type event struct {
	aggregateType string
	aggregateID   string
	typ           string
	payload       *string           // JSON text as written; nil is SQL NULL
	headers       map[string]string // nil is SQL NULL
	topic         string            // "" is SQL NULL: the template decides
	seq           int               // the test's commit order

	id            string  // set by insertEvents
	storedPayload *string // payload::text: the jsonb as Postgres normalised it
}

// wantTopic is the topic the contract sends the event to with the default
// template outbox.event.${aggregatetype}.
func (ev *event) wantTopic() string {
	if ev.topic != "" {
		return ev.topic
	}
	return "outbox.event." + ev.aggregateType
}

func jsonText(s string) *string { return &s }

// insertEvents inserts events into public.outbox in one transaction and
// returns the end LSN of its commit record when withLSN is set.
func insertEvents(ctx context.Context, conn *pgx.Conn, events []*event, withLSN bool) (outbox.LSN, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	// Synchronous so that the commit record is flushed when Commit
	// returns and commitTx finds it at once.
	if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
		return 0, err
	}
	for _, ev := range events {
		var headers, topic *string
		if ev.headers != nil {
			b, err := json.Marshal(ev.headers)
			if err != nil {
				return 0, err
			}
			headers = jsonText(string(b))
		}
		if ev.topic != "" {
			topic = &ev.topic
		}
		err := tx.QueryRow(ctx, `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, headers, topic)
			VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6) RETURNING id::text, payload::text`,
			ev.aggregateType, ev.aggregateID, ev.typ, ev.payload, headers, topic).Scan(&ev.id, &ev.storedPayload)
		if err != nil {
			return 0, fmt.Errorf("insert event %d: %w", ev.seq, err)
		}
	}
	if !withLSN {
		return 0, tx.Commit(ctx)
	}
	return commitTx(ctx, tx)
}

// insert inserts events in one transaction, failing the test on error.
func (e *testEnv) insert(events ...*event) outbox.LSN {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lsn, err := insertEvents(ctx, e.db, events, true)
	if err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

// eventsByID indexes events by row id.
func eventsByID(events []*event) map[string]*event {
	m := make(map[string]*event, len(events))
	for _, ev := range events {
		m[ev.id] = ev
	}
	return m
}

// describeRows lists (some of) the rows still in public.outbox, with their
// seq among events, for failure messages.
func (e *testEnv) describeRows(events []*event) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ids []string
	if err := e.db.QueryRow(ctx, "SELECT coalesce(array_agg(id::text ORDER BY created_at), '{}') FROM public.outbox").Scan(&ids); err != nil {
		return fmt.Sprintf("cannot list rows: %v", err)
	}
	byID := eventsByID(events)
	var b strings.Builder
	fmt.Fprintf(&b, "rows left:")
	for i, id := range ids {
		if i == 10 {
			fmt.Fprintf(&b, " …")
			break
		}
		if ev, ok := byID[id]; ok {
			fmt.Fprintf(&b, " %s (seq %d)", id, ev.seq)
		} else {
			fmt.Fprintf(&b, " %s", id)
		}
	}
	return b.String()
}
