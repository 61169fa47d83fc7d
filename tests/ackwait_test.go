package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestAckRedeliveryOfGoneRows sends transactions whose rows are gone by
// the time the relay records their delivery (the application deletes its
// outbox row in the same transaction, as a second slot or a re-delivery
// after a crash would find it): their transactions have completed, so the
// acker must not wait for the rows, and the position keeps up with the
// writer as it does for ordinary rows.
func TestAckRedeliveryOfGoneRows(t *testing.T) {
	requireRelay(t)
	e := newEnv(t)
	e.createTable()
	r := e.startRelay()
	addr := e.httpAddr(r)

	const txns = 40
	ctx, cancel := e.context(time.Minute)
	defer cancel()
	started := time.Now()
	for i := range txns {
		err := pgx.BeginFunc(ctx, e.db, func(tx pgx.Tx) error {
			var id string
			if err := tx.QueryRow(ctx, `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload)
				VALUES ('order', $1, 'OrderPlaced', '{}') RETURNING id::text`, fmt.Sprintf("o-%d", i)).Scan(&id); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "DELETE FROM public.outbox WHERE id = $1", id)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // a writer's pace: each transaction its own ack
	}
	wrote := time.Since(started)
	lastLSN := e.insert(&event{aggregateType: "order", aggregateID: "o-last", typ: "OrderPlaced", payload: jsonText(`{}`)})
	e.waitConfirmed(time.Minute, lastLSN)
	drained := time.Since(started)
	behind := drained - wrote
	t.Logf("%d transactions of gone rows: written in %v, confirmed %v after the last one", txns, wrote.Round(time.Millisecond), behind.Round(time.Millisecond))
	if behind > time.Second {
		t.Errorf("the position reached the last commit %v after it, want under 1s: the acker waited for rows its transactions had deleted", behind.Round(time.Millisecond))
	}
	if missing := e.gauge(addr, "outbox_relay_ack_rows_missing_total"); missing != txns {
		t.Errorf("ack_missing = %v, want %d (every gone row counted)", missing, txns)
	}
}

// TestAckWaitsForSlowCommit makes a commit wait for a synchronous standby
// that does not exist: the walsender sends the transaction at once, but its
// row stays invisible to other sessions for seconds. The acker must wait
// for it (the position must not pass it), then delete the row, and the
// reconciler must never dead-letter it.
func TestAckWaitsForSlowCommit(t *testing.T) {
	requireRelay(t)
	e := newEnv(t)
	e.createTable()
	e.startRelay("OUTBOX_RELAY_RECONCILE_GRACE=1s", "OUTBOX_RELAY_RECONCILE_INTERVAL=200ms", "OUTBOX_RELAY_HEARTBEAT_INTERVAL=300ms")

	// The tests of this package run one at a time, and every other session
	// commits with synchronous_commit off (the cluster default), so only the
	// session below waits.
	setStandbys := func(names string) {
		t.Helper()
		e.exec("ALTER SYSTEM SET synchronous_standby_names = '" + names + "'")
		e.exec("SELECT pg_reload_conf()")
	}
	setStandbys("outbox_relay_absent_standby")
	released := false
	release := func() {
		if !released {
			released = true
			setStandbys("")
		}
	}
	t.Cleanup(release)

	ctx, cancel := e.context(2 * time.Minute)
	defer cancel()
	writer, err := pgx.Connect(ctx, pg.URL(e.name))
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(context.Background())
	var id string
	if err := e.db.QueryRow(ctx, "SELECT gen_random_uuid()::text").Scan(&id); err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	go func() {
		_, err := writer.Exec(ctx, `SET synchronous_commit = on;
			INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('`+id+`', 'order', 'o-1', 'OrderPlaced', '{}')`)
		committed <- err
	}()
	e.readEvents(time.Minute, outboxTopics, map[string]bool{id: true})
	// Longer than any fixed visibility wait: the commit still waits.
	time.Sleep(4 * time.Second)
	select {
	case err := <-committed:
		t.Fatalf("the commit returned before the standby was released (%v): the test did not hold it", err)
	default:
	}
	release()
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	e.waitFor(30*time.Second, "the row to be deleted after its delivery", func() (bool, string) {
		n := e.queryInt("SELECT count(*) FROM public.outbox")
		return n == 0, fmt.Sprintf("%d rows", n)
	})
	// Let the reconciler sweep a few times past the grace.
	time.Sleep(2 * time.Second)
	for _, r := range e.readAll([]string{`^outbox\.dlq$`}) {
		if got, _ := header(r, "id"); got == id {
			reason, _ := header(r, outbox.HeaderDLQReason)
			t.Errorf("row %s was dead-lettered (%s) although the stream delivered it", id, reason)
		}
	}
}
