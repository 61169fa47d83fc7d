package tests

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestAckModeSwitchKeepsHistory switches a table that ran with ACK_MODE mark
// to delete: the rows marked published under mark are history, delivered
// already, so neither the backfill of a new slot nor the reconciler may send
// them again or dead-letter them; only the row never marked is delivered.
func TestAckModeSwitchKeepsHistory(t *testing.T) {
	requireRelay(t)
	e := newEnv(t)
	e.createTable()
	// Rows delivered under mark an hour ago, and one that never was.
	e.exec(`INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, created_at, published_at)
		SELECT 'order', 'o-' || i, 'OrderPlaced', '{}', now() - interval '1 hour', now() - interval '59 minutes'
		FROM generate_series(1, 20) i`)
	history := e.ids("SELECT id::text FROM public.outbox")
	pending := &event{aggregateType: "order", aggregateID: "o-pending", typ: "OrderPlaced", payload: jsonText(`{}`)}
	e.insert(pending)

	// The relay creates the slot and backfills; the reconciler sweeps often
	// with a short grace, so a history row counted as unacked is swept.
	e.startRelay("OUTBOX_RELAY_ACK_MODE=delete", "OUTBOX_RELAY_RECONCILE_GRACE=1s", "OUTBOX_RELAY_RECONCILE_INTERVAL=200ms")
	e.readEvents(time.Minute, outboxTopics, idSet([]*event{pending}))
	// Commits after the history move the reconciler's clock past it.
	for i := range 3 {
		last := e.insert(&event{aggregateType: "order", aggregateID: fmt.Sprintf("o-later-%d", i), typ: "OrderPlaced", payload: jsonText(`{}`)})
		e.waitConfirmed(30*time.Second, last)
		time.Sleep(time.Second) // lets the grace pass and the reconciler sweep
	}

	if n := e.queryInt("SELECT count(*) FROM public.outbox WHERE published_at IS NOT NULL"); n != 20 {
		t.Errorf("%d history rows left in the table, want all 20 (none deleted)", n)
	}
	sent := 0
	for _, r := range e.readAll([]string{`^outbox\.`}) { // the event topics and outbox.dlq
		if id, _ := header(r, "id"); history[id] {
			sent++
		}
	}
	if sent != 0 {
		t.Errorf("%d records of rows marked published under ACK_MODE mark were sent again or dead-lettered, want 0", sent)
	}
}

// ids returns the set of text values the query's rows hold.
func (e *testEnv) ids(sql string) map[string]bool {
	e.t.Helper()
	ctx, cancel := e.context(time.Minute)
	defer cancel()
	rows, err := e.db.Query(ctx, sql)
	if err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	set := map[string]bool{}
	for _, id := range ids {
		set[id] = true
	}
	return set
}
