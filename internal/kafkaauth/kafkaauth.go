// Package kafkaauth turns the relay's Kafka TLS and SASL settings into what
// the two Kafka clients take: a *tls.Config, a franz-go SASL mechanism, and
// the same mechanism adapted for kafka-go (whose own SCRAM package would need
// another module). It never logs, and its errors never contain a secret.
package kafkaauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	kafkasasl "github.com/segmentio/kafka-go/sasl"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// TLSConfig returns nil when TLS is off, else a config verifying the brokers
// against caFile (PEM; the system roots when empty).
func TLSConfig(enabled bool, caFile string, skipVerify bool) (*tls.Config, error) {
	if !enabled {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: skipVerify}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read Kafka CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no PEM certificate in Kafka CA file %s", caFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// Mechanism returns the SASL mechanism named (PLAIN, SCRAM-SHA-256,
// SCRAM-SHA-512), nil for "".
func Mechanism(name, user, password string) (sasl.Mechanism, error) {
	switch strings.ToUpper(name) {
	case "":
		return nil, nil
	case "PLAIN":
		return plain.Auth{User: user, Pass: password}.AsMechanism(), nil
	case "SCRAM-SHA-256":
		return scram.Auth{User: user, Pass: password}.AsSha256Mechanism(), nil
	case "SCRAM-SHA-512":
		return scram.Auth{User: user, Pass: password}.AsSha512Mechanism(), nil
	default:
		return nil, fmt.Errorf("SASL mechanism %q is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512", name)
	}
}

// ForKafkaGo adapts a franz-go mechanism to kafka-go's interface; the two
// differ only in names.
func ForKafkaGo(m sasl.Mechanism) kafkasasl.Mechanism { return kafkaMechanism{m} }

type kafkaMechanism struct{ m sasl.Mechanism }

func (k kafkaMechanism) Name() string { return k.m.Name() }

func (k kafkaMechanism) Start(ctx context.Context) (kafkasasl.StateMachine, []byte, error) {
	host := ""
	if md := kafkasasl.MetadataFromContext(ctx); md != nil {
		host = md.Host
	}
	session, initial, err := k.m.Authenticate(ctx, host)
	if err != nil {
		return nil, nil, err
	}
	return kafkaSession{session}, initial, nil
}

type kafkaSession struct{ s sasl.Session }

func (k kafkaSession) Next(_ context.Context, challenge []byte) (bool, []byte, error) {
	return k.s.Challenge(challenge)
}
