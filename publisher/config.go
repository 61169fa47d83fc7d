package publisher

import (
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultTopicTemplate = "outbox.event.${aggregatetype}"
	DefaultBatchSize     = 1000
	DefaultBatchBytes    = 1 << 20 // Kafka's default max.message.bytes, give or take the batch header
	DefaultWriteTimeout  = 10 * time.Second
	DefaultBackoffMin    = 100 * time.Millisecond
	DefaultBackoffMax    = 5 * time.Second
)

// aggregateTypePlaceholder is replaced in the topic template by the event's
// aggregate type.
const aggregateTypePlaceholder = "${aggregatetype}"

// Config configures the Kafka producer. Zero values mean the documented defaults.
type Config struct {
	// Brokers are the bootstrap brokers, host:port. Required.
	Brokers []string
	// TopicTemplate names the topic of an event without a topic of its own;
	// ${aggregatetype} is replaced by the event's aggregate type.
	// Default "outbox.event.${aggregatetype}".
	TopicTemplate string
	// BatchSize is the most records one produce call carries; default 1000.
	BatchSize int
	// BatchBytes is the most bytes one produce call carries, and so the
	// largest record that can be sent, in kafka-go's accounting; default
	// 1 MiB (1048576). Keep it at or below the topics' max.message.bytes:
	// a batch the broker finds too large is re-sent one record at a time.
	BatchBytes int64
	// WriteTimeout bounds one attempt: the metadata lookup and the produce
	// request of one batch; default 10s.
	WriteTimeout time.Duration
	// BackoffMin is the wait before the first retry; it doubles with every
	// further failed attempt up to BackoffMax. Defaults 100ms and 5s.
	BackoffMin time.Duration
	BackoffMax time.Duration
	// OnRetry, when set, is called with the kind (errorKind) of the error of
	// every write that is retried (for metrics); it must not block.
	OnRetry func(kind string)
	// TLS turns on TLS to the brokers, verified against TLSCAFile (PEM; the
	// system roots when empty) unless TLSSkipVerify.
	TLS           bool
	TLSCAFile     string
	TLSSkipVerify bool
	// SASLMechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; "" for none)
	// authenticates the connections as SASLUser with SASLPassword.
	SASLMechanism string
	SASLUser      string
	SASLPassword  string
	// Transport, when set, is used as is (the TLS and SASL settings are then
	// ignored) and stays the caller's to close; nil means a transport built
	// from them and owned (and closed) by the Publisher.
	Transport *kafka.Transport
}

// withDefaults returns cfg with the zero fields set to their defaults, or an
// error naming the first invalid field.
func (cfg Config) withDefaults() (Config, error) {
	if len(cfg.Brokers) == 0 {
		return cfg, errors.New("brokers: none given")
	}
	for _, b := range cfg.Brokers {
		if b == "" {
			return cfg, errors.New("brokers: empty address")
		}
	}
	if cfg.TopicTemplate == "" {
		cfg.TopicTemplate = DefaultTopicTemplate
	}
	// A template whose fixed part cannot be a topic name would reject every
	// event; say so at start instead.
	if err := validTopic(expandTemplate(cfg.TopicTemplate, []byte("x"))); err != nil {
		return cfg, fmt.Errorf("topic template %q: %w", cfg.TopicTemplate, err)
	}
	if cfg.BatchSize < 0 || cfg.BatchBytes < 0 || cfg.WriteTimeout < 0 || cfg.BackoffMin < 0 || cfg.BackoffMax < 0 {
		return cfg, errors.New("batch size, batch bytes, write timeout and backoffs must not be negative")
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.BatchBytes == 0 {
		cfg.BatchBytes = DefaultBatchBytes
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.BackoffMin == 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		return cfg, fmt.Errorf("backoff max %s is below backoff min %s", cfg.BackoffMax, cfg.BackoffMin)
	}
	return cfg, nil
}
