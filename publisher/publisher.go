package publisher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
)

// ErrClosed is returned by calls on a closed Publisher.
var ErrClosed = errors.New("publisher closed")

// producer is the part of kafka.Writer the publisher uses. WriteMessages must
// behave like kafka-go's synchronous Writer: it reports kafka.WriteErrors
// (one entry per message) or one error for the whole call.
type producer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
	Close() error
}

// Publisher writes outbox events to Kafka. Its methods may be called from
// several goroutines, but they run one at a time: records of one key are
// only kept in order within a sequence of calls that do not overlap.
type Publisher struct {
	cfg Config
	log zerolog.Logger

	newProducer   func() producer
	stopTransport func() // nil when the caller owns the transport

	// turn is held by the Publish, PublishRaw or Close call that runs; it
	// guards the fields below.
	turn     chan struct{}
	closed   bool
	producer producer
	balancer *balancer
	topics   *topicCache
	records  recordBuilder
}

// New returns a Publisher for cfg. It checks cfg (brokers given, a usable
// topic template) but does not connect: the first Publish does.
func New(cfg Config, log zerolog.Logger) (*Publisher, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("publisher config: %w", err)
	}
	p := &Publisher{
		cfg:      cfg,
		log:      log,
		turn:     make(chan struct{}, 1),
		balancer: &balancer{},
		topics:   newTopicCache(cfg.TopicTemplate),
	}
	transport := cfg.Transport
	if transport == nil {
		ctx, cancel := context.WithCancel(context.Background())
		transport = &kafka.Transport{Context: ctx} // ends its metadata goroutines on cancel
		p.stopTransport = func() {
			transport.CloseIdleConnections()
			cancel()
		}
	}
	addr := kafka.TCP(cfg.Brokers...)
	p.newProducer = func() producer {
		return &kafka.Writer{
			Addr:                   addr,
			Transport:              transport,
			Balancer:               p.balancer,
			RequiredAcks:           kafka.RequireAll, // a Writer{} literal would not wait for acks
			Async:                  false,            // async drops errors
			AllowAutoTopicCreation: true,
			MaxAttempts:            1, // the publisher retries, to keep order and log each retry
			BatchSize:              cfg.BatchSize,
			BatchBytes:             cfg.BatchBytes,
			// kafka-go flushes a partition batch when it is full or after
			// BatchTimeout; each call's batches are complete when queued,
			// and the default of 1s would be a latency floor.
			BatchTimeout: time.Microsecond,
			WriteTimeout: cfg.WriteTimeout,
			ReadTimeout:  cfg.WriteTimeout,
		}
	}
	p.producer = p.newProducer()
	return p, nil
}

// Topic returns the topic an event is routed to (template or override) — used for logs and dead letters.
// The error wraps ErrInvalidTopic when the name is not one Kafka accepts.
func (p *Publisher) Topic(ev *outbox.Event) (string, error) {
	return routeTopic(p.cfg.TopicTemplate, ev)
}

// Publish writes events in order and returns once each is acked or
// permanently failed. Retriable errors (broker down, connection refused,
// leader not available, timeouts, unknown topic while it is being created,
// ...) are retried with exponential backoff (BackoffMin..BackoffMax) until
// ctx is done; each retry is logged at warn with the count and error, never
// with payloads. It returns a non-nil error only when ctx ends before
// everything was settled; the events are then all to be treated as unsent
// (some may have been written). A produce request already in flight when ctx
// ends is waited for, at most WriteTimeout, so that no record of events is
// read after Publish returns.
//
// The failures are sorted by Index. The records of events that do not fail
// are written in order: the records of one key reach their partition in the
// order of events.
func (p *Publisher) Publish(ctx context.Context, events []outbox.Event) ([]Failure, error) {
	if err := p.acquire(ctx); err != nil {
		return nil, err
	}
	defer p.release()
	if p.closed {
		return nil, ErrClosed
	}

	var failures []Failure
	b := &p.records
	b.reset(len(events), countHeaders(events))
	for i := range events {
		ev := &events[i]
		topic, err := p.topics.topic(ev)
		if err != nil {
			failures = append(failures, Failure{Index: i, Reason: ReasonInvalidTopic, Err: err})
			continue
		}
		if f, ok := p.tooLarge(i, b.add(i, topic, ev)); ok {
			b.drop()
			failures = append(failures, f)
		}
	}
	return p.send(ctx, b.msgs, b.indexes, failures)
}

// PublishRaw writes already-built kafka.Messages (used later for dead-letter records) with the same retry and failure rules.
// Each message must name its topic; msgs itself is not modified.
func (p *Publisher) PublishRaw(ctx context.Context, msgs []kafka.Message) ([]Failure, error) {
	if err := p.acquire(ctx); err != nil {
		return nil, err
	}
	defer p.release()
	if p.closed {
		return nil, ErrClosed
	}

	var failures []Failure
	b := &p.records
	b.reset(len(msgs), 0)
	for i := range msgs {
		if err := validTopic(msgs[i].Topic); err != nil {
			failures = append(failures, Failure{Index: i, Reason: ReasonInvalidTopic, Err: err})
			continue
		}
		if f, ok := p.tooLarge(i, &msgs[i]); ok {
			failures = append(failures, f)
			continue
		}
		m := msgs[i]
		m.Partition, m.Offset, m.HighWaterMark = 0, 0, 0 // read-only when writing, says kafka-go
		b.msgs = append(b.msgs, m)
		b.indexes = append(b.indexes, i)
	}
	return p.send(ctx, b.msgs, b.indexes, failures)
}

// Close waits for a running call to return, then releases the producer. It
// does not end a running call: cancel its context first.
func (p *Publisher) Close() error {
	p.turn <- struct{}{}
	defer p.release()
	if p.closed {
		return nil
	}
	p.closed = true
	err := p.producer.Close()
	if p.stopTransport != nil {
		p.stopTransport()
	}
	if err != nil {
		return fmt.Errorf("close kafka writer: %w", err)
	}
	return nil
}

func (p *Publisher) acquire(ctx context.Context) error {
	select {
	case p.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *Publisher) release() { <-p.turn }

// tooLarge fails a record kafka-go would refuse to send: it rejects a whole
// WriteMessages call when one message exceeds BatchBytes.
func (p *Publisher) tooLarge(index int, msg *kafka.Message) (Failure, bool) {
	size := recordSize(msg)
	if size <= p.cfg.BatchBytes {
		return Failure{}, false
	}
	return Failure{
		Index:  index,
		Reason: ReasonMessageTooLarge,
		Err:    fmt.Errorf("record of %d bytes exceeds the batch limit of %d bytes: %w", size, p.cfg.BatchBytes, kafka.MessageSizeTooLarge),
	}, true
}

// send writes msgs in chunks that each make at most one batch per partition,
// settling every chunk, retries included, before the next one starts. So no
// record is ever queued behind a newer record of its partition. indexes[i]
// is the caller's index of msgs[i]; both slices are reordered in place.
func (p *Publisher) send(ctx context.Context, msgs []kafka.Message, indexes []int, failures []Failure) ([]Failure, error) {
	for len(msgs) > 0 {
		n := p.chunkLen(msgs)
		var err error
		failures, err = p.settle(ctx, msgs[:n], indexes[:n], failures)
		if err != nil {
			return nil, err
		}
		msgs, indexes = msgs[n:], indexes[n:]
	}
	if len(failures) > 1 {
		slices.SortFunc(failures, func(a, b Failure) int { return cmp.Compare(a.Index, b.Index) })
	}
	return failures, nil
}

// chunkLen is how many of msgs fit in one WriteMessages call that kafka-go
// turns into at most one batch per partition: BatchSize records and
// BatchBytes bytes, the limits at which it starts a new batch.
func (p *Publisher) chunkLen(msgs []kafka.Message) int {
	var bytes int64
	for i := range msgs {
		if i == p.cfg.BatchSize {
			return i
		}
		bytes += recordSize(&msgs[i])
		if bytes > p.cfg.BatchBytes && i > 0 {
			return i
		}
	}
	return len(msgs)
}

// settle writes one chunk until each of its records is acked or has failed
// permanently, retrying the rest with backoff. It returns an error only when
// ctx ends first.
func (p *Publisher) settle(ctx context.Context, msgs []kafka.Message, indexes []int, failures []Failure) ([]Failure, error) {
	for retry := 1; ; retry++ {
		err := p.write(ctx, msgs)
		if err == nil {
			return failures, nil
		}
		if ctx.Err() != nil {
			return failures, fmt.Errorf("publish %d records: %w", len(msgs), ctx.Err())
		}

		var writeErrs kafka.WriteErrors
		if errors.As(err, &writeErrs) && len(writeErrs) == len(msgs) {
			var n int
			var ctxErr error
			failures, n, err, ctxErr = p.sortOut(ctx, msgs, indexes, writeErrs, failures)
			if ctxErr != nil {
				return failures, ctxErr
			}
			if n == 0 {
				return failures, nil
			}
			msgs, indexes = msgs[:n], indexes[:n]
		} else if c := classify(err); c.permanent() {
			// The call was refused before anything was queued (the
			// metadata of a topic, say), with no word on which record.
			if len(msgs) == 1 {
				return append(failures, Failure{Index: indexes[0], Reason: c.reason, Err: err}), nil
			}
			return p.oneByOne(ctx, msgs, indexes, failures)
		}

		wait := p.backoff(retry)
		p.log.Warn().Int("retry", retry).Int("records", len(msgs)).Str("topic", msgs[0].Topic).
			Dur("backoff", wait).Err(err).Msg("kafka write failed, retrying")
		if err := sleep(ctx, wait); err != nil {
			return failures, fmt.Errorf("publish %d records: %w", len(msgs), err)
		}
	}
}

// sortOut handles the per-record errors of one write: permanent failures
// become Failures (after a culprit search when a batch of several records was
// rejected for something one of them may have caused), and the records to
// retry are moved, in order, to the front of msgs and indexes. It returns
// how many there are and the first of their errors; ctxErr is set when ctx
// ended during a culprit search.
//
// All records of one partition share one batch and so one error: the records
// to retry and those searched one by one are never of the same partition, so
// their relative order does not matter.
func (p *Publisher) sortOut(ctx context.Context, msgs []kafka.Message, indexes []int, writeErrs kafka.WriteErrors, failures []Failure) (_ []Failure, n int, retryErr, ctxErr error) {
	permanent := 0
	for _, err := range writeErrs {
		if err != nil && classify(err).permanent() {
			permanent++
		}
	}
	for i, err := range writeErrs {
		if err == nil {
			continue
		}
		c := classify(err)
		switch {
		case !c.permanent():
			msgs[n], indexes[n] = msgs[i], indexes[i]
			n++
			if retryErr == nil {
				retryErr = err
			}
		case permanent == 1 || c.topicWide:
			// Alone in its batch, or a verdict on the whole topic.
			failures = append(failures, Failure{Index: indexes[i], Reason: c.reason, Err: err})
		default:
			failures, ctxErr = p.settle(ctx, msgs[i:i+1], indexes[i:i+1], failures)
			if ctxErr != nil {
				return failures, 0, nil, ctxErr
			}
		}
	}
	return failures, n, retryErr, nil
}

// oneByOne settles each record on its own, in order.
func (p *Publisher) oneByOne(ctx context.Context, msgs []kafka.Message, indexes []int, failures []Failure) ([]Failure, error) {
	for i := range msgs {
		var err error
		failures, err = p.settle(ctx, msgs[i:i+1], indexes[i:i+1], failures)
		if err != nil {
			return failures, err
		}
	}
	return failures, nil
}

// write makes one attempt at msgs.
func (p *Publisher) write(ctx context.Context, msgs []kafka.Message) error {
	a := startAttempt(ctx, len(msgs), p.cfg.WriteTimeout)
	p.balancer.current = a
	err := p.producer.WriteMessages(a.ctx, msgs...)
	p.balancer.current = nil
	a.finish()
	if a.abandoned() {
		// The context ended in the instant between the last partition
		// choice and the wait: kafka-go still holds this call's batches.
		// Closing the Writer waits for them; nothing may be sent before.
		if cerr := p.producer.Close(); cerr != nil {
			p.log.Warn().Err(cerr).Msg("close abandoned kafka writer")
		}
		p.producer = p.newProducer()
	}
	return err
}

// backoff is the wait before the given retry: BackoffMin doubled per
// earlier retry, at most BackoffMax.
func (p *Publisher) backoff(retry int) time.Duration {
	d := p.cfg.BackoffMin
	for i := 1; i < retry && d < p.cfg.BackoffMax; i++ {
		d *= 2
	}
	return min(d, p.cfg.BackoffMax)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
