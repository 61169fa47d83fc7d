package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// badRows mixes rows the relay cannot deliver as they are into a steady
// load: an oversized payload, a headers value the contract does not allow
// (undecodable), and a topic that does not exist (auto-creation off). Each
// must end in the dead-letter topic (or table) without stopping the rows
// behind it, and an oversized payload must survive whole somewhere.
func badRows(t *testing.T) {
	w := newWorld(t)
	w.startRelay()
	wr := w.startWriter("k", steadyPause)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	big := `{"big": "` + strings.Repeat("x", 1536<<10) + `"}`
	rounds := 5
	var oversized []string
	for i := range rounds {
		w.waitCommits(wr, 50, 30*time.Second)
		w.commit(ctx, []row{{aggregateType: "bad", key: "oversized", seq: i, payload: &big}})
		oversized = append(oversized, w.lastTxn().ids...)
		w.waitCommits(wr, 50, 30*time.Second)
		w.commit(ctx, []row{{aggregateType: "bad", key: "undecodable", seq: i, payload: jsonText(`{}`), headers: jsonText(`{"a": 1}`)}})
		w.waitCommits(wr, 50, 30*time.Second)
		w.commit(ctx, []row{{aggregateType: "bad", key: "unknown-topic", seq: i, payload: jsonText(`{}`), topic: jsonText("missing.topic")}})
	}
	w.waitCommits(wr, 200, 30*time.Second)
	wr.stop()
	w.audit(auditOptions{})
	// A dead letter of an oversized row is a stub; the payload must
	// still be in Postgres (or whole in Kafka) for a replay.
	destroyed := 0
	for _, id := range oversized {
		if !w.payloadKept(ctx, id, len(big)) {
			destroyed++
		}
	}
	if destroyed > 0 {
		t.Errorf("%d of %d oversized rows exist nowhere whole any more (not in the outbox, not in a dead-letter table, no whole record)",
			destroyed, len(oversized))
		w.notef("%d oversized payloads destroyed", destroyed)
	}
}

// lastTxn is the ledger's last committed transaction.
func (w *world) lastTxn() committedTxn {
	w.ledger.mu.Lock()
	defer w.ledger.mu.Unlock()
	return w.ledger.txns[len(w.ledger.txns)-1]
}

// payloadKept reports whether row id's payload of about size bytes still
// exists whole: in the outbox table, in a dead-letter table, or as the value
// of a record.
func (w *world) payloadKept(ctx context.Context, id string, size int) bool {
	var n int
	if w.db.QueryRow(ctx, "SELECT count(*) FROM public.outbox WHERE id::text = $1", id).Scan(&n) == nil && n > 0 {
		return true
	}
	if deadLetterTableIDs(ctx, w.db)[id] {
		return true
	}
	for _, r := range w.consumer.snapshot() {
		if recordID(r) == id && len(r.Value) >= size {
			return true
		}
	}
	return false
}

// largeTransaction commits a 200k-row transaction among small and aborted
// ones: every committed row arrives, none of the aborted.
func largeTransaction(t *testing.T) {
	w := newWorld(t)
	w.startRelay()
	wr := w.startWriter("k", steadyPause)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	abort := func() {
		tx, err := w.db.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload)
			SELECT 'order', 'aborted', 'Placed', '{}' FROM generate_series(1, 5000)`); err != nil {
			t.Fatal(err)
		}
		tx.Rollback(ctx)
	}
	w.waitCommits(wr, 100, 30*time.Second)
	abort()
	const bigRows = 200_000
	err := w.ledger.commitQuery(ctx, w.db, fmt.Sprintf(`INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload)
		SELECT 'order', 'big-' || (g %% 8), 'Placed', jsonb_build_object('seq', g) FROM generate_series(0, %d) g
		RETURNING id::text, aggregateid, (payload->>'seq')::int, (txid_current() %% 4294967296)::bigint`, bigRows-1))
	if err != nil {
		t.Fatalf("commit the large transaction: %v", err)
	}
	abort()
	w.waitCommits(wr, 100, 30*time.Second)
	abort()
	w.waitCommits(wr, 100, time.Minute)
	wr.stop()
	w.audit(auditOptions{drain: 3 * time.Minute, noDuplicates: true})
}
