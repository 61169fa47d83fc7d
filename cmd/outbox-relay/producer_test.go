package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/relay"
)

// TestProducerErrorsNameTheVariable: a setting only the producer can check
// (the CA file's contents) is reported under the variable a user sets.
func TestProducerErrorsNameTheVariable(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"missing CA file", []string{"OUTBOX_RELAY_KAFKA_TLS=true", "OUTBOX_RELAY_KAFKA_TLS_CA_FILE=/nonexistent/ca.pem"}, "OUTBOX_RELAY_KAFKA_TLS_CA_FILE"},
		{"CA file without PEM", []string{"OUTBOX_RELAY_KAFKA_TLS=true", "OUTBOX_RELAY_KAFKA_TLS_CA_FILE=" + notPEM}, "OUTBOX_RELAY_KAFKA_TLS_CA_FILE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := append([]string{"OUTBOX_RELAY_PG_URL=postgres://h/db", "OUTBOX_RELAY_KAFKA_BROKERS=127.0.0.1:1"}, tt.env...)
			cfg, err := relay.LoadConfig(env, true)
			if err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
			_, err = newProducer(cfg, zerolog.Nop())(nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("producer error = %v, want one naming %s", err, tt.want)
			}
		})
	}
	// A mechanism the relay's check lets through but the producer refuses.
	cfg, err := relay.LoadConfig([]string{"OUTBOX_RELAY_PG_URL=postgres://h/db", "OUTBOX_RELAY_KAFKA_BROKERS=127.0.0.1:1"}, true)
	if err != nil {
		t.Fatal(err)
	}
	cfg.KafkaSASLMechanism = "GSSAPI"
	if _, err := newProducer(cfg, zerolog.Nop())(nil); err == nil || !strings.Contains(err.Error(), "OUTBOX_RELAY_KAFKA_SASL_MECHANISM") {
		t.Errorf("producer error = %v, want one naming OUTBOX_RELAY_KAFKA_SASL_MECHANISM", err)
	}
}
