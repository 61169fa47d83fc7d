package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// consumer reads the bench topic from the start and records when each
// event of the run was read, by the seq in its id header.
type consumer struct {
	cl       *kgo.Client
	cancel   context.CancelFunc
	done     chan struct{}
	base     time.Time
	recvAt   []int64 // nanoseconds since base; written by the consume goroutine only
	warm     atomic.Int64
	received atomic.Int64
	events   int
}

func startConsumer(ctx context.Context, brokers []string, events int, base time.Time) (*consumer, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(topicName),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// The broker answers a fetch as soon as a record arrives; the wait
		// only bounds an empty fetch.
		kgo.FetchMaxWait(50*time.Millisecond),
		kgo.MetadataMinAge(100*time.Millisecond),
	)
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &consumer{cl: cl, cancel: cancel, done: make(chan struct{}), base: base, recvAt: make([]int64, events), events: events}
	go c.consume(ctx)
	return c, nil
}

func (c *consumer) consume(ctx context.Context) {
	defer close(c.done)
	for ctx.Err() == nil {
		fetches := c.cl.PollFetches(ctx)
		now := int64(time.Since(c.base))
		fetches.EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key != "id" {
					continue
				}
				tag, seq, ok := parseEventID(h.Value)
				switch {
				case !ok:
				case tag == warmTag:
					c.warm.Add(1)
				case tag == runTag && seq < c.events && c.recvAt[seq] == 0:
					c.recvAt[seq] = now
					c.received.Add(1)
				}
			}
		})
	}
}

// waitWarm waits until n warm-up events were read.
func (c *consumer) waitWarm(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for c.warm.Load() < int64(n) {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d warm-up events reached the consumer within %s", c.warm.Load(), n, timeout)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// waitAll waits, at most timeout, until every event of the run was read.
func (c *consumer) waitAll(ctx context.Context, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for c.received.Load() < int64(c.events) && time.Now().Before(deadline) {
		if sleep(ctx, 20*time.Millisecond) != nil {
			return
		}
	}
}

// close stops the consumer and returns the read times; it may be called
// more than once.
func (c *consumer) close() []int64 {
	c.cancel()
	<-c.done
	c.cl.Close()
	return c.recvAt
}
