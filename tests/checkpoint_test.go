package tests

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// produceBlock stops the broker from acknowledging produce requests until
// released. attempts counts the produce requests it stopped.
type produceBlock struct {
	attempts func() int
	release  func()
}

// rejectProduce answers every produce request with a retriable error
// (NOT_ENOUGH_REPLICAS: the broker is up but cannot take writes).
func rejectProduce(c *kfake.Cluster) produceBlock {
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.NotEnoughReplicas, Count: -1})
	return produceBlock{attempts: h.Hits, release: h.Remove}
}

// holdProduce holds every produce request unanswered, as a stalled broker
// does.
func holdProduce(c *kfake.Cluster) produceBlock {
	var n atomic.Int64
	released := make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		select {
		case <-released:
		default:
			n.Add(1)
			c.SleepControl(func() { <-released })
		}
		return nil, nil, false // then handled normally
	})
	var once sync.Once
	return produceBlock{
		attempts: func() int { return int(n.Load()) },
		release:  func() { once.Do(func() { close(released) }) },
	}
}

// dropProduceConnections closes the connection of every produce request,
// as a broker that goes away does.
func dropProduceConnections(c *kfake.Cluster) produceBlock {
	var n atomic.Int64
	var released atomic.Bool
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		if released.Load() {
			return nil, nil, false
		}
		c.KeepControl()
		n.Add(1)
		return nil, errors.New("test: connection dropped"), true
	})
	return produceBlock{
		attempts: func() int { return int(n.Load()) },
		release:  func() { released.Store(true) },
	}
}

// TestSlotAdvancesOnlyAfterAck blocks produce while rows are inserted: the
// slot must not be confirmed past their transaction and the rows must stay
// in the table, however long the broker is out; once it is back the relay
// must catch up by itself, deliver, delete the rows and confirm.
func TestSlotAdvancesOnlyAfterAck(t *testing.T) {
	tests := []struct {
		name  string
		block func(*kfake.Cluster) produceBlock
	}{
		{"produce rejected", rejectProduce},
		{"produce held", holdProduce},
		{"connections dropped", dropProduceConnections},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.createTable()
			e.startRelay()

			// With the broker up, the relay delivers and confirms.
			warm := &event{aggregateType: "order", aggregateID: "o-warm", typ: "Warm", payload: jsonText(`{}`)}
			warmCommit := e.insert(warm)
			e.readEvents(30*time.Second, outboxTopics, idSet([]*event{warm}))
			e.waitConfirmed(30*time.Second, warmCommit)

			block := tt.block(e.kafka.Cluster())
			t.Cleanup(block.release)
			var events []*event
			for i := range 30 {
				events = append(events, &event{aggregateType: "order", aggregateID: fmt.Sprintf("o-%d", i%4),
					typ: "OrderPlaced", payload: jsonText(fmt.Sprintf(`{"n": %d}`, i)), seq: i})
			}
			firstCommit := e.insert(events[:10]...)
			e.insert(events[10:20]...)
			lastCommit := e.insert(events[20:]...)
			e.waitFor(30*time.Second, "the relay to try producing", func() (bool, string) {
				return block.attempts() > 0, "no produce request yet"
			})

			// A check that nothing happens needs a window: 20 status
			// intervals of 100ms, polled throughout.
			ids := make([]string, len(events))
			for i, ev := range events {
				ids[i] = ev.id
			}
			for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
				if s := e.slot(); s.confirmed >= firstCommit {
					t.Fatalf("broker acked nothing, yet the slot is confirmed at %s, past the commit %s of unacked rows (%d produce attempts blocked)",
						s.confirmed, firstCommit, block.attempts())
				}
				if n := e.queryInt("SELECT count(*) FROM public.outbox WHERE id::text = ANY($1)", ids); n != len(ids) {
					t.Fatalf("%d of %d unacked rows left in the table, want all (ACK_MODE=delete must wait for the ack)", n, len(ids))
				}
				if r := e.unexpectedExit(); r != nil {
					t.Fatalf("%s exited (%s) while the broker was blocked, want it to retry", r.name, r.describeExit())
				}
				time.Sleep(50 * time.Millisecond) // poll interval
			}
			t.Logf("%d produce attempts blocked", block.attempts())

			block.release()
			e.readEvents(time.Minute, outboxTopics, idSet(events))
			e.waitConfirmed(30*time.Second, lastCommit)
			if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
				t.Errorf("%d rows left after the slot confirmed past them, want 0; %s", n, e.describeRows(events))
			}
		})
	}
}

// TestIdleSlotAdvances leaves the relay without outbox traffic while another
// database on the same cluster writes WAL: the slot's confirmed position
// must keep up with the server's WAL, or the idle slot would pin it.
func TestIdleSlotAdvances(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	// The relay's own heartbeat (not part of the documented contract) would move the slot
	// too; pushed out of the test's time, only keepalives can.
	e.startRelay("OUTBOX_RELAY_ACK_MODE=none", "OUTBOX_RELAY_HEARTBEAT_INTERVAL=1h")

	other := objectName(t.Name() + "_other")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pg.CreateDatabase(ctx, other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dropDatabase(t, other) })
	conn, err := pgx.Connect(ctx, pg.URL(other))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE TABLE noise (id bigserial PRIMARY KEY, body text)"); err != nil {
		t.Fatal(err)
	}

	var writes atomic.Int64
	writerCtx, stopWriter := context.WithCancel(ctx)
	writerDone := make(chan error, 1)
	go func() {
		for writerCtx.Err() == nil {
			if _, err := conn.Exec(writerCtx, "INSERT INTO noise (body) SELECT repeat('x', 500) FROM generate_series(1, 20)"); err != nil {
				if writerCtx.Err() == nil {
					writerDone <- err
					return
				}
				break
			}
			writes.Add(1)
		}
		writerDone <- nil
	}()
	defer func() {
		stopWriter()
		if err := <-writerDone; err != nil {
			t.Errorf("writer in %s: %v", other, err)
		}
	}()

	start := e.slot().confirmed
	for round := range 3 {
		// Each round waits for more foreign WAL, then for the slot to pass it.
		w := writes.Load()
		e.waitFor(10*time.Second, "the other database to write", func() (bool, string) {
			return writes.Load() > w+5, fmt.Sprintf("%d writes", writes.Load())
		})
		target := e.currentLSN()
		e.waitConfirmed(10*time.Second, target)
		t.Logf("round %d: slot confirmed past %s (started at %s)", round, target, start)
	}

	if ends := e.endOffsetsTotal(outboxTopics); ends != 0 {
		t.Errorf("%d records produced without outbox traffic, want 0", ends)
	}
}
