package tests

import (
	"strings"
	"testing"
	"time"
)

// debeziumTableDDL is the outbox table of Debezium's documentation (Outbox
// Event Router, "Example outbox table"): no created_at, no headers, no topic.
const debeziumTableDDL = `CREATE TABLE public.outbox (
	id uuid NOT NULL PRIMARY KEY,
	aggregatetype varchar(255) NOT NULL,
	aggregateid varchar(255) NOT NULL,
	type varchar(255) NOT NULL,
	payload jsonb
)`

// TestDropinRefusals: on a cluster with track_commit_timestamp off (the
// default), `setup` and `run` refuse a Debezium-shaped table saying what to
// add, instead of starting a relay whose reconciler and oldest-unacked gauge
// fail on every sweep; a mapping that names a missing column, and a topic
// template with an unknown placeholder, are refused at start naming the
// variable and the column or placeholder. No slot or publication is created
// on the way.
func TestDropinRefusals(t *testing.T) {
	e := newEnv(t)
	e.exec(debeziumTableDDL)
	debezium := []string{"OUTBOX_RELAY_TOPIC=outbox.event.${routedByValue}"}
	tests := []struct {
		name string
		cmd  string
		env  []string
		want []string // all in stderr
	}{
		{"setup without a row age", "setup", debezium,
			[]string{"OUTBOX_RELAY_COLUMN_TIMESTAMP", `no column "created_at"`, "track_commit_timestamp", "ADD COLUMN \"created_at\" timestamptz"}},
		{"run without a row age", "run", debezium,
			[]string{"OUTBOX_RELAY_COLUMN_TIMESTAMP", `no column "created_at"`, "track_commit_timestamp = on"}},
		{"missing key column", "run", append(debezium, "OUTBOX_RELAY_COLUMN_KEY=order_id"),
			[]string{"OUTBOX_RELAY_COLUMN_KEY", `no column "order_id"`}},
		{"missing header column", "setup", append(debezium, "OUTBOX_RELAY_HEADER_COLUMNS=trace_parent:traceparent"),
			[]string{"OUTBOX_RELAY_HEADER_COLUMNS", `no column "trace_parent"`}},
		{"payload column of the wrong type", "run", append(debezium, "OUTBOX_RELAY_COLUMN_PAYLOAD=id"),
			[]string{"OUTBOX_RELAY_COLUMN_PAYLOAD", `column "id" is uuid`, "want jsonb, json, text, varchar or bytea"}},
		{"setup will not create a table for another mapping", "setup", append(debezium, "OUTBOX_RELAY_TABLE=public.events", "OUTBOX_RELAY_COLUMN_ID=event_id"),
			[]string{"table public.events does not exist", "default columns"}},
		{"unknown placeholder", "run", []string{"OUTBOX_RELAY_TOPIC=outbox.event.${routedBy}"},
			[]string{"OUTBOX_RELAY_TOPIC", "unknown placeholder ${routedBy}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runRelay(t, e.relayEnv(tt.env...), time.Minute, tt.cmd)
			stderr = strings.ReplaceAll(stderr, `\"`, `"`) // the JSON log's quoting
			if code == 0 {
				t.Fatalf("outbox-relay %s exited 0, want a refusal; stderr:\n%s", tt.cmd, lastLinesOf(stderr, 10))
			}
			for _, want := range tt.want {
				if !strings.Contains(stderr, want) {
					t.Errorf("outbox-relay %s: stderr does not say %q:\n%s", tt.cmd, want, lastLinesOf(stderr, 10))
				}
			}
		})
	}
	if n := e.queryInt("SELECT count(*) FROM pg_class WHERE relname = 'events'"); n != 0 {
		t.Errorf("setup created public.events with the default columns for a mapping that names others")
	}
	if n := e.queryInt("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", e.name); n != 0 {
		t.Errorf("a refused start created the slot")
	}
	if n := e.queryInt("SELECT count(*) FROM pg_publication WHERE pubname = $1", e.name); n != 0 {
		t.Errorf("a refused start created the publication")
	}
}
