package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// orderEvents returns n events numbered from seq over a few order keys.
func orderEvents(seq, n int) []*event {
	events := make([]*event, n)
	for i := range events {
		s := seq + i
		events[i] = &event{aggregateType: "order", aggregateID: fmt.Sprintf("o-%d", s%5), typ: "OrderPlaced",
			payload: jsonText(fmt.Sprintf(`{"seq": %d}`, s)), seq: s}
	}
	return events
}

// TestCleanRestartNoDuplicates stops the relay with SIGTERM right after its
// records were delivered, and starts it again twice: every row must reach
// Kafka exactly once. The first run's status interval is longer than the
// test, so only the final confirm on shutdown can save it from resending.
func TestCleanRestartNoDuplicates(t *testing.T) {
	e := newEnv(t)
	e.setup()

	// Committed after setup created the slot, before any relay ran.
	first := orderEvents(0, 20)
	firstCommit := e.insertInTransactions(first)
	r := e.startRelay("OUTBOX_RELAY_STATUS_INTERVAL=20s")
	e.readEvents(time.Minute, outboxTopics, idSet(first))
	r.terminate(t)
	if s := e.slot(); s.confirmed < firstCommit {
		t.Errorf("after SIGTERM the slot is confirmed at %s, before the commit %s of delivered rows: want the final position confirmed on shutdown",
			s.confirmed, firstCommit)
	}

	// Committed while no relay ran.
	second := orderEvents(20, 20)
	secondCommit := e.insertInTransactions(second)
	r = e.startRelay()
	e.readEvents(time.Minute, outboxTopics, idSet(second))
	e.waitConfirmed(30*time.Second, secondCommit)
	r.terminate(t)

	e.startRelay()
	third := orderEvents(40, 20)
	thirdCommit := e.insertInTransactions(third)
	e.readEvents(time.Minute, outboxTopics, idSet(third))
	// Confirmation means every earlier record, duplicates included, was
	// acked: reading now sees all there will be.
	e.waitConfirmed(30*time.Second, thirdCommit)

	all := append(append(first, second...), third...)
	counts := countByID(e.readAll(outboxTopics))
	for _, ev := range all {
		if n := counts[ev.id]; n != 1 {
			t.Errorf("event %d (%s) arrived %d times, want exactly once across clean restarts", ev.seq, ev.id, n)
		}
	}
	if len(counts) != len(all) {
		t.Errorf("%d distinct ids in Kafka, want %d", len(counts), len(all))
	}
}

// writer inserts events continuously in small transactions of order events
// (keys k-0…k-7, 1 to 3 rows each, distinct keys within one) from its own
// connection, and remembers what it committed in commit order. It stops only
// between transactions, so it knows every row it committed.
type writer struct {
	mu        sync.Mutex
	committed []*event
	err       error
	done      chan struct{}
	stopping  atomic.Bool
}

func startWriter(t *testing.T, db string, maxEvents int) *writer {
	t.Helper()
	return startPacedWriter(t, db, maxEvents, 0)
}

// startPacedWriter is startWriter pausing for pause after each commit, for
// a steady load rather than as much as the machine takes.
func startPacedWriter(t *testing.T, db string, maxEvents int, pause time.Duration) *writer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	conn, err := pgx.Connect(ctx, pg.URL(db))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w := &writer{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer cancel()
		defer conn.Close(context.Background())
		for seq := 0; seq < maxEvents && !w.stopping.Load(); {
			events := make([]*event, 1+seq%3)
			for i := range events {
				events[i] = &event{aggregateType: "order", aggregateID: fmt.Sprintf("k-%d", (seq+i)%8),
					typ: "OrderPlaced", payload: jsonText(fmt.Sprintf(`{"seq": %d}`, seq+i)), seq: seq + i}
			}
			if _, err := insertEvents(ctx, conn, events, false); err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				return
			}
			w.mu.Lock()
			w.committed = append(w.committed, events...)
			w.mu.Unlock()
			seq += len(events)
			if pause > 0 {
				time.Sleep(pause) // the load's pace, not synchronisation
			}
		}
	}()
	t.Cleanup(func() { w.stopping.Store(true); <-w.done })
	return w
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.committed)
}

// finish stops the writer after its current transaction and returns every
// event it committed, in commit order.
func (w *writer) finish(t *testing.T) []*event {
	t.Helper()
	w.stopping.Store(true)
	<-w.done
	if w.err != nil {
		t.Fatalf("writer: %v", w.err)
	}
	return w.committed
}

// TestKillNineLosesNothing SIGKILLs the relay several times while a writer
// commits small transactions, restarting it each time: every committed row
// must reach Kafka at least once, and each key's first occurrences must
// come in commit order.
func TestKillNineLosesNothing(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	// Slow acks keep records in flight long enough for a kill to find
	// some, whatever the machine's speed.
	delayProduce(e.kafka.Cluster(), 20*time.Millisecond)
	r := e.startRelay()
	w := startWriter(t, e.name, 40_000)

	const kills = 4
	for i := range kills {
		// Kill mid-stream: only after this run has confirmed progress on
		// rows written since it started, with more in flight behind them.
		n := w.count()
		e.waitFor(30*time.Second, "the writer to commit more", func() (bool, string) {
			return w.count() > n+50, fmt.Sprintf("%d events committed", w.count())
		})
		e.waitConfirmed(30*time.Second, e.currentLSN())
		time.Sleep(rand.N(200 * time.Millisecond)) // vary the moment of the kill, not synchronisation
		r.kill(t)
		t.Logf("kill %d: SIGKILL after %d events committed", i+1, w.count())
		r = e.startRelay()
	}
	events := w.finish(t)
	last := e.insert(orderEvents(len(events), 1)...) // the commit position to wait for
	t.Logf("%d events committed across %d kills", len(events), kills)

	e.checkDeliveredAtLeastOnce(events, last)
}

// checkDeliveredAtLeastOnce waits until every event is in Kafka and the slot
// confirmed last, then checks that each key's first occurrences are in
// commit order and that the outbox is empty (ACK_MODE delete). Duplicates
// are allowed and counted.
func (e *testEnv) checkDeliveredAtLeastOnce(events []*event, last outbox.LSN) {
	t := e.t
	t.Helper()
	topics := outboxTopics
	if e.topics != nil {
		topics = e.topics
	}
	e.readEvents(2*time.Minute, topics, idSet(events))
	e.waitConfirmed(time.Minute, last)
	records := e.readAll(topics)
	seqByID := make(map[string]int, len(events))
	for _, ev := range events {
		seqByID[ev.id] = ev.seq
	}
	checkKeyOrder(t, records, func(r *kgo.Record) (int, bool) {
		id, _ := header(r, "id")
		seq, ok := seqByID[id]
		return seq, ok
	})
	dups := 0
	for _, n := range countByID(records) {
		dups += n - 1
	}
	t.Logf("%d records for %d events: %d duplicates", len(records), len(events)+1, dups)
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left in the outbox after all were delivered and confirmed, want 0; %s", n, e.describeRows(events))
	}
}

// delayProduce answers every produce request after delay.
func delayProduce(c *kfake.Cluster, delay time.Duration) {
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.SleepControl(func() { time.Sleep(delay) })
		return nil, nil, false
	})
}

// TestPostgresRestartLosesNothing restarts the Postgres server (fast mode,
// which ends the relay's replication connection) right after a commit: the
// relay must reconnect by itself and deliver every row, before and after.
func TestPostgresRestartLosesNothing(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	e.startRelay()

	before := orderEvents(0, 20)
	e.insertInTransactions(before)
	e.readEvents(time.Minute, outboxTopics, idSet(before))

	// Committed, perhaps not yet delivered, when the server goes down.
	during := orderEvents(20, 20)
	e.insertInTransactions(during)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pg.Restart(ctx); err != nil {
		t.Fatalf("restart postgres: %v\n%s", err, pg.LogTail(20))
	}
	e.reconnect()

	after := orderEvents(40, 20)
	lastCommit := e.insertInTransactions(after)
	all := append(append(before, during...), after...)
	e.readEvents(time.Minute, outboxTopics, idSet(all))
	e.waitConfirmed(time.Minute, lastCommit)
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left in the outbox after all were delivered and confirmed, want 0; %s", n, e.describeRows(all))
	}
}
