package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Producer sends records to Kafka; package publisher builds and sends them,
// so that the relay never sees a Kafka record. Its calls are never
// concurrent.
type Producer interface {
	Publish(ctx context.Context, events []outbox.Event) ([]outbox.Failure, error)
	PublishDeadLetters(ctx context.Context, topic string, dead []outbox.DeadLetter) ([]outbox.Failure, error)
	// Topic returns the topic ev is routed to (also when the name is invalid).
	Topic(ev *outbox.Event) (string, error)
	// BatchLimits are the most records and bytes one produce call carries.
	BatchLimits() (records int, bytes int64)
	// Check returns once a broker answered with the producer's own
	// settings, or with why none did within the given time.
	Check(ctx context.Context, within time.Duration) error
	Close() error
}

// NewProducer builds the relay's Producer; onRetry is called with the kind of
// every retried broker error.
type NewProducer func(onRetry func(kind string)) (Producer, error)

// deliverer publishes events and dead-letters the ones that cannot go to
// their topic. The stream's pipeline, the backfill and the reconciler use it.
type deliverer struct {
	log      zerolog.Logger
	pub      Producer
	metrics  *Metrics
	dlqTopic string
	// lease fences every produce call by the leader lock (nil: unfenced).
	lease *leaderLease
}

// deliver publishes events to their topics and the ones that cannot go
// there (decode problems, permanent broker rejections) to the dead-letter
// topic. It returns how many reached their own topic. Every event is settled
// when it returns nil: either acked in its topic or acked as a dead letter.
func (d *deliverer) deliver(ctx context.Context, events []outbox.Event) (int, error) {
	var dead []outbox.DeadLetter
	toPublish := events
	var index []int // toPublish position → events position, when filtered
	for i := range events {
		events[i].Kept = nil
		if events[i].Problem != "" {
			if index == nil {
				toPublish, index = make([]outbox.Event, 0, len(events)), make([]int, 0, len(events))
				for j := range i {
					toPublish, index = append(toPublish, events[j]), append(index, j)
				}
			}
			dead = append(dead, outbox.DeadLetter{Event: &events[i], Reason: outbox.ReasonDecodeError, Error: events[i].Problem})
			continue
		}
		if index != nil {
			toPublish, index = append(toPublish, events[i]), append(index, i)
		}
	}
	if err := d.lease.wait(ctx); err != nil {
		return 0, err
	}
	failures, err := d.pub.Publish(ctx, toPublish)
	if err != nil {
		return 0, fmt.Errorf("publish %d records: %w", len(toPublish), err)
	}
	for _, f := range failures {
		i := f.Index
		if index != nil {
			i = index[i]
		}
		d.metrics.brokerErrors.WithLabelValues(f.Reason).Inc()
		dead = append(dead, outbox.DeadLetter{Event: &events[i], Reason: f.Reason, Error: f.Err.Error()})
	}
	if len(dead) == 0 {
		return len(events), nil
	}
	if err := d.deadLetter(ctx, dead); err != nil {
		return 0, err
	}
	return len(events) - len(dead), nil
}

// DeadLetter implements reconciler.DeadLetterer.
func (d *deliverer) DeadLetter(ctx context.Context, events []outbox.Event, reason, errText string) error {
	dead := make([]outbox.DeadLetter, len(events))
	for i := range events {
		dead[i] = outbox.DeadLetter{Event: &events[i], Reason: reason, Error: errText}
	}
	return d.deadLetter(ctx, dead)
}

// deadLetter publishes records to the dead-letter topic. If that topic
// rejects one too, the relay stops: it never skips a row.
func (d *deliverer) deadLetter(ctx context.Context, dead []outbox.DeadLetter) error {
	for i := range dead {
		// An invalid name is kept too: it says what the row asked for.
		dead[i].OriginalTopic, _ = d.pub.Topic(dead[i].Event)
	}
	if err := d.lease.wait(ctx); err != nil {
		return err
	}
	failures, err := d.pub.PublishDeadLetters(ctx, d.dlqTopic, dead)
	if err != nil {
		return fmt.Errorf("publish %d dead letters to %q: %w", len(dead), d.dlqTopic, err)
	}
	if len(failures) > 0 {
		f := failures[0]
		dl := dead[f.Index]
		return fatalf("dead-letter topic %q rejected the record of row id=%s (lsn %s, dead-lettered for %s) permanently (%s): %w",
			d.dlqTopic, dl.Event.ID, dl.Event.LSN, dl.Reason, f.Reason, f.Err)
	}
	for _, dl := range dead {
		if dl.Partial() {
			// The record does not carry the row whole: the acker keeps
			// the row in the dead-letter table before it is deleted.
			dl.Event.Kept = &outbox.Kept{Reason: dl.Reason, Error: dl.Error}
		}
		d.metrics.deadLettered.WithLabelValues(dl.Reason).Inc()
		e := d.log.Warn()
		if dl.Event.LSN != 0 {
			e = e.Str("lsn", dl.Event.LSN.String())
		}
		e.Str("id", string(dl.Event.ID)).Str("reason", dl.Reason).
			Str("original_topic", dl.OriginalTopic).Str("dlq_topic", d.dlqTopic).Str("error", dl.Error).
			Msg("row sent to the dead-letter topic")
	}
	return nil
}
