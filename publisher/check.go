package publisher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Check asks the brokers for the cluster's metadata with the producer's own
// connection settings (TLS, SASL) until they answer or within ends, so that
// a start against an unreachable cluster or with refused credentials fails
// with a precise error before the relay creates or reads anything.
func (p *Publisher) Check(ctx context.Context, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	brokers := strings.Join(p.cfg.Brokers, ",")
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
		_, err := p.check.Metadata(ctx, &kafka.MetadataRequest{})
		switch {
		case err == nil:
			return nil
		case errors.Is(err, kafka.SASLAuthenticationFailed):
			return fmt.Errorf("kafka brokers %s: %w: %w", brokers, outbox.ErrAuthentication, err)
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			var dial *net.OpError
			if p.cfg.SASLMechanism != "" && !(errors.As(err, &dial) && dial.Op == "dial") {
				// The brokers accept connections but end them: with SASL on,
				// that is how some brokers refuse credentials.
				return fmt.Errorf("kafka brokers %s (OUTBOX_RELAY_KAFKA_BROKERS) accepted connections but gave no answer within %s, "+
					"probably a SASL authentication failure: check OUTBOX_RELAY_KAFKA_SASL_MECHANISM (%s), OUTBOX_RELAY_KAFKA_SASL_USER (%s) "+
					"and the password: %w", brokers, within, p.cfg.SASLMechanism, p.cfg.SASLUser, err)
			}
			return fmt.Errorf("kafka brokers %s (OUTBOX_RELAY_KAFKA_BROKERS) did not answer within %s: %w", brokers, within, err)
		}
	}
}
