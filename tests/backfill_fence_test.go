package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// slowProduce delays every produce request by d, as a busy broker does, so
// that a backfill takes seconds.
func slowProduce(e *testEnv, d time.Duration) {
	c := e.kafka.Cluster()
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		c.SleepControl(func() { time.Sleep(d) })
		return nil, nil, false // then handled normally
	})
}

// TestBackfillStopsOnLostLeadership ends the leader's lock session while it
// backfills a large table. No walsender fences a backfill (a new leader
// ends the old one's walsender, not its queries), so the backfill itself
// must stop publishing at once: at most the batch in flight, not the
// batches a second of lock checking would let through.
func TestBackfillStopsOnLostLeadership(t *testing.T) {
	requireRelay(t)
	e := newEnv(t)
	e.createTable()
	e.insertBackfillRows(40_000)
	slowProduce(e, 20*time.Millisecond)
	r := startRelayProcess(t, relayBin, e.relayEnv("OUTBOX_RELAY_PG_URL="+pg.URL(e.name)+"&application_name=backfiller"), "run")
	addr := e.httpAddr(r)
	e.waitFor(30*time.Second, "the backfill to publish", func() (bool, string) {
		mfs, _, err := scrapeMetrics(addr)
		if err != nil {
			return false, err.Error()
		}
		v, _ := mfs.value("outbox_relay_events_published_total")
		return v >= 3000, fmt.Sprintf("%g published", v)
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var lockPID int32
	if err := e.db.QueryRow(ctx, `SELECT a.pid FROM pg_stat_activity a
		WHERE a.application_name = 'backfiller' AND a.backend_type = 'client backend'
		  AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)`).Scan(&lockPID); err != nil {
		t.Fatalf("find the lock session: %v", err)
	}
	e.exec("SELECT pg_terminate_backend($1)", lockPID)
	atLoss := e.gauge(addr, "outbox_relay_events_published_total")
	e.waitFor(10*time.Second, "the relay to notice the lost leadership", func() (bool, string) {
		n := len(logEntries(r, "leadership lost; standing by"))
		return n > 0, fmt.Sprintf("%d lines", n)
	})
	afterLoss := e.gauge(addr, "outbox_relay_events_published_total") - atLoss
	t.Logf("published %g records before the lock session ended, %g after", atLoss, afterLoss)
	const batch = 1000 // the backfill's batch: the one in flight may finish
	if afterLoss > batch {
		t.Errorf("the backfill published %g records after its leadership was lost, want at most the batch in flight (%d)", afterLoss, batch)
	}
}
