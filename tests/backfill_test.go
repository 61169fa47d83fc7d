package tests

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"
)

// insertBackfillRows inserts n rows in one statement, as rows written before
// any slot existed: keys b-0…b-15 over two aggregate types, created_at one
// millisecond apart in seq order but inserted in the reverse order, so that
// only an ORDER BY created_at returns them in seq order.
func (e *testEnv) insertBackfillRows(n int) []*event {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := e.db.Query(ctx, `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, created_at)
		SELECT CASE WHEN g % 16 < 8 THEN 'order' ELSE 'customer' END, 'b-' || (g % 16), 'Backfilled',
			jsonb_build_object('seq', g), now() - interval '1 hour' + g * interval '1 millisecond'
		FROM generate_series($1::int - 1, 0, -1) AS g
		RETURNING id::text, aggregatetype, aggregateid, type, payload::text, (payload->>'seq')::int`, n)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	events := make([]*event, 0, n)
	for rows.Next() {
		ev := &event{}
		var payload string
		if err := rows.Scan(&ev.id, &ev.aggregateType, &ev.aggregateID, &ev.typ, &payload, &ev.seq); err != nil {
			e.t.Fatal(err)
		}
		ev.payload, ev.storedPayload = &payload, &payload
		events = append(events, ev)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	if len(events) != n {
		e.t.Fatalf("inserted %d rows, want %d", len(events), n)
	}
	return events
}

// TestBackfillWithConcurrentInserts starts the relay on a table that holds
// 10k rows and no slot (`setup` must leave the slot to `run`), while a
// writer commits small transactions before, during and after the slot's
// creation: every row must reach its topic exactly once (none lost between
// the snapshot and the stream, none in both), the backfilled rows in
// created_at order per key, an undecodable backfilled row must be
// dead-lettered (decode_error, empty LSN header), and the table must be
// empty at the end.
func TestBackfillWithConcurrentInserts(t *testing.T) {
	const backfilled = 10_000
	e := newEnv(t)
	e.createTable()
	old := e.insertBackfillRows(backfilled)
	// A row that cannot become a record goes to the dead-letter topic.
	undecodable := &event{aggregateType: "order", aggregateID: "b-bad", typ: "Backfilled", payload: jsonText(`{"bad": true}`), seq: -1}
	e.insertWithRawHeaders([]*event{undecodable}, map[*event]string{undecodable: `{"a": 1}`})
	// setup creates the publication but leaves the slot to run: only the
	// relay can create it with a snapshot to backfill from.
	e.setup()
	if s := e.slot(); s.exists {
		t.Fatalf("setup on a table holding %d unacked rows created the slot (%v), want it left to run", backfilled+1, s)
	}

	w := startWriter(t, e.name, math.MaxInt)
	e.waitFor(30*time.Second, "the writer to commit", func() (bool, string) {
		return w.count() >= 50, fmt.Sprintf("%d committed", w.count())
	})
	atStart := w.count()
	started := time.Now()
	e.startRelay()
	atStream := w.count()
	e.waitFor(30*time.Second, "the writer to commit while the relay streams", func() (bool, string) {
		return w.count() >= atStream+200, fmt.Sprintf("%d committed", w.count())
	})
	written := w.finish(t)
	t.Logf("writer committed %d rows before the relay started, %d while it created the slot and backfilled (%v), %d while it streamed",
		atStart, atStream-atStart, time.Since(started).Round(time.Millisecond), len(written)-atStream)
	marker := orderEvents(0, 1)
	lastCommit := e.insert(marker...)

	all := append(append(append([]*event{}, old...), written...), marker...)
	topics := []string{`^outbox\.event\.`}
	e.readEvents(time.Minute, topics, idSet(all))
	e.readEvents(30*time.Second, exactTopic(defaultDLQTopic), idSet([]*event{undecodable}))
	e.waitConfirmed(30*time.Second, lastCommit)
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left after every row was delivered and the slot confirmed, want 0; %s", n, e.describeRows(all))
	}
	records := e.readAll(topics)
	checkExactlyOnce(t, records, all)
	checkKeyOrder(t, records, seqByID(all))
	byID := eventsByID(all)
	wrong := 0
	for _, r := range records {
		id, _ := header(r, "id")
		if ev := byID[id]; ev != nil && (r.Topic != ev.wantTopic() || string(r.Key) != ev.aggregateID) {
			if wrong++; wrong <= 5 {
				t.Errorf("event %d (%s) in %s with key %q, want %s and %q", ev.seq, id, r.Topic, r.Key, ev.wantTopic(), ev.aggregateID)
			}
		}
	}
	dead := e.readAll(exactTopic(defaultDLQTopic))
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want 1 (the undecodable row)", len(dead))
	}
	checkDeadLetter(t, dead[0], undecodable, reasonDecodeError, false)
}

// TestRecreateSlotBackfills loses the relay's slot while it is stopped,
// with rows committed before, while and after the slot was gone:
// `setup --recreate-slot` must replace it and the next run must deliver
// every one of them exactly once (and nothing delivered before again).
// An invalidated slot (its WAL removed) must first make `run` refuse.
func TestRecreateSlotBackfills(t *testing.T) {
	tests := []struct {
		name string
		// lose makes the stopped relay's slot unusable.
		lose func(t *testing.T, e *testEnv)
		// refused says `run` must refuse to start on the slot left.
		refused bool
		ackMode string
	}{
		{name: "dropped", lose: dropSlot, ackMode: "delete"},
		{name: "dropped with ACK_MODE=mark", lose: dropSlot, ackMode: "mark"},
		{name: "invalidated", lose: invalidateSlot, refused: true, ackMode: "delete"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			env := func(extra ...string) []string {
				return e.relayEnv(append([]string{"OUTBOX_RELAY_ACK_MODE=" + tt.ackMode}, extra...)...)
			}
			unacked := "SELECT count(*) FROM public.outbox"
			if tt.ackMode == "mark" {
				unacked += " WHERE published_at IS NULL"
			}
			e.setup("OUTBOX_RELAY_ACK_MODE=" + tt.ackMode)
			if s := e.slot(); !s.exists {
				t.Fatalf("setup on an empty table created no slot")
			}
			r := e.startRelay("OUTBOX_RELAY_ACK_MODE=" + tt.ackMode)
			delivered := orderEvents(0, 10)
			commit := e.insertInTransactions(delivered)
			e.readEvents(30*time.Second, outboxTopics, idSet(delivered))
			e.waitConfirmed(30*time.Second, commit)
			r.terminate(t)
			// Its walsender may outlive it for a moment.
			e.waitFor(10*time.Second, "the stopped relay's slot to be released", func() (bool, string) {
				s := e.slot()
				return !s.active, s.String()
			})

			// Committed after the slot's position while the relay is down:
			// the WAL would have delivered them, had the slot survived.
			var lost []*event
			lost = append(lost, orderEvents(10, 5)...)
			e.insert(lost[0:5]...)
			tt.lose(t, e)
			lost = append(lost, orderEvents(15, 5)...)
			e.insert(lost[5:10]...)

			if tt.refused {
				code, _, stderr := runRelay(t, env(), 30*time.Second, "run")
				errs := strings.ToLower(errorLines(stderr))
				if code == 0 || !strings.Contains(errs, "recreate-slot") {
					t.Fatalf("run on the %s slot exited %d, want a refusal that points to setup --recreate-slot; errors:\n%s", tt.name, code, errs)
				}
			}
			code, stdout, stderr := runRelay(t, env(), time.Minute, "setup", "--recreate-slot")
			if code != 0 {
				t.Fatalf("setup --recreate-slot exited %d; stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
			if tt.refused && !strings.Contains(stdout, "dropped") {
				t.Errorf("setup --recreate-slot does not say it dropped the lost slot; output:\n%s", stdout)
			}
			if s := e.slot(); s.exists {
				t.Errorf("after setup --recreate-slot on a table with unacked rows the slot exists (%v), want it left to run (backfill)", s)
			}

			// Committed while no slot exists at all.
			lost = append(lost, orderEvents(20, 5)...)
			e.insert(lost[10:15]...)

			e.startRelay("OUTBOX_RELAY_ACK_MODE=" + tt.ackMode)
			after := orderEvents(25, 5)
			lastCommit := e.insert(after...)
			e.readEvents(time.Minute, outboxTopics, idSet(append(append([]*event{}, lost...), after...)))
			e.waitConfirmed(30*time.Second, lastCommit)
			if n := e.queryInt(unacked); n != 0 {
				t.Errorf("%d rows left unacked (ACK_MODE=%s), want 0; %s", n, tt.ackMode, e.describeRows(lost))
			}
			all := append(append(append([]*event{}, delivered...), lost...), after...)
			records := e.readAll(outboxTopics)
			checkExactlyOnce(t, records, all)
			checkKeyOrder(t, records, seqByID(all))
		})
	}
}

// dropSlot drops the stopped relay's slot, as an operator might.
func dropSlot(t *testing.T, e *testEnv) {
	e.exec("SELECT pg_drop_replication_slot($1)", e.name)
}

// invalidateSlot makes Postgres invalidate the stopped relay's slot (its
// wal_status becomes "lost") by capping the WAL a slot may retain and
// moving past it; the cap is removed again at once.
func invalidateSlot(t *testing.T, e *testEnv) {
	t.Helper()
	reset := func() {
		e.exec("ALTER SYSTEM RESET max_slot_wal_keep_size")
		e.exec("SELECT pg_reload_conf()")
	}
	t.Cleanup(reset)
	e.exec("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
	e.exec("SELECT pg_reload_conf()")
	e.waitFor(30*time.Second, "the slot to be invalidated", func() (bool, string) {
		e.exec("SELECT pg_logical_emit_message(false, 'outbox-relay-test-padding', repeat('x', 1000))")
		e.exec("SELECT pg_switch_wal()")
		e.exec("CHECKPOINT")
		var status *string
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.db.QueryRow(ctx, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", e.name).Scan(&status); err != nil {
			t.Fatal(err)
		}
		return status != nil && *status == "lost", fmt.Sprintf("wal_status %v", orNULL(status))
	})
	reset()
}

func orNULL(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}

// TestBackfillCrashLosesNothing kills the relay (SIGKILL) while its
// backfill waits for a stalled broker. The slot's position passes every row
// the backfill is still publishing, so no slot may exist until the backfill
// is recorded: the crash must leave none, and the next run must backfill
// again and deliver every row to its topic itself — with the reconciler's
// grace far away, nothing else could.
func TestBackfillCrashLosesNothing(t *testing.T) {
	const rows = 2000
	e := newEnv(t)
	e.createTable()
	old := e.insertBackfillRows(rows)

	block := holdProduce(e.kafka.Cluster())
	t.Cleanup(block.release)
	r := startRelayProcess(t, relayBin, e.relayEnv(), "run")
	e.mu.Lock()
	e.relays = append(e.relays, r)
	e.mu.Unlock()
	e.waitFor(30*time.Second, "the relay to start the backfill", func() (bool, string) {
		return block.attempts() > 0, fmt.Sprintf("%d produce requests held", block.attempts())
	})
	if s := e.slot(); s.exists {
		t.Errorf("slot exists during the backfill (%v): its position passes rows not yet published", s)
	}
	r.kill(t)
	block.release()
	e.waitFor(10*time.Second, "the killed relay's temporary slot to go", func() (bool, string) {
		n := e.queryInt("SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ($1::text, $1::text || '_tmp')", e.name)
		return n == 0, fmt.Sprintf("%d slots", n)
	})

	e.startRelay()
	topics := []string{`^outbox\.event\.`, "^" + regexp.QuoteMeta(defaultDLQTopic) + "$"}
	records := e.readEvents(time.Minute, topics, idSet(old))
	e.waitFor(30*time.Second, "the table to empty", func() (bool, string) {
		n := e.queryInt("SELECT count(*) FROM public.outbox")
		return n == 0, fmt.Sprintf("%d rows left", n)
	})
	dead := 0
	for _, rec := range records {
		if rec.Topic == defaultDLQTopic {
			dead++
		}
	}
	if dead > 0 {
		t.Errorf("%d of %d rows were dead-lettered: the backfill did not run again after the crash", dead, rows)
	}
}
