package publisher

import (
	"context"
	"runtime"
	"testing"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// BenchmarkPublish publishes batches of 1000 events with 400-byte payloads
// over 100 keys and reports records/s and allocations per record:
//   - kfake: to an in-process broker over TCP that stores the records;
//   - kfake-blackhole: to one that acks without storing them, which leaves
//     mostly the producer's own cost (the broker runs in-process, so its
//     allocations are counted too);
//   - kfake-blackhole-64-partitions: the same over 64 partitions; kafka-go
//     allocates room for BatchSize messages per partition batch, so its
//     garbage grows with the partitions one call touches;
//   - no-broker: the publisher's own work (routing, building the records,
//     chunking) with a producer that does nothing.
func BenchmarkPublish(b *testing.B) {
	const batch = 1000
	events := makeEvents(batch, 100, 400, "order")
	cases := []struct {
		name       string
		partitions int32
		opts       []kfake.Opt // nil: no broker
	}{
		{"kfake", 6, []kfake.Opt{}},
		{"kfake-blackhole", 6, []kfake.Opt{kfake.BlackholeProduce()}},
		{"kfake-blackhole-64-partitions", 64, []kfake.Opt{kfake.BlackholeProduce()}},
		{"no-broker", 0, nil},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			cfg := Config{Brokers: []string{"127.0.0.1:1"}}
			if bc.opts != nil {
				c := newCluster(b, append(bc.opts, kfake.SeedTopics(bc.partitions, "outbox.event.order"))...)
				cfg.Brokers = c.ListenAddrs()
			}
			p := newPublisher(b, cfg, zerolog.Nop())
			if bc.opts == nil {
				p.producer.Close()
				p.producer = nopProducer{}
			}
			ctx := context.Background()
			if failures, err := p.Publish(ctx, events); err != nil || len(failures) != 0 { // warm up: connect, create the topic
				b.Fatalf("Publish: failures at %v, err %v", failureIndexes(failures), err)
			}

			measurePublish(b, p, events)
		})
	}
}

type nopProducer struct{}

func (nopProducer) WriteMessages(context.Context, ...kafka.Message) error { return nil }
func (nopProducer) Close() error                                          { return nil }

// BenchmarkPublishCloudEvents is BenchmarkPublish's no-broker case with the
// CloudEvents headers on and a record time on every event (ce_time is
// formatted per record, into a buffer reused across calls).
func BenchmarkPublishCloudEvents(b *testing.B) {
	const batch = 1000
	events := makeEvents(batch, 100, 400, "order")
	for i := range events {
		events[i].CommitTime = int64(1714979289_123456000 + i*1000)
	}
	p := newPublisher(b, Config{Brokers: []string{"127.0.0.1:1"}, CloudEvents: true, CloudEventsSource: "/orders-service"}, zerolog.Nop())
	p.producer.Close()
	p.producer = nopProducer{}
	ctx := context.Background()
	if failures, err := p.Publish(ctx, events); err != nil || len(failures) != 0 {
		b.Fatalf("Publish: failures at %v, err %v", failureIndexes(failures), err)
	}
	measurePublish(b, p, events)
}

// measurePublish publishes events b.N times and reports records/s and
// allocations per record.
func measurePublish(b *testing.B, p *Publisher, events []outbox.Event) {
	ctx := context.Background()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if failures, err := p.Publish(ctx, events); err != nil || len(failures) != 0 {
			b.Fatalf("Publish: failures at %v, err %v", failureIndexes(failures), err)
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	records := float64(b.N * len(events))
	b.ReportMetric(records/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/records, "allocs/record")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/records, "B/record")
}
