package publisher

import (
	"context"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// attempt follows one WriteMessages call so that the call can be abandoned
// while it is safe to abandon, and never after.
//
// kafka-go's Writer uses the context of WriteMessages for the metadata lookup
// of each message and then, once every message has a partition, queues the
// partition batches and waits for them. If the context ends during that wait,
// WriteMessages returns at once but the queued batches are still written
// later (writer.go: WriteMessages, partitionWriter.writeBatch), which would
// let a retry overtake them and let the caller reuse buffers they still read.
//
// So the context handed to kafka-go ends with the publish context or the
// attempt timeout only until the last message has been given its partition
// (the Balancer is called once per message, right after its metadata lookup,
// and is the last step before the batches are queued). From then on the call
// waits for its batches, whose produce requests kafka-go bounds by
// WriteTimeout on its own.
type attempt struct {
	ctx    attemptContext
	cancel context.CancelFunc
	stop   func() bool

	mu        sync.Mutex
	total     int  // messages in the call
	balanced  int  // messages given a partition so far
	committed bool // every message got a partition before the context ended: batches are queued and awaited
	ended     bool // the context ended before that
}

// attemptContext is a context canceled only by its attempt. It reports the
// attempt deadline so that connections used for the metadata lookup get it.
type attemptContext struct {
	context.Context
	deadline time.Time
}

func (c attemptContext) Deadline() (time.Time, bool) { return c.deadline, true }

func startAttempt(ctx context.Context, total int, timeout time.Duration) *attempt {
	a := &attempt{total: total}
	limited, cancelLimited := context.WithTimeout(ctx, timeout)
	deadline, _ := limited.Deadline()
	inner, cancelInner := context.WithCancel(context.WithoutCancel(ctx))
	a.ctx = attemptContext{Context: inner, deadline: deadline}
	a.cancel = cancelInner
	stop := context.AfterFunc(limited, a.end)
	a.stop = func() bool {
		stopped := stop()
		cancelLimited()
		return stopped
	}
	return a
}

// end cancels the attempt unless its batches are already queued.
func (a *attempt) end() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.committed {
		a.ended = true
		a.cancel()
	}
}

// balanced counts a message that was given a partition.
func (a *attempt) balance() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.balanced++
	if a.balanced == a.total && !a.ended {
		a.committed = true
	}
}

// abandoned reports whether kafka-go may still hold batches of this call:
// every message got its partition (so the batches were queued) but the
// context had already ended, so WriteMessages may have returned without
// waiting for them.
func (a *attempt) abandoned() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ended && a.balanced == a.total
}

func (a *attempt) finish() {
	a.stop()
	a.cancel()
}

// balancer is kafka-go's Murmur2Balancer (the Java client's default
// partitioner for keyed records) that also tells the current attempt about
// each message it places.
type balancer struct {
	murmur2 kafka.Murmur2Balancer
	current *attempt // set for the duration of each WriteMessages call
}

func (b *balancer) Balance(msg kafka.Message, partitions ...int) int {
	if b.current != nil {
		b.current.balance()
	}
	if len(partitions) == 0 {
		// A topic caught without partitions (still being created): kafka-go
		// would divide by zero. Partition 0 fails as unknown and is retried.
		return 0
	}
	return b.murmur2.Balance(msg, partitions...)
}
