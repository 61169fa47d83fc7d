package tests

import (
	"fmt"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// reconcileFast makes the reconciler sweep within seconds: a 2s grace, a
// sweep every 500ms, and a heartbeat every second so that the commit time
// at the confirmed position stays fresh.
var reconcileFast = []string{
	"OUTBOX_RELAY_RECONCILE_GRACE=2s",
	"OUTBOX_RELAY_RECONCILE_INTERVAL=500ms",
	"OUTBOX_RELAY_HEARTBEAT_INTERVAL=1s",
}

// TestReconcilerSweepsUndeliveredRow commits rows while the publication
// leaves the outbox table out, so the stream never delivers them: once the
// grace has passed (and the confirmed position moved past their creation by
// the grace), the reconciler must dead-letter them — reason
// unacked_after_grace, or decode_error for one whose headers are not an
// object of strings — with the original key, value and headers and an empty
// LSN header, and delete or mark them; the rows the stream delivered around
// them must not be dead-lettered, and the swept rows must not reach their
// own topic.
func TestReconcilerSweepsUndeliveredRow(t *testing.T) {
	tests := []struct {
		mode string
		// wantRows and wantMarked count the swept rows left in the
		// table, and marked, afterwards.
		wantRows, wantMarked int
	}{
		{mode: "delete", wantRows: 0, wantMarked: 0},
		{mode: "mark", wantRows: 2, wantMarked: 2},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			e := newEnv(t)
			e.createTable()
			e.startRelay(append([]string{"OUTBOX_RELAY_ACK_MODE=" + tt.mode}, reconcileFast...)...)

			before := orderEvents(0, 3)
			e.insert(before...)
			lost := &event{aggregateType: "customer", aggregateID: "c-lost", typ: "CustomerChanged",
				payload: jsonText(`{"lost": true}`), headers: map[string]string{"trace-id": "t-lost"}, seq: 3}
			// Found with SQL, a row that could not become a record
			// either goes out as a decode_error.
			undecodable := &event{aggregateType: "customer", aggregateID: "c-bad", typ: "CustomerChanged",
				payload: jsonText(`{"bad": true}`), seq: 4}
			e.whileUnpublished(func() {
				e.insert(lost)
				e.insertWithRawHeaders([]*event{undecodable}, map[*event]string{undecodable: `{"a": 1}`})
			})
			after := orderEvents(5, 3)
			lastCommit := e.insert(after...)

			delivered := append(append([]*event{}, before...), after...)
			e.readEvents(30*time.Second, outboxTopics, idSet(delivered))
			e.waitConfirmed(30*time.Second, lastCommit)

			swept := []*event{lost, undecodable}
			ids := []string{lost.id, undecodable.id}
			dead := e.readEvents(30*time.Second, exactTopic(defaultDLQTopic), idSet(swept))
			e.waitFor(10*time.Second, "the swept rows to be "+tt.mode+"d", func() (bool, string) {
				n := e.queryInt("SELECT count(*) FROM public.outbox WHERE id::text = ANY($1) AND published_at IS NULL", ids)
				return n == 0, fmt.Sprintf("%d unacked", n)
			})
			rows := e.queryInt("SELECT count(*) FROM public.outbox WHERE id::text = ANY($1)", ids)
			marked := e.queryInt("SELECT count(*) FROM public.outbox WHERE id::text = ANY($1) AND published_at >= created_at", ids)
			if rows != tt.wantRows || marked != tt.wantMarked {
				t.Errorf("ACK_MODE=%s: swept rows present %d, marked %d; want %d and %d", tt.mode, rows, marked, tt.wantRows, tt.wantMarked)
			}
			if len(dead) != len(swept) {
				for _, r := range dead {
					t.Logf("dead letter: %s", describeRecord(r))
				}
				t.Fatalf("%d dead letters, want only the %d rows the stream never delivered", len(dead), len(swept))
			}
			byID := eventsByID(swept)
			for _, r := range dead {
				id, _ := header(r, "id")
				ev := byID[id]
				reason := reasonUnackedAfter
				if ev == undecodable {
					reason = reasonDecodeError
				}
				checkDeadLetter(t, r, ev, reason, false)
				if string(r.Value) != *ev.storedPayload {
					t.Errorf("dead-letter value %q, want the row's payload %q", r.Value, *ev.storedPayload)
				}
			}
			if n := e.endOffsetsTotal(exactTopic(lost.wantTopic())); n != 0 {
				t.Errorf("%d records in %s: the swept rows must go to the dead-letter topic only", n, lost.wantTopic())
			}
		})
	}
}

// TestReconcilerNoRaceWithSlowStream holds every produce request for 2s
// while the reconciler runs with a grace of 500ms every 200ms: rows in
// flight are older than the grace long before they are acked, but newer
// than the confirmed position, so none may be dead-lettered; the stream
// delivers them all. A row the stream never sees, swept first, shows that
// the reconciler is live with these settings.
func TestReconcilerNoRaceWithSlowStream(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	e.startRelay("OUTBOX_RELAY_RECONCILE_GRACE=500ms", "OUTBOX_RELAY_RECONCILE_INTERVAL=200ms", "OUTBOX_RELAY_HEARTBEAT_INTERVAL=1s")

	lost := &event{aggregateType: "customer", aggregateID: "c-lost", typ: "CustomerChanged", payload: jsonText(`{}`), seq: -1}
	e.insertUnseen(lost)
	e.readEvents(30*time.Second, exactTopic(defaultDLQTopic), idSet([]*event{lost}))

	const delay = 2 * time.Second
	delayProduce(e.kafka.Cluster(), delay)
	start := time.Now()
	var events []*event
	var lastCommit outbox.LSN
	for i := range 5 {
		batch := orderEvents(i*4, 4)
		events = append(events, batch...)
		lastCommit = e.insert(batch...)
	}
	e.readEvents(time.Minute, outboxTopics, idSet(events))
	e.waitConfirmed(30*time.Second, lastCommit)
	inFlight := time.Since(start)
	t.Logf("rows delivered %v after the first insert (grace 500ms)", inFlight.Round(time.Millisecond))
	if inFlight < delay {
		t.Fatalf("rows delivered after %v, before the produce delay of %v: the broker was not slow", inFlight, delay)
	}

	// Any sweep of these rows would have dead-lettered them before their
	// ack could delete them; a few more sweeps must not either.
	dlq := exactTopic(defaultDLQTopic)
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		records := e.readAll(dlq)
		for _, r := range records {
			if id, _ := header(r, "id"); id != lost.id {
				t.Fatalf("a row the stream delivered was dead-lettered: %s", describeRecord(r))
			}
		}
		if len(records) != 1 {
			t.Fatalf("%d dead letters, want only the row the stream never saw", len(records))
		}
		time.Sleep(200 * time.Millisecond) // poll interval
	}
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left, want 0", n)
	}
}
