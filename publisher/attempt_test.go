package publisher

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
)

func TestBackoff(t *testing.T) {
	p := &Publisher{cfg: Config{BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := p.backoff(i + 1); got != w*time.Millisecond {
			t.Errorf("backoff(%d) = %s, want %s", i+1, got, w*time.Millisecond)
		}
	}
	if got := p.backoff(1 << 20); got != time.Second {
		t.Errorf("backoff(1<<20) = %s, want 1s", got)
	}
}

// TestAttempt checks when an attempt's context may end: until every message
// has its partition, and never after.
func TestAttempt(t *testing.T) {
	t.Run("canceled before the partitions are chosen", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		a := startAttempt(parent, 2, time.Minute)
		defer a.finish()
		a.balance()
		cancel()
		waitDone(t, a.ctx)
		if a.abandoned() {
			t.Errorf("abandoned = true with 1 of 2 messages placed, want false: nothing was queued")
		}
		a.balance() // the last message was placed as the context ended
		if !a.abandoned() {
			t.Errorf("abandoned = false after every message was placed on an ended context, want true")
		}
	})
	t.Run("canceled after the partitions are chosen", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		a := startAttempt(parent, 2, time.Minute)
		defer a.finish()
		a.balance()
		a.balance()
		cancel()
		a.end() // what the cancel triggers, run here so that it has surely run
		if err := a.ctx.Err(); err != nil {
			t.Errorf("attempt context ended (%v) after its batches were queued, want it alive", err)
		}
		if a.abandoned() {
			t.Errorf("abandoned = true, want false")
		}
	})
	t.Run("attempt timeout", func(t *testing.T) {
		a := startAttempt(context.Background(), 1, 5*time.Millisecond)
		defer a.finish()
		if d, ok := a.ctx.Deadline(); !ok || time.Until(d) > 5*time.Millisecond {
			t.Errorf("deadline = %v, %t; want within 5ms", d, ok)
		}
		waitDone(t, a.ctx)
	})
}

func waitDone(t *testing.T, ctx context.Context) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("attempt context did not end")
	}
}

// cancelingProducer behaves like kafka-go's Writer when the context ends
// between the last message's metadata lookup and the wait: every message
// gets its partition (so kafka-go has queued the batches), and the call
// returns early with the context's error.
type cancelingProducer struct {
	balancer *balancer
	cancel   context.CancelFunc
	closed   bool
}

func (c *cancelingProducer) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	for i, m := range msgs {
		if i == len(msgs)-1 {
			c.cancel()
			<-ctx.Done()
		}
		c.balancer.Balance(m, 0, 1, 2)
	}
	return ctx.Err()
}

func (c *cancelingProducer) Close() error {
	c.closed = true
	return nil
}

// TestAbandonedWriterIsClosed checks that a Writer that may still hold
// batches of an abandoned call is closed (which waits for them) before
// Publish returns, and replaced.
func TestAbandonedWriterIsClosed(t *testing.T) {
	p, err := New(Config{Brokers: []string{"127.0.0.1:1"}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p.producer.Close()
	abandoned := &cancelingProducer{balancer: p.balancer, cancel: cancel}
	p.producer = abandoned
	created := 0
	p.newProducer = func() producer {
		created++
		return nopProducer{}
	}

	_, err = p.Publish(ctx, makeEvents(3, 2, 10, "order"))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Publish error = %v, want context.Canceled", err)
	}
	if !abandoned.closed || created != 1 {
		t.Errorf("abandoned writer closed = %t, writers created = %d; want true, 1", abandoned.closed, created)
	}
	if p.producer != (nopProducer{}) {
		t.Errorf("producer = %T, want the new one", p.producer)
	}
}
