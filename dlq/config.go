package dlq

import (
	"context"
	"crypto/tls"
	"errors"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"

	"github.com/outbox-relay/outbox-relay/internal/kafkaauth"
	"github.com/outbox-relay/outbox-relay/publisher"
)

// DefaultGroup is the consumer group Replay tracks its progress with when
// neither a group nor a reason is given.
const DefaultGroup = "outbox-relay-dlq-replay"

// clientID names this package's connections in broker logs.
const clientID = "outbox-relay-dlq"

// requestTimeout bounds the metadata and offset look-ups that start List and
// Replay, so that an unreachable broker gives an error instead of a hang.
const requestTimeout = 30 * time.Second

// Config says where the dead-letter topic is and how to reach the brokers.
type Config struct {
	// Brokers are the bootstrap brokers, host:port. Required.
	Brokers []string
	// Topic is the dead-letter topic (OUTBOX_RELAY_DLQ_TOPIC). Required.
	Topic string
	// TLS, when set, encrypts every connection.
	TLS *tls.Config
	// SASLMechanism is "", PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with
	// SASLUser and SASLPassword.
	SASLMechanism string
	SASLUser      string
	SASLPassword  string
}

func (cfg Config) check() error {
	if len(cfg.Brokers) == 0 {
		return errors.New("no Kafka brokers given")
	}
	if cfg.Topic == "" {
		return errors.New("no dead-letter topic given")
	}
	_, err := cfg.sasl()
	return err
}

// sasl returns the configured mechanism, nil for none. franz-go's
// mechanisms serve both clients.
func (cfg Config) sasl() (sasl.Mechanism, error) {
	return kafkaauth.Mechanism(cfg.SASLMechanism, cfg.SASLUser, cfg.SASLPassword)
}

// clientOpts are the franz-go options every consuming client starts with.
func (cfg Config) clientOpts() ([]kgo.Opt, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID(clientID),
		kgo.FetchMaxWait(500 * time.Millisecond),
	}
	if cfg.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(cfg.TLS.Clone()))
	}
	mechanism, err := cfg.sasl()
	if err != nil {
		return nil, err
	}
	if mechanism != nil {
		opts = append(opts, kgo.SASL(mechanism))
	}
	return opts, nil
}

// newWriter returns the producer Replay re-publishes with, and a func that
// closes it and its transport.
func (cfg Config) newWriter() (*kafka.Writer, func() error, error) {
	mechanism, err := cfg.sasl()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	transport := &kafka.Transport{
		Context:  ctx, // ends the transport's metadata goroutines on close
		ClientID: clientID,
		TLS:      cfg.TLS,
	}
	if mechanism != nil {
		transport.SASL = kafkaauth.ForKafkaGo(mechanism)
	}
	// The partition the relay would have chosen for the key: the Java
	// client's murmur2, as the publisher uses. A deleted original topic is
	// recreated as the relay's own publisher would.
	w := publisher.NewWriter(kafka.TCP(cfg.Brokers...), transport, &kafka.Murmur2Balancer{}, pollBatch, 0, 10*time.Second)
	w.MaxAttempts = 0 // kafka-go's own retries: Replay has no retry loop of its own
	closeAll := func() error {
		err := w.Close()
		transport.CloseIdleConnections()
		cancel()
		return err
	}
	return w, closeAll, nil
}
