package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestSetupLeavesNoGap commits a row while `setup` creates the slot: the
// transaction is open when setup starts (so a count before the slot sees no
// row) and commits while CREATE_REPLICATION_SLOT waits for it (so the
// slot's consistent point is after it, and the stream never shows it). The
// row must still be delivered once the relay runs: setup counts in the
// slot's snapshot, finds it, and leaves the slot to `run`, which backfills.
func TestSetupLeavesNoGap(t *testing.T) {
	requireRelay(t)
	e := newEnv(t)
	e.createTable()
	ctx, cancel := e.context(2 * time.Minute)
	defer cancel()

	writer, err := pgx.Connect(ctx, pg.URL(e.name))
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(context.Background())
	tx, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	var id string
	if err := tx.QueryRow(ctx, `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload)
		VALUES ('order', 'o-gap', 'OrderPlaced', '{}') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}

	type result struct {
		code           int
		stdout, stderr string
	}
	setupDone := make(chan result, 1)
	go func() {
		code, stdout, stderr := runRelay(t, e.relayEnv(), time.Minute, "setup")
		setupDone <- result{code, stdout, stderr}
	}()
	// CREATE_REPLICATION_SLOT shows the (temporary) slot while it waits
	// for the open transaction to end.
	e.waitFor(30*time.Second, "setup to start creating the slot", func() (bool, string) {
		n := e.queryInt("SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ($1::text, $1::text || '_tmp')", e.name)
		return n == 1, fmt.Sprintf("%d slots", n)
	})
	time.Sleep(200 * time.Millisecond) // lets the creation reach its wait, not needed for correctness
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	res := <-setupDone
	if res.code != 0 {
		t.Fatalf("setup exited with %d:\n%s\n%s", res.code, res.stdout, res.stderr)
	}
	t.Logf("setup said:\n%s", res.stdout)

	e.startRelay()
	e.readEvents(30*time.Second, outboxTopics, map[string]bool{id: true})
}
