package tests

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// writerTxnRows is the most rows one transaction of startWriter holds.
const writerTxnRows = 3

// streamerSampler counts, every 50 ms, the walsenders of the test's
// replicas and records the most it saw at once.
type streamerSampler struct {
	mu   sync.Mutex
	most int
	seen []string
	stop chan struct{}
	done chan struct{}
}

func (e *testEnv) startStreamerSampler(t *testing.T) *streamerSampler {
	t.Helper()
	s := &streamerSampler{stop: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	conn, err := pgx.Connect(ctx, pg.URL(e.name))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer close(s.done)
		defer cancel()
		defer conn.Close(context.Background())
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(50 * time.Millisecond): // sampling period
			}
			ctx, cancelQuery := context.WithTimeout(ctx, 5*time.Second)
			var n int
			var names *string
			err := conn.QueryRow(ctx, `SELECT count(*), string_agg(application_name || ' pid ' || pid, ', ')
				FROM pg_stat_replication WHERE application_name LIKE 'replica-%'`).Scan(&n, &names)
			cancelQuery()
			if err != nil {
				continue
			}
			s.mu.Lock()
			if n > s.most {
				s.most = n
				s.seen = append(s.seen, fmt.Sprintf("%s: %s", time.Now().Format("15:04:05.000"), orNULL(names)))
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.finish)
	return s
}

func (s *streamerSampler) finish() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// TestFrozenLeaderReplaced freezes the streaming leader with SIGSTOP, as a
// paused VM or container would be: its kernel still answers TCP, so only
// Postgres ending its silent lock session passes the lock on. A standby
// must stream within 10 s, ending the frozen leader's walsender itself;
// never two walsenders stream the slot; and the old leader, resumed, must
// find its lock gone and stand by without publishing anything it had not
// received before it froze. Every committed row is delivered.
func TestFrozenLeaderReplaced(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	replicas := e.startReplicas(3, "OUTBOX_RELAY_LEADER_RETRY=500ms")
	leader := e.waitLeader(replicas)
	streamers := e.startStreamerSampler(t)
	w := startWriter(t, e.name, 50_000)
	e.waitFor(30*time.Second, "rows to flow", func() (bool, string) {
		v, _ := e.mustScrape(leader.addr).value("outbox_relay_events_published_total")
		return v >= 500, fmt.Sprintf("%g published", v)
	})

	streamedBefore := map[*replica]int{}
	for _, r := range replicas {
		streamedBefore[r] = len(logEntries(r.proc, msgStreaming))
	}
	frozen := time.Now()
	if err := leader.proc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			leader.proc.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	// Every row the frozen leader could have received was committed by now.
	committedAtFreeze := w.count() + writerTxnRows

	const takeoverBound = 10 * time.Second
	var next *replica
	var streamedAt time.Time
	e.waitFor(3*takeoverBound, "a standby to stream after the leader froze", func() (bool, string) {
		for _, r := range replicas {
			if entries := logEntries(r.proc, msgStreaming); r != leader && len(entries) > streamedBefore[r] {
				next, streamedAt = r, entries[streamedBefore[r]].Time
				return true, ""
			}
		}
		return false, "holder " + e.slotHolder()
	})
	takeover := streamedAt.Sub(frozen)
	t.Logf("%s froze; %s streams %v later", leader.name, next.name, takeover.Round(time.Millisecond))
	if takeover > takeoverBound {
		t.Errorf("%s streams %v after the leader froze, want within %v", next.name, takeover, takeoverBound)
	}
	if holder := e.slotHolder(); holder != next.name {
		t.Errorf("slot held by %q, want %s", holder, next.name)
	}
	// Stay frozen a while under load, then resume.
	e.waitFor(30*time.Second, next.name+" to publish under load", func() (bool, string) {
		v, _ := e.mustScrape(next.addr).value("outbox_relay_events_published_total")
		return v >= 500, fmt.Sprintf("%g published", v)
	})
	resume()
	e.waitFor(15*time.Second, leader.name+" to stand by after it resumed", func() (bool, string) {
		mfs, _, err := scrapeMetrics(leader.addr)
		if err != nil {
			return false, err.Error()
		}
		v, _ := mfs.value("outbox_relay_leader")
		return v == 0, fmt.Sprintf("outbox_relay_leader %g", v)
	})
	oldPublished := e.gauge(leader.addr, "outbox_relay_events_published_total")
	if int(oldPublished) > committedAtFreeze {
		t.Errorf("%s published %g records, more than the %d rows committed before it froze", leader.name, oldPublished, committedAtFreeze)
	}
	if holder := e.slotHolder(); holder != next.name {
		t.Errorf("after %s resumed the slot is held by %q, want %s", leader.name, holder, next.name)
	}

	events := w.finish(t)
	last := e.insert(orderEvents(len(events), 1)...)
	e.checkDeliveredAtLeastOnce(events, last)
	if later := e.gauge(leader.addr, "outbox_relay_events_published_total"); later != oldPublished {
		t.Errorf("%s published %g more records while standing by", leader.name, later-oldPublished)
	}
	streamers.finish()
	if streamers.most > 1 {
		t.Errorf("up to %d walsenders streamed at once, want 1: %v", streamers.most, streamers.seen)
	}
}
