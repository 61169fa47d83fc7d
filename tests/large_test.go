package tests

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// TestLargeTransaction commits 200k rows in one transaction while the relay
// may hold only 1 MiB of unacknowledged records: it must deliver them all,
// in order per key, confirm past the commit, and stay within a memory bound
// far below the transaction's size.
func TestLargeTransaction(t *testing.T) {
	const (
		rows        = 200_000
		payloadPad  = 400 // bytes of padding per payload: ~90 MB of payload in all
		inflightCap = 1 << 20
		// The bound on the relay's peak RSS. The transaction's payloads
		// alone are ~90 MB; a relay that buffered them would pass it.
		maxPeakRSS = 64 << 20
	)
	e := newEnv(t)
	e.createTable()
	// Without -race, whose shadow memory would swamp the measurement.
	relay := e.startRelayBinary(plainRelayBin, "OUTBOX_RELAY_MAX_INFLIGHT_BYTES=1048576")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	tx, err := e.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload)
		SELECT 'order', 'o-' || (g % 64), 'Bulk', jsonb_build_object('n', g, 'pad', repeat('x', $2))
		FROM generate_series(0, $1 - 1) AS g`, rows, payloadPad); err != nil {
		t.Fatal(err)
	}
	commit, err := commitTx(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("inserted %d rows in %v; commit ends at %s", rows, time.Since(start), commit)

	start = time.Now()
	readCtx, cancelRead := e.context(90 * time.Second)
	defer cancelRead()
	seen := make([]bool, rows)
	distinct, read := 0, 0
	records, err := devenv.ReadRecords(readCtx, e.brokers, outboxTopics, func(got []*kgo.Record) bool {
		for _, r := range got[read:] {
			if n, ok := payloadN(r); ok && n >= 0 && n < rows && !seen[n] {
				seen[n] = true
				distinct++
			}
		}
		read = len(got)
		return distinct == rows
	})
	if err != nil {
		t.Fatalf("%v: %d of %d rows arrived", err, distinct, rows)
	}
	t.Logf("all %d rows arrived %v after the commit", rows, time.Since(start))
	e.waitConfirmed(30*time.Second, commit)
	checkKeyOrder(t, records, payloadN)

	peak, err := relay.peakRSS()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("relay peak RSS %.1f MiB (in-flight cap %d KiB)", float64(peak)/(1<<20), inflightCap>>10)
	if peak > maxPeakRSS {
		t.Errorf("relay peak RSS %.1f MiB, want at most %d MiB with a %d KiB in-flight cap: memory must not grow with the transaction",
			float64(peak)/(1<<20), maxPeakRSS>>20, inflightCap>>10)
	}
}

// payloadN reads the "n" field of a record's JSON payload.
func payloadN(r *kgo.Record) (int, bool) {
	var p struct {
		N *int `json:"n"`
	}
	if err := json.Unmarshal(r.Value, &p); err != nil || p.N == nil {
		return 0, false
	}
	return *p.N, true
}
