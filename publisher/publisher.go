package publisher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/kafkaauth"
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
	stopTransport func()        // nil when the caller owns the transport
	check         *kafka.Client // the producer's own settings, for Check

	// turn is held by the Publish, PublishRaw or Close call that runs; it
	// guards the fields below.
	turn     chan struct{}
	closed   bool
	producer producer
	balancer *balancer
	topics   *topicCache
	unknown  *unknownTopics
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
		unknown:  newUnknownTopics(cfg.UnknownTopicTimeout),
	}
	if cfg.CloudEvents {
		p.records.cloudEvents = []byte(cfg.CloudEventsSource)
	}
	transport := cfg.Transport
	if transport == nil {
		t, err := newTransport(cfg)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		// Its Context ends the transport's metadata goroutines on Close.
		t.Context = ctx
		transport = t
		p.stopTransport = func() {
			transport.CloseIdleConnections()
			cancel()
		}
	}
	addr := kafka.TCP(cfg.Brokers...)
	p.check = &kafka.Client{Addr: addr, Transport: transport}
	p.newProducer = func() producer {
		w := NewWriter(addr, transport, p.balancer, cfg.BatchSize, max(cfg.BatchBytes, cfg.MaxMessageBytes), cfg.WriteTimeout)
		// kafka-go refuses a whole call holding one message above its
		// BatchBytes: it is at least MaxMessageBytes, and chunkLen keeps
		// the calls within cfg.BatchBytes.
		w.Compression, _ = compressionCodec(cfg.Compression)
		return w
	}
	p.producer = p.newProducer()
	return p, nil
}

// newTransport builds the transport of cfg's TLS and SASL settings. Its
// errors name the setting and never contain a secret.
func newTransport(cfg Config) (*kafka.Transport, error) {
	tlsConfig, err := kafkaauth.TLSConfig(cfg.TLS, cfg.TLSCAFile, cfg.TLSSkipVerify)
	if err != nil {
		return nil, &SettingError{Setting: "TLSCAFile", Err: err}
	}
	mechanism, err := kafkaauth.Mechanism(cfg.SASLMechanism, cfg.SASLUser, cfg.SASLPassword)
	if err != nil {
		return nil, &SettingError{Setting: "SASLMechanism", Err: err}
	}
	t := &kafka.Transport{ClientID: cfg.ClientID, TLS: tlsConfig}
	if mechanism != nil {
		t.SASL = kafkaauth.ForKafkaGo(mechanism)
	}
	return t, nil
}

// NewWriter returns the synchronous kafka.Writer every producer of this
// module uses. A kafka.Writer{} literal would be wrong in several quiet ways,
// so the settings are written once here:
//   - RequiredAcks all: the zero value does not wait for acks;
//   - not Async: async drops errors;
//   - MaxAttempts 1: the caller retries, to keep order and log each retry;
//   - BatchTimeout 1µs: kafka-go flushes a partition batch when it is full
//     or after BatchTimeout; each call's batches are complete when queued,
//     and the default of 1s would be a latency floor.
//
// balancer nil means kafka-go's round robin; zero sizes mean its defaults.
func NewWriter(addr net.Addr, transport kafka.RoundTripper, balancer kafka.Balancer, batchSize int, batchBytes int64, timeout time.Duration) *kafka.Writer {
	return &kafka.Writer{
		Addr:                   addr,
		Transport:              transport,
		Balancer:               balancer,
		RequiredAcks:           kafka.RequireAll,
		Async:                  false,
		AllowAutoTopicCreation: true,
		MaxAttempts:            1,
		BatchSize:              batchSize,
		BatchBytes:             batchBytes,
		BatchTimeout:           time.Microsecond,
		WriteTimeout:           timeout,
		ReadTimeout:            timeout,
	}
}

// BatchLimits returns the most records and bytes one produce call carries.
func (p *Publisher) BatchLimits() (records int, bytes int64) {
	return p.cfg.BatchSize, p.cfg.BatchBytes
}

// Topic returns the topic an event is routed to (template or override) — used for logs and dead letters.
// The error wraps ErrInvalidTopic when the name is not one Kafka accepts; the
// name is returned all the same.
func (p *Publisher) Topic(ev *outbox.Event) (string, error) {
	return routeTopic(p.cfg.TopicTemplate, ev)
}

// Publish writes events in order and returns once each is acked or
// permanently failed. Retriable errors (broker down, connection refused,
// leader not available, timeouts, ...) are retried with exponential backoff
// (BackoffMin..BackoffMax) until ctx is done, except an unknown topic: it is
// retried for UnknownTopicTimeout, then its records fail as unknown_topic; each retry is logged at warn with the count and error, never
// with payloads. It returns a non-nil error only when ctx ends before
// everything was settled; the events are then all to be treated as unsent
// (some may have been written). A produce request already in flight when ctx
// ends is waited for, at most WriteTimeout, so that no record of events is
// read after Publish returns.
//
// The failures are sorted by Index. The records of events that do not fail
// are written in order: the records of one key reach their partition in the
// order of events.
func (p *Publisher) Publish(ctx context.Context, events []outbox.Event) ([]outbox.Failure, error) {
	if err := p.takeTurn(ctx); err != nil {
		return nil, err
	}
	defer p.release()

	var failures []outbox.Failure
	b := &p.records
	b.reset(len(events), countHeaders(events))
	for i := range events {
		ev := &events[i]
		topic, err := p.topics.topic(ev)
		if err != nil {
			failures = append(failures, outbox.Failure{Index: i, Reason: outbox.ReasonInvalidTopic, Err: err})
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
func (p *Publisher) PublishRaw(ctx context.Context, msgs []kafka.Message) ([]outbox.Failure, error) {
	if err := p.takeTurn(ctx); err != nil {
		return nil, err
	}
	defer p.release()

	var failures []outbox.Failure
	b := &p.records
	b.reset(len(msgs), 0)
	for i := range msgs {
		if err := validTopic(msgs[i].Topic); err != nil {
			failures = append(failures, outbox.Failure{Index: i, Reason: outbox.ReasonInvalidTopic, Err: err})
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

// takeTurn waits for the publisher's turn and refuses a closed publisher or
// an ended ctx; on success the caller must release.
func (p *Publisher) takeTurn(ctx context.Context) error {
	if err := p.acquire(ctx); err != nil {
		return err
	}
	if p.closed {
		p.release()
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		p.release()
		return err
	}
	return nil
}

// tooLarge fails a record above MaxMessageBytes without sending it (kafka-go
// would reject the whole WriteMessages call holding it).
func (p *Publisher) tooLarge(index int, msg *kafka.Message) (outbox.Failure, bool) {
	size := recordSize(msg)
	if size <= p.cfg.MaxMessageBytes {
		return outbox.Failure{}, false
	}
	return outbox.Failure{
		Index:  index,
		Reason: outbox.ReasonMessageTooLarge,
		Err:    fmt.Errorf("record of %d bytes exceeds the producer's max message bytes of %d: %w", size, p.cfg.MaxMessageBytes, kafka.MessageSizeTooLarge),
	}, true
}
