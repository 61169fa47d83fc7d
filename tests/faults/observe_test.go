package faults

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// sample is one observation of the slot: its confirmed position, and the
// end offset of every partition read right after it. A record acked before
// the slot was confirmed at confirmed has an offset below ends.
type sample struct {
	at        time.Time
	confirmed outbox.LSN
	ends      map[devenv.TopicPartition]int64
}

// sampler reads the slot's confirmed_flush_lsn and then the brokers' end
// offsets every 100 ms, while the scenario runs. Failed reads (the server
// or the broker down) are skipped.
type sampler struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	samples []sample
}

func startSampler(slot string, brokers []string) *sampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &sampler{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if conn == nil || conn.IsClosed() {
				c, err := pgx.Connect(ctx, pg.URL("postgres"))
				if err != nil {
					continue
				}
				conn = c
			}
			if smp, ok := s.take(ctx, conn, slot, brokers); ok {
				s.mu.Lock()
				s.samples = append(s.samples, smp)
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *sampler) take(ctx context.Context, conn *pgx.Conn, slot string, brokers []string) (sample, bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var confirmed *string
	err := conn.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&confirmed)
	if err != nil || confirmed == nil {
		if err != nil && err != pgx.ErrNoRows {
			conn.Close(ctx)
		}
		return sample{}, false
	}
	lsn, err := outbox.ParseLSN(*confirmed)
	if err != nil {
		return sample{}, false
	}
	ends, err := devenv.EndOffsets(ctx, brokers, []string{".*"})
	if err != nil {
		return sample{}, false
	}
	return sample{at: time.Now(), confirmed: lsn, ends: ends}, true
}

// stop ends sampling and returns the samples.
func (s *sampler) stop() []sample {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}

// consumer reads every topic of the scenario's cluster from the start, as
// an independent consumer, for as long as the scenario runs.
type consumer struct {
	cl     *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	records []*kgo.Record // per partition in offset order
	ids     map[string]bool
}

func startConsumer(brokers []string) (*consumer, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeRegex(),
		kgo.ConsumeTopics(`^outbox\.`, `^custom\.`, `^missing\.`),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.MetadataMinAge(100*time.Millisecond),
		kgo.MetadataMaxAge(time.Second),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &consumer{cl: cl, cancel: cancel, done: make(chan struct{}), ids: make(map[string]bool)}
	go func() {
		defer close(c.done)
		for ctx.Err() == nil {
			fetches := cl.PollFetches(ctx)
			c.mu.Lock()
			fetches.EachRecord(func(r *kgo.Record) {
				c.records = append(c.records, r)
				c.ids[recordID(r)] = true
			})
			c.mu.Unlock()
		}
	}()
	return c, nil
}

func (c *consumer) stop() {
	c.cancel()
	<-c.done
	c.cl.Close()
}

// has reports whether a record with id was read.
func (c *consumer) has(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ids[id]
}

// snapshot returns the records read so far.
func (c *consumer) snapshot() []*kgo.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*kgo.Record(nil), c.records...)
}

// recordID is the value of the record's id header.
func recordID(r *kgo.Record) string {
	for _, h := range r.Headers {
		if h.Key == "id" {
			return string(h.Value)
		}
	}
	return ""
}
