package relay

import (
	"context"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

func queueOf(sizes ...int) []*batch {
	q := make([]*batch, len(sizes))
	for i, n := range sizes {
		q[i] = &batch{events: make([]outbox.Event, n), bytes: int64(n) * 100, txn: uint64(i)}
	}
	return q
}

// A publish call takes batches oldest first until they hold the call's
// records (or bytes), and leaves the rest queued with the wake-up armed.
func TestTakeBoundsAPublishCall(t *testing.T) {
	p := &pipeline{}
	wakeup := make(chan struct{}, 1)
	queue := queueOf(300, 300, 300, 300, 300, 300)
	taken, err := p.take(context.Background(), &queue, wakeup, 1000, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if len(taken) != 4 || taken[0].txn != 0 || taken[3].txn != 3 {
		t.Fatalf("took %d batches starting at txn %d, want the 4 oldest", len(taken), taken[0].txn)
	}
	if len(queue) != 2 || queue[0].txn != 4 {
		t.Fatalf("left %d batches, want the 2 newest", len(queue))
	}
	select {
	case <-wakeup:
	default:
		t.Fatal("batches left queued without a wake-up: they would wait for the next hand-over")
	}

	// The byte bound, and at least one batch however large.
	queue = queueOf(5000, 10)
	if taken, _ = p.take(context.Background(), &queue, wakeup, 1000, 1<<30); len(taken) != 1 || len(queue) != 1 {
		t.Fatalf("took %d, left %d; want one oversized batch taken alone", len(taken), len(queue))
	}
	queue = queueOf(10, 10, 10)
	if taken, _ = p.take(context.Background(), &queue, wakeup, 1000, 1500); len(taken) != 2 {
		t.Fatalf("took %d batches of 1,000 bytes with a 1,500-byte bound, want 2", len(taken))
	}

	// The acker takes everything.
	queue = queueOf(300, 300, 300, 300, 300, 300)
	if taken, _ = p.take(context.Background(), &queue, wakeup, 0, 0); len(taken) != 6 || len(queue) != 0 {
		t.Fatalf("unbounded take took %d and left %d, want all 6", len(taken), len(queue))
	}
}
