package publisher

import (
	"errors"
	"fmt"
	"github.com/outbox-relay/outbox-relay/outbox"
	"time"

	"github.com/segmentio/kafka-go"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultTopicTemplate = "outbox.event.${aggregatetype}"
	DefaultBatchSize     = 1000
	DefaultBatchBytes    = 1 << 20
	// DefaultMaxMessageBytes is the largest record the producer itself
	// sends: high enough that the broker's max.message.bytes (1048588 by
	// default, often raised) decides, low enough to bound one request.
	DefaultMaxMessageBytes     = 16 << 20
	DefaultWriteTimeout        = 10 * time.Second
	DefaultUnknownTopicTimeout = 30 * time.Second
	DefaultClientID            = "outbox-relay"
	DefaultCompression         = "none"
	DefaultBackoffMin          = 100 * time.Millisecond
	DefaultBackoffMax          = 5 * time.Second
)

// Config configures the Kafka producer. Zero values mean the documented defaults.
type Config struct {
	// Brokers are the bootstrap brokers, host:port. Required.
	Brokers []string
	// TopicTemplate names the topic of an event without a topic of its own;
	// ${aggregatetype} (or Debezium's ${routedByValue}) is replaced by the
	// event's aggregate type; any other placeholder is refused.
	// Default "outbox.event.${aggregatetype}".
	TopicTemplate string
	// BatchSize is the most records one produce call carries; default 1000.
	BatchSize int
	// BatchBytes is the most bytes one produce call carries for records
	// that share it, in kafka-go's accounting; default 1 MiB (1048576). A
	// larger record (up to MaxMessageBytes) is sent on its own. Keep it at
	// or below the topics' max.message.bytes: a batch the broker finds too
	// large is re-sent one record at a time.
	BatchBytes int64
	// MaxMessageBytes is the largest record sent at all; a larger one fails
	// as message_too_large without being sent. Default 16 MiB: the broker's
	// own limit decides below it.
	MaxMessageBytes int64
	// Compression of the produce batches: none, gzip, snappy, lz4 or zstd;
	// default none.
	Compression string
	// ClientID names the connections to the brokers; default "outbox-relay".
	// Ignored with a caller's Transport.
	ClientID string
	// WriteTimeout bounds one attempt: the metadata lookup and the produce
	// request of one batch; default 10s.
	WriteTimeout time.Duration
	// BackoffMin is the wait before the first retry; it doubles with every
	// further failed attempt up to BackoffMax. Defaults 100ms and 5s.
	BackoffMin time.Duration
	BackoffMax time.Duration
	// UnknownTopicTimeout is how long a topic the brokers do not know
	// (UNKNOWN_TOPIC_OR_PARTITION: auto-creation off, or still being
	// created) is retried before its records fail as unknown_topic;
	// default 30s.
	UnknownTopicTimeout time.Duration
	// CloudEvents adds the CloudEvents 1.0 binary-mode headers to every
	// record (ce_specversion, ce_id, ce_source, ce_type, ce_time), with
	// CloudEventsSource as ce_source, which it then requires.
	CloudEvents       bool
	CloudEventsSource string
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
	// A template whose fixed part cannot be a topic name, or with a
	// placeholder nothing fills in, would reject every event; say so at
	// start instead.
	if err := outbox.CheckTopicTemplate(cfg.TopicTemplate); err != nil {
		return cfg, fmt.Errorf("topic template %q: %w: %w", cfg.TopicTemplate, ErrInvalidTopic, err)
	}
	if cfg.BatchSize < 0 || cfg.BatchBytes < 0 || cfg.MaxMessageBytes < 0 || cfg.UnknownTopicTimeout < 0 || cfg.WriteTimeout < 0 || cfg.BackoffMin < 0 || cfg.BackoffMax < 0 {
		return cfg, errors.New("batch size, batch bytes, max message bytes, write timeout and backoffs must not be negative")
	}
	if cfg.CloudEvents && cfg.CloudEventsSource == "" {
		return cfg, &SettingError{Setting: "CloudEventsSource", Err: errors.New("required with CloudEvents")}
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if cfg.Compression == "" {
		cfg.Compression = DefaultCompression
	}
	if _, err := compressionCodec(cfg.Compression); err != nil {
		return cfg, &SettingError{Setting: "Compression", Err: err}
	}
	if cfg.UnknownTopicTimeout == 0 {
		cfg.UnknownTopicTimeout = DefaultUnknownTopicTimeout
	}
	if cfg.ClientID == "" {
		cfg.ClientID = DefaultClientID
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

// compressionCodec returns kafka-go's codec for a Compression value.
func compressionCodec(name string) (kafka.Compression, error) {
	switch name {
	case "none":
		return 0, nil
	case "gzip":
		return kafka.Gzip, nil
	case "snappy":
		return kafka.Snappy, nil
	case "lz4":
		return kafka.Lz4, nil
	case "zstd":
		return kafka.Zstd, nil
	}
	return 0, fmt.Errorf("%q is not one of none, gzip, snappy, lz4, zstd", name)
}

// SettingError is an invalid Config field: Setting is the field's name
// (TLSCAFile, SASLMechanism, Compression), so that the caller can name the
// setting its user sets.
type SettingError struct {
	Setting string
	Err     error
}

func (e *SettingError) Error() string { return e.Setting + ": " + e.Err.Error() }
func (e *SettingError) Unwrap() error { return e.Err }
