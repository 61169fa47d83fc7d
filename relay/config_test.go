package relay

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
)

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := LoadConfig([]string{"OUTBOX_RELAY_PG_URL=postgres://h/db", "OUTBOX_RELAY_KAFKA_BROKERS=k1:9092, k2:9092"}, true)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"TABLE", cfg.Table, "public.outbox"},
		{"SLOT", cfg.Slot, "outbox_relay"},
		{"PUBLICATION", cfg.Publication, "outbox_relay"},
		{"TOPIC", cfg.Topic, "outbox.event.${aggregatetype}"},
		{"ACK_MODE", cfg.AckMode, outbox.AckDelete},
		{"MAX_INFLIGHT_BYTES", cfg.MaxInflightBytes, int64(67108864)},
		{"STATUS_INTERVAL", cfg.StatusInterval, time.Second},
		{"LOG_LEVEL", cfg.LogLevel, "info"},
		{"DLQ_TOPIC", cfg.DLQTopic, "outbox.dlq"},
		{"RECONCILE_GRACE", cfg.ReconcileGrace, 5 * time.Minute},
		{"RECONCILE_INTERVAL", cfg.ReconcileInterval, 30 * time.Second},
		{"RECONCILE_BATCH", cfg.ReconcileBatch, 500},
		{"HTTP_ADDR", cfg.HTTPAddr, ":9465"},
		{"LEADER_RETRY", cfg.LeaderRetry, 2 * time.Second},
		{"HEARTBEAT_INTERVAL", cfg.HeartbeatInterval, 10 * time.Second},
		{"brokers", len(cfg.KafkaBrokers), 2},
		{"KAFKA_MAX_MESSAGE_BYTES", cfg.KafkaMaxMessageBytes, int64(16 << 20)},
		{"KAFKA_BATCH_BYTES", cfg.KafkaBatchBytes, int64(1 << 20)},
		{"KAFKA_COMPRESSION", cfg.KafkaCompression, "none"},
		{"KAFKA_CLIENT_ID", cfg.KafkaClientID, "outbox-relay"},
		{"KAFKA_WRITE_TIMEOUT", cfg.KafkaWriteTimeout, 10 * time.Second},
		{"KAFKA_UNKNOWN_TOPIC_TIMEOUT", cfg.KafkaUnknownTopicTimeout, 30 * time.Second},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestLoadConfigErrors(t *testing.T) {
	base := []string{"OUTBOX_RELAY_PG_URL=postgres://h/db", "OUTBOX_RELAY_KAFKA_BROKERS=k:9092"}
	tests := []struct {
		name      string
		env       []string
		needKafka bool
		want      string // the variable the error must name
	}{
		{"missing PG_URL", []string{"OUTBOX_RELAY_KAFKA_BROKERS=k:9092"}, true, "OUTBOX_RELAY_PG_URL"},
		{"missing brokers for run", []string{"OUTBOX_RELAY_PG_URL=postgres://h/db"}, true, "OUTBOX_RELAY_KAFKA_BROKERS"},
		{"bad broker", append(base[:1:1], "OUTBOX_RELAY_KAFKA_BROKERS=nohostport"), true, "OUTBOX_RELAY_KAFKA_BROKERS"},
		{"ack mode", append(base, "OUTBOX_RELAY_ACK_MODE=sometimes"), true, "OUTBOX_RELAY_ACK_MODE"},
		{"duration", append(base, "OUTBOX_RELAY_STATUS_INTERVAL=soon"), true, "OUTBOX_RELAY_STATUS_INTERVAL"},
		{"status interval too long", append(base, "OUTBOX_RELAY_STATUS_INTERVAL=2m"), true, "OUTBOX_RELAY_STATUS_INTERVAL"},
		{"inflight not a number", append(base, "OUTBOX_RELAY_MAX_INFLIGHT_BYTES=lots"), true, "OUTBOX_RELAY_MAX_INFLIGHT_BYTES"},
		{"inflight too small", append(base, "OUTBOX_RELAY_MAX_INFLIGHT_BYTES=10"), true, "OUTBOX_RELAY_MAX_INFLIGHT_BYTES"},
		{"slot name", append(base, "OUTBOX_RELAY_SLOT=Bad-Slot"), true, "OUTBOX_RELAY_SLOT"},
		{"table", append(base, "OUTBOX_RELAY_TABLE=a.b.c"), true, "OUTBOX_RELAY_TABLE"},
		{"log level", append(base, "OUTBOX_RELAY_LOG_LEVEL=loud"), true, "OUTBOX_RELAY_LOG_LEVEL"},
		{"sasl mechanism", append(base, "OUTBOX_RELAY_KAFKA_SASL_MECHANISM=GSSAPI"), true, "OUTBOX_RELAY_KAFKA_SASL_MECHANISM"},
		{"sasl without user", append(base, "OUTBOX_RELAY_KAFKA_SASL_MECHANISM=PLAIN"), true, "OUTBOX_RELAY_KAFKA_SASL_USER"},
		{"reconcile batch", append(base, "OUTBOX_RELAY_RECONCILE_BATCH=0"), true, "OUTBOX_RELAY_RECONCILE_BATCH"},
		{"max message bytes", append(base, "OUTBOX_RELAY_KAFKA_MAX_MESSAGE_BYTES=10"), true, "OUTBOX_RELAY_KAFKA_MAX_MESSAGE_BYTES"},
		{"batch bytes", append(base, "OUTBOX_RELAY_KAFKA_BATCH_BYTES=lots"), true, "OUTBOX_RELAY_KAFKA_BATCH_BYTES"},
		{"compression", append(base, "OUTBOX_RELAY_KAFKA_COMPRESSION=brotli"), true, "OUTBOX_RELAY_KAFKA_COMPRESSION"},
		{"write timeout", append(base, "OUTBOX_RELAY_KAFKA_WRITE_TIMEOUT=0s"), true, "OUTBOX_RELAY_KAFKA_WRITE_TIMEOUT"},
		{"unknown topic timeout", append(base, "OUTBOX_RELAY_KAFKA_UNKNOWN_TOPIC_TIMEOUT=-1s"), true, "OUTBOX_RELAY_KAFKA_UNKNOWN_TOPIC_TIMEOUT"},
		{"negative heartbeat", append(base, "OUTBOX_RELAY_HEARTBEAT_INTERVAL=-1s"), true, "OUTBOX_RELAY_HEARTBEAT_INTERVAL"},
		{"unknown placeholder", append(base, "OUTBOX_RELAY_TOPIC=outbox.${aggregateId}"), true, "OUTBOX_RELAY_TOPIC: \"outbox.${aggregateId}\": unknown placeholder ${aggregateId}"},
		{"unterminated placeholder", append(base, "OUTBOX_RELAY_TOPIC=outbox.${routedByValue"), true, "OUTBOX_RELAY_TOPIC"},
		{"blank key column", append(base, "OUTBOX_RELAY_COLUMN_KEY= "), true, "OUTBOX_RELAY_COLUMN_KEY"},
		{"header column without a name", append(base, "OUTBOX_RELAY_HEADER_COLUMNS=a,:b"), true, "OUTBOX_RELAY_HEADER_COLUMNS"},
		{"header column twice", append(base, "OUTBOX_RELAY_HEADER_COLUMNS=a,a:b"), true, "OUTBOX_RELAY_HEADER_COLUMNS"},
		{"too many header columns", append(base, "OUTBOX_RELAY_HEADER_COLUMNS=a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q"), true, "OUTBOX_RELAY_HEADER_COLUMNS"},
		{"cloudevents without a source", append(base, "OUTBOX_RELAY_CLOUDEVENTS=true"), true, "OUTBOX_RELAY_CLOUDEVENTS_SOURCE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig(tt.env, tt.needKafka)
			if err == nil {
				t.Fatalf("LoadConfig = nil error, want one naming %s", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to name %s", err, tt.want)
			}
		})
	}
	if _, err := LoadConfig([]string{"OUTBOX_RELAY_PG_URL=postgres://h/db"}, false); err != nil {
		t.Errorf("setup without brokers: %v, want no error", err)
	}
}

// TestLoadConfigMapping: the defaults are the relay's own column names (which
// are Debezium's too), and every column variable reaches the mapping.
func TestLoadConfigMapping(t *testing.T) {
	base := []string{"OUTBOX_RELAY_PG_URL=postgres://h/db"}
	cfg, err := LoadConfig(base, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Mapping(), outbox.DefaultMapping(); !reflect.DeepEqual(got, want) {
		t.Errorf("default Mapping = %+v, want %+v", got, want)
	}
	cfg, err = LoadConfig(append(base,
		"OUTBOX_RELAY_COLUMN_ID=event_id", "OUTBOX_RELAY_COLUMN_KEY=k", "OUTBOX_RELAY_COLUMN_ROUTE=r",
		"OUTBOX_RELAY_COLUMN_TYPE=t", "OUTBOX_RELAY_COLUMN_PAYLOAD=body", "OUTBOX_RELAY_COLUMN_HEADERS=h",
		"OUTBOX_RELAY_COLUMN_TOPIC=dest", "OUTBOX_RELAY_COLUMN_TIMESTAMP=ts", "OUTBOX_RELAY_COLUMN_PUBLISHED_AT=sent",
		"OUTBOX_RELAY_HEADER_COLUMNS=trace_parent:traceparent, tenant ",
		"OUTBOX_RELAY_TOPIC=outbox.event.${routedByValue}"), false)
	if err != nil {
		t.Fatal(err)
	}
	want := outbox.Mapping{ID: "event_id", AggregateID: "k", AggregateType: "r", Type: "t", Payload: "body", Headers: "h",
		Topic: "dest", CreatedAt: "ts", PublishedAt: "sent",
		HeaderColumns: []outbox.HeaderColumn{{Column: "trace_parent", Header: "traceparent"}, {Column: "tenant", Header: "tenant"}}}
	if got := cfg.Mapping(); !reflect.DeepEqual(got, want) {
		t.Errorf("Mapping = %+v, want %+v", got, want)
	}
	for field, variable := range ColumnVariables {
		if _, ok := reflect.TypeFor[outbox.Mapping]().FieldByName(field); !ok {
			t.Errorf("ColumnVariables names %s for a field %s that outbox.Mapping lacks", variable, field)
		}
	}
}

// TestLoadConfigSecretFiles reads the secrets from the files named by the
// _FILE variables, and refuses an unreadable file or both variants at once,
// naming the variable.
func TestLoadConfigSecretFiles(t *testing.T) {
	dir := t.TempDir()
	urlFile := filepath.Join(dir, "pg_url")
	passwordFile := filepath.Join(dir, "sasl_password")
	if err := os.WriteFile(urlFile, []byte("postgres://relay:s3cret@h/db\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(passwordFile, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfigFor([]string{"OUTBOX_RELAY_PG_URL_FILE=" + urlFile, "OUTBOX_RELAY_KAFKA_SASL_PASSWORD_FILE=" + passwordFile,
		"OUTBOX_RELAY_KAFKA_SASL_MECHANISM=PLAIN", "OUTBOX_RELAY_KAFKA_SASL_USER=relay"}, Needs{Postgres: true})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PGURL != "postgres://relay:s3cret@h/db" {
		t.Errorf("PGURL = %q, want the file's contents without the newline", cfg.PGURL)
	}
	if cfg.KafkaSASLPassword != "hunter2" {
		t.Errorf("KafkaSASLPassword = %q, want the file's contents without the newline", cfg.KafkaSASLPassword)
	}
	if cfg.PGURLFromFile != "" || cfg.KafkaSASLPasswordFromFile != "" {
		t.Errorf("the secrets are kept twice in the config, want them only in PGURL and KafkaSASLPassword")
	}

	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"unreadable PG_URL_FILE", []string{"OUTBOX_RELAY_PG_URL_FILE=" + filepath.Join(dir, "missing")}, "OUTBOX_RELAY_PG_URL_FILE"},
		{"both PG_URL and PG_URL_FILE", []string{"OUTBOX_RELAY_PG_URL=postgres://h/db", "OUTBOX_RELAY_PG_URL_FILE=" + urlFile}, "OUTBOX_RELAY_PG_URL_FILE"},
		{"unreadable SASL password file", []string{"OUTBOX_RELAY_PG_URL=postgres://h/db",
			"OUTBOX_RELAY_KAFKA_SASL_PASSWORD_FILE=" + dir}, "OUTBOX_RELAY_KAFKA_SASL_PASSWORD_FILE"},
		{"both SASL password variants", []string{"OUTBOX_RELAY_PG_URL=postgres://h/db", "OUTBOX_RELAY_KAFKA_SASL_PASSWORD=x",
			"OUTBOX_RELAY_KAFKA_SASL_PASSWORD_FILE=" + passwordFile}, "OUTBOX_RELAY_KAFKA_SASL_PASSWORD_FILE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfigFor(tt.env, Needs{Postgres: true})
			if err == nil {
				t.Fatalf("LoadConfigFor = nil error, want one naming %s", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to name %s", err, tt.want)
			}
		})
	}

	if _, err := LoadConfigFor([]string{"OUTBOX_RELAY_KAFKA_BROKERS=k:9092"}, Needs{Kafka: true}); err != nil {
		t.Errorf("Kafka-only command without PG_URL: %v, want no error", err)
	}
}
