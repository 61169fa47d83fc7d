package relay

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/replication"
)

// EnvPrefix prefixes every configuration variable.
const EnvPrefix = "OUTBOX_RELAY_"

// Config is the relay's whole configuration, read once from the environment.
type Config struct {
	// PGURL is required by every command that connects to Postgres; it may
	// come from the file named by PG_URL_FILE instead.
	PGURL            string         `env:"PG_URL"`
	KafkaBrokers     []string       `env:"KAFKA_BROKERS" envSeparator:","`
	Table            string         `env:"TABLE" envDefault:"public.outbox"`
	Slot             string         `env:"SLOT" envDefault:"outbox_relay"`
	Publication      string         `env:"PUBLICATION" envDefault:"outbox_relay"`
	Topic            string         `env:"TOPIC" envDefault:"outbox.event.${aggregatetype}"`
	AckMode          outbox.AckMode `env:"ACK_MODE" envDefault:"delete"`
	MaxInflightBytes int64          `env:"MAX_INFLIGHT_BYTES" envDefault:"67108864"`
	StatusInterval   time.Duration  `env:"STATUS_INTERVAL" envDefault:"1s"`
	LogLevel         string         `env:"LOG_LEVEL" envDefault:"info"`
	// ShutdownTimeout bounds the drain after SIGTERM/SIGINT.
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"30s"`

	DLQTopic          string        `env:"DLQ_TOPIC" envDefault:"outbox.dlq"`
	ReconcileGrace    time.Duration `env:"RECONCILE_GRACE" envDefault:"5m"`
	ReconcileInterval time.Duration `env:"RECONCILE_INTERVAL" envDefault:"30s"`
	ReconcileBatch    int           `env:"RECONCILE_BATCH" envDefault:"500"`

	HTTPAddr string `env:"HTTP_ADDR" envDefault:":9465"`
	// PProf serves net/http/pprof under /debug/pprof/ on HTTP_ADDR.
	PProf             bool          `env:"PPROF" envDefault:"false"`
	LeaderRetry       time.Duration `env:"LEADER_RETRY" envDefault:"2s"`
	HeartbeatInterval time.Duration `env:"HEARTBEAT_INTERVAL" envDefault:"10s"`

	KafkaTLS           bool   `env:"KAFKA_TLS" envDefault:"false"`
	KafkaTLSCAFile     string `env:"KAFKA_TLS_CA_FILE"`
	KafkaTLSSkipVerify bool   `env:"KAFKA_TLS_INSECURE_SKIP_VERIFY" envDefault:"false"`
	KafkaSASLMechanism string `env:"KAFKA_SASL_MECHANISM"`
	KafkaSASLUser      string `env:"KAFKA_SASL_USER"`
	KafkaSASLPassword  string `env:"KAFKA_SASL_PASSWORD"`

	// PGURLFromFile and KafkaSASLPasswordFromFile hold the contents of the
	// files named by the _FILE variables (container secrets); LoadConfig
	// moves them into PGURL and KafkaSASLPassword.
	PGURLFromFile             string `env:"PG_URL_FILE,file"`
	KafkaSASLPasswordFromFile string `env:"KAFKA_SASL_PASSWORD_FILE,file"`

	// Producer settings; see publisher.Config for what each one does.
	KafkaMaxMessageBytes     int64         `env:"KAFKA_MAX_MESSAGE_BYTES" envDefault:"16777216"`
	KafkaBatchBytes          int64         `env:"KAFKA_BATCH_BYTES" envDefault:"1048576"`
	KafkaCompression         string        `env:"KAFKA_COMPRESSION" envDefault:"none"`
	KafkaClientID            string        `env:"KAFKA_CLIENT_ID" envDefault:"outbox-relay"`
	KafkaWriteTimeout        time.Duration `env:"KAFKA_WRITE_TIMEOUT" envDefault:"10s"`
	KafkaUnknownTopicTimeout time.Duration `env:"KAFKA_UNKNOWN_TOPIC_TIMEOUT" envDefault:"30s"`

	// The outbox table's columns (see outbox.Mapping); the defaults are
	// the relay's own table, whose names Debezium's router uses too.
	ColumnID          string `env:"COLUMN_ID" envDefault:"id"`
	ColumnKey         string `env:"COLUMN_KEY" envDefault:"aggregateid"`
	ColumnRoute       string `env:"COLUMN_ROUTE" envDefault:"aggregatetype"`
	ColumnType        string `env:"COLUMN_TYPE" envDefault:"type"`
	ColumnPayload     string `env:"COLUMN_PAYLOAD" envDefault:"payload"`
	ColumnHeaders     string `env:"COLUMN_HEADERS" envDefault:"headers"`
	ColumnTopic       string `env:"COLUMN_TOPIC" envDefault:"topic"`
	ColumnTimestamp   string `env:"COLUMN_TIMESTAMP" envDefault:"created_at"`
	ColumnPublishedAt string `env:"COLUMN_PUBLISHED_AT" envDefault:"published_at"`
	// HeaderColumns lists further columns copied into record headers:
	// "column[:header],…" (the header is named after the column unless
	// given).
	HeaderColumns string `env:"HEADER_COLUMNS"`

	// CloudEvents adds the CloudEvents binary-mode headers (ce_id, ce_type,
	// ce_source, ce_specversion, ce_time) to every record.
	CloudEvents       bool   `env:"CLOUDEVENTS" envDefault:"false"`
	CloudEventsSource string `env:"CLOUDEVENTS_SOURCE"`
}

// ColumnVariables names the variable that sets each outbox.Mapping field,
// for errors about the table's columns.
var ColumnVariables = map[string]string{
	"ID":            EnvPrefix + "COLUMN_ID",
	"AggregateID":   EnvPrefix + "COLUMN_KEY",
	"AggregateType": EnvPrefix + "COLUMN_ROUTE",
	"Type":          EnvPrefix + "COLUMN_TYPE",
	"Payload":       EnvPrefix + "COLUMN_PAYLOAD",
	"Headers":       EnvPrefix + "COLUMN_HEADERS",
	"Topic":         EnvPrefix + "COLUMN_TOPIC",
	"CreatedAt":     EnvPrefix + "COLUMN_TIMESTAMP",
	"PublishedAt":   EnvPrefix + "COLUMN_PUBLISHED_AT",
	"HeaderColumns": EnvPrefix + "HEADER_COLUMNS",
}

// Needs says which connection settings a command requires.
type Needs struct {
	Postgres bool // OUTBOX_RELAY_PG_URL (or _FILE)
	Kafka    bool // OUTBOX_RELAY_KAFKA_BROKERS
}

// Compressions are the values of OUTBOX_RELAY_KAFKA_COMPRESSION.
var Compressions = []string{"none", "gzip", "snappy", "lz4", "zstd"}

// LoadConfig reads the configuration from environ (os.Environ() form) and
// validates it. Every error names the variable at fault. The Postgres URL is
// required; Kafka settings only when needKafka is set (setup works without
// a broker).
func LoadConfig(environ []string, needKafka bool) (Config, error) {
	return LoadConfigFor(environ, Needs{Postgres: true, Kafka: needKafka})
}

// LoadConfigFor is LoadConfig for a command with the given needs (the dlq
// commands, for one, talk to Kafka only).
func LoadConfigFor(environ []string, needs Needs) (Config, error) {
	vars := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	cfg, err := env.ParseAsWithOptions[Config](env.Options{Prefix: EnvPrefix, Environment: vars})
	if err != nil {
		return Config{}, nameVariables(err)
	}
	var errs []error
	if err := fromFile(&cfg.PGURL, &cfg.PGURLFromFile, vars, "PG_URL"); err != nil {
		errs = append(errs, err)
	}
	if err := fromFile(&cfg.KafkaSASLPassword, &cfg.KafkaSASLPasswordFromFile, vars, "KAFKA_SASL_PASSWORD"); err != nil {
		errs = append(errs, err)
	}
	if needs.Postgres && cfg.PGURL == "" {
		errs = append(errs, fmt.Errorf("required environment variable %q (or %q) is not set", EnvPrefix+"PG_URL", EnvPrefix+"PG_URL_FILE"))
	}
	if needs.Kafka && len(cfg.KafkaBrokers) == 0 {
		errs = append(errs, fmt.Errorf("required environment variable %q is not set", EnvPrefix+"KAFKA_BROKERS"))
	}
	errs = append(errs, cfg.Validate())
	return cfg, errors.Join(errs...)
}

// fromFile moves the contents of the file named by NAME_FILE (already read
// by the parser into *fromFile) into *value. Setting both NAME and
// NAME_FILE is an error: which one wins would be a guess. The file's
// trailing newline, which editors and `echo` add, is not part of the value.
func fromFile(value, fromFile *string, vars map[string]string, name string) error {
	plain, file := EnvPrefix+name, EnvPrefix+name+"_FILE"
	if vars[file] == "" {
		return nil
	}
	if vars[plain] != "" {
		return fmt.Errorf("%s and %s are both set: set one", plain, file)
	}
	*value = strings.TrimRight(*fromFile, "\r\n")
	*fromFile = ""
	if *value == "" {
		return fmt.Errorf("%s: file %q is empty", file, vars[file])
	}
	return nil
}

// Validate checks values the environment parser cannot.
func (c Config) Validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", EnvPrefix, name, fmt.Sprintf(format, args...)))
	}
	if _, err := outbox.ParseTable(c.Table); err != nil {
		bad("TABLE", "%v", err)
	}
	if !replication.ValidSlotName(c.Slot) {
		bad("SLOT", "%q is not a valid slot name (lower-case letters, digits, underscores; at most 63)", c.Slot)
	}
	if c.Publication == "" || strings.ContainsAny(c.Publication, "'\"") {
		bad("PUBLICATION", "%q is not a valid publication name", c.Publication)
	}
	if c.Topic == "" {
		bad("TOPIC", "must not be empty")
	} else if err := outbox.CheckTopicTemplate(c.Topic); err != nil {
		bad("TOPIC", "%q: %v", c.Topic, err)
	}
	for _, col := range []struct{ name, value string }{
		{"COLUMN_ID", c.ColumnID}, {"COLUMN_KEY", c.ColumnKey}, {"COLUMN_ROUTE", c.ColumnRoute},
		{"COLUMN_TYPE", c.ColumnType}, {"COLUMN_PAYLOAD", c.ColumnPayload},
	} {
		if strings.TrimSpace(col.value) == "" {
			bad(col.name, "must name a column")
		}
	}
	if _, err := parseHeaderColumns(c.HeaderColumns); err != nil {
		bad("HEADER_COLUMNS", "%v", err)
	}
	if c.CloudEvents && c.CloudEventsSource == "" {
		bad("CLOUDEVENTS_SOURCE", "must be set when OUTBOX_RELAY_CLOUDEVENTS is (ce_source, a URI reference such as /orders-service)")
	}
	switch c.AckMode {
	case outbox.AckDelete, outbox.AckMark, outbox.AckNone:
	default:
		bad("ACK_MODE", "%q is not one of delete, mark, none", c.AckMode)
	}
	if c.MaxInflightBytes < 1<<16 {
		bad("MAX_INFLIGHT_BYTES", "%d is below the minimum of 65536", c.MaxInflightBytes)
	}
	if c.StatusInterval <= 0 || c.StatusInterval > 30*time.Second {
		bad("STATUS_INTERVAL", "%s is outside (0, 30s]: it must stay well inside wal_sender_timeout", c.StatusInterval)
	}
	if _, err := zerolog.ParseLevel(c.LogLevel); err != nil || c.LogLevel == "" {
		bad("LOG_LEVEL", "%q is not a zerolog level (trace, debug, info, warn, error)", c.LogLevel)
	}
	if c.ShutdownTimeout <= 0 {
		bad("SHUTDOWN_TIMEOUT", "%s must be positive", c.ShutdownTimeout)
	}
	if c.DLQTopic == "" {
		bad("DLQ_TOPIC", "must not be empty")
	}
	if c.ReconcileGrace <= 0 {
		bad("RECONCILE_GRACE", "%s must be positive", c.ReconcileGrace)
	}
	if c.ReconcileInterval <= 0 {
		bad("RECONCILE_INTERVAL", "%s must be positive", c.ReconcileInterval)
	}
	if c.ReconcileBatch <= 0 {
		bad("RECONCILE_BATCH", "%d must be positive", c.ReconcileBatch)
	}
	if c.LeaderRetry <= 0 {
		bad("LEADER_RETRY", "%s must be positive", c.LeaderRetry)
	}
	if c.HeartbeatInterval < 0 {
		bad("HEARTBEAT_INTERVAL", "%s must not be negative (0 disables heartbeats)", c.HeartbeatInterval)
	}
	switch strings.ToUpper(c.KafkaSASLMechanism) {
	case "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		if c.KafkaSASLMechanism != "" && c.KafkaSASLUser == "" {
			bad("KAFKA_SASL_USER", "must be set when OUTBOX_RELAY_KAFKA_SASL_MECHANISM is")
		}
	default:
		bad("KAFKA_SASL_MECHANISM", "%q is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512", c.KafkaSASLMechanism)
	}
	if c.KafkaMaxMessageBytes < 1024 || c.KafkaMaxMessageBytes > 1<<30 {
		bad("KAFKA_MAX_MESSAGE_BYTES", "%d is outside [1024, 1073741824]", c.KafkaMaxMessageBytes)
	}
	if c.KafkaBatchBytes < 1024 || c.KafkaBatchBytes > 1<<30 {
		bad("KAFKA_BATCH_BYTES", "%d is outside [1024, 1073741824]", c.KafkaBatchBytes)
	}
	if !slices.Contains(Compressions, c.KafkaCompression) {
		bad("KAFKA_COMPRESSION", "%q is not one of %s", c.KafkaCompression, strings.Join(Compressions, ", "))
	}
	if c.KafkaClientID == "" {
		bad("KAFKA_CLIENT_ID", "must not be empty")
	}
	if c.KafkaWriteTimeout <= 0 {
		bad("KAFKA_WRITE_TIMEOUT", "%s must be positive", c.KafkaWriteTimeout)
	}
	if c.KafkaUnknownTopicTimeout <= 0 {
		bad("KAFKA_UNKNOWN_TOPIC_TIMEOUT", "%s must be positive", c.KafkaUnknownTopicTimeout)
	}
	for _, b := range c.KafkaBrokers {
		if _, _, err := net.SplitHostPort(strings.TrimSpace(b)); err != nil {
			bad("KAFKA_BROKERS", "%q is not host:port", b)
		}
	}
	return errors.Join(errs...)
}

// TableName returns the parsed OUTBOX_RELAY_TABLE.
func (c Config) TableName() outbox.Table {
	t, _ := outbox.ParseTable(c.Table)
	return t
}

// Mapping returns the outbox table's column mapping, from the COLUMN_*
// and HEADER_COLUMNS variables. It is resolved here once, and New, Setup
// and Status pass it down to every stage.
func (c Config) Mapping() outbox.Mapping {
	headers, _ := parseHeaderColumns(c.HeaderColumns) // Validate refused a bad list
	return outbox.Mapping{
		ID:            c.ColumnID,
		AggregateType: c.ColumnRoute,
		AggregateID:   c.ColumnKey,
		Type:          c.ColumnType,
		Payload:       c.ColumnPayload,
		Headers:       c.ColumnHeaders,
		Topic:         c.ColumnTopic,
		CreatedAt:     c.ColumnTimestamp,
		PublishedAt:   c.ColumnPublishedAt,
		HeaderColumns: headers,
	}
}

// parseHeaderColumns parses HEADER_COLUMNS: "column[:header],…".
func parseHeaderColumns(s string) ([]outbox.HeaderColumn, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var list []outbox.HeaderColumn
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		column, header, named := strings.Cut(strings.TrimSpace(item), ":")
		column, header = strings.TrimSpace(column), strings.TrimSpace(header)
		if !named {
			header = column
		}
		if column == "" || header == "" {
			return nil, fmt.Errorf("%q: want column[:header], comma-separated", item)
		}
		if seen[column] {
			return nil, fmt.Errorf("column %q is listed twice", column)
		}
		seen[column] = true
		list = append(list, outbox.HeaderColumn{Column: column, Header: header})
	}
	if len(list) > outbox.MaxHeaderColumns {
		return nil, fmt.Errorf("%d columns, at most %d", len(list), outbox.MaxHeaderColumns)
	}
	return list, nil
}

// nameVariables rewrites the parser's errors, which name struct fields, to
// name the environment variables a user sets.
func nameVariables(err error) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return err
	}
	keys := map[string]string{}
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		keys[f.Name] = EnvPrefix + key
	}
	var errs []error
	for _, e := range agg.Errors {
		var parse env.ParseError
		if errors.As(e, &parse) {
			errs = append(errs, fmt.Errorf("%s: %w", keys[parse.Name], parse.Err))
			continue
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}
