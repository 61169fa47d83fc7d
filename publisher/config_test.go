package publisher

import (
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" for success
	}{
		{"defaults", Config{Brokers: []string{"b:9092"}}, ""},
		{"no brokers", Config{}, "brokers"},
		{"empty broker", Config{Brokers: []string{"b:9092", ""}}, "brokers"},
		{"template without placeholder", Config{Brokers: []string{"b"}, TopicTemplate: "events"}, ""},
		{"Debezium's template", Config{Brokers: []string{"b"}, TopicTemplate: "outbox.event.${routedByValue}"}, ""},
		{"unknown placeholder", Config{Brokers: []string{"b"}, TopicTemplate: "outbox.${aggregateType}"}, "unknown placeholder ${aggregateType}"},
		{"unterminated placeholder", Config{Brokers: []string{"b"}, TopicTemplate: "outbox.${aggregatetype"}, "unterminated placeholder"},
		{"template with a space", Config{Brokers: []string{"b"}, TopicTemplate: "out box.${aggregatetype}"}, "topic template"},
		{"template too long", Config{Brokers: []string{"b"}, TopicTemplate: strings.Repeat("t", 249) + "${aggregatetype}"}, "topic template"},
		{"negative batch size", Config{Brokers: []string{"b"}, BatchSize: -1}, "negative"},
		{"compression", Config{Brokers: []string{"b"}, Compression: "brotli"}, "Compression"},
		{"negative max message bytes", Config{Brokers: []string{"b"}, MaxMessageBytes: -1}, "negative"},
		{"backoff max below min", Config{Brokers: []string{"b"}, BackoffMin: time.Second, BackoffMax: time.Millisecond}, "backoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.cfg, zerolog.Nop())
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v, want nil", err)
				}
				p.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New error = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	got, err := Config{Brokers: []string{"b:9092"}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Brokers:       []string{"b:9092"},
		TopicTemplate: "outbox.event.${aggregatetype}",
		BatchSize:     1000,
		BatchBytes:    1048576,
		WriteTimeout:  10 * time.Second,
		BackoffMin:    100 * time.Millisecond,
		BackoffMax:    5 * time.Second,
	}
	if got.TopicTemplate != want.TopicTemplate || got.BatchSize != want.BatchSize || got.BatchBytes != want.BatchBytes ||
		got.WriteTimeout != want.WriteTimeout || got.BackoffMin != want.BackoffMin || got.BackoffMax != want.BackoffMax {
		t.Errorf("defaults = %+v, want %+v", got, want)
	}
}
