package tests

import (
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// mixedEvents returns n events over several aggregates of two types and a
// third type with a per-row topic override, with null, scalar and nested
// payloads and some headers. Payloads and header values carry canaries
// (payload-canary-, header-canary-) that must never reach the logs.
func mixedEvents(n int) []*event {
	keys := []struct{ typ, id, topic string }{
		{"order", "o-1", ""}, {"order", "o-2", ""}, {"order", "o-3", ""}, {"order", "o-4", ""},
		{"customer", "c-1", ""}, {"customer", "c-2", ""}, {"customer", "c-3", ""},
		{"shipment", "s-1", "custom.shipments"}, {"shipment", "s-2", "custom.shipments"},
	}
	events := make([]*event, n)
	for i := range events {
		k := keys[(i*7+i/3)%len(keys)]
		ev := &event{aggregateType: k.typ, aggregateID: k.id, typ: k.typ + "Changed", topic: k.topic, seq: i}
		switch {
		case i%11 == 3:
			ev.payload = nil // SQL NULL → null value
		case i%11 == 5:
			ev.payload = jsonText(`"just a string"`)
		case i%11 == 7:
			ev.payload = jsonText(`42.50`)
		default:
			// Spacing and key order that jsonb normalises.
			ev.payload = jsonText(fmt.Sprintf(`{ "seq": %d,  "note": "payload-canary-%d",
				"nested": {"zeta": [1, 2.50, true, null], "a": "ünïcode ✓"}, "id": "x"}`, i, i))
		}
		switch i % 4 {
		case 1:
			ev.headers = map[string]string{"trace-id": fmt.Sprintf("header-canary-%d", i), "x-tenant": "acme"}
		case 2:
			ev.headers = map[string]string{}
		}
		events[i] = ev
	}
	return events
}

// insertInTransactions inserts events in transactions of 1 to 5 rows and
// returns the commit LSN of the last one.
func (e *testEnv) insertInTransactions(events []*event) (lastCommit outbox.LSN) {
	e.t.Helper()
	for i := 0; i < len(events); {
		n := min(1+i%5, len(events)-i)
		lastCommit = e.insert(events[i : i+n]...)
		i += n
	}
	return lastCommit
}

// TestRowsArriveAsSpecified writes rows over many transactions with a
// separate client and reads them back with an independent consumer: every
// record must be where and as the contract says, exactly once, each key in
// commit order; rows are deleted once acked; the logs are JSON without
// payloads, header values or the password.
func TestRowsArriveAsSpecified(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	const password = "password-canary"
	pgURL := strings.Replace(pg.URL(e.name), "postgres@", "postgres:"+password+"@", 1)
	relay := e.startRelay("OUTBOX_RELAY_PG_URL="+pgURL, "OUTBOX_RELAY_LOG_LEVEL=debug")

	events := mixedEvents(120)
	lastCommit := e.insertInTransactions(events)
	topics := []string{`^outbox\.event\.`, `^custom\.shipments$`}
	e.readEvents(time.Minute, topics, idSet(events))
	e.waitConfirmed(30*time.Second, lastCommit)

	// The flush position passes a transaction only after its rows were
	// deleted (ACK_MODE=delete, the default).
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left in the outbox although the slot confirmed past their commit %s, want 0 (ACK_MODE=delete); %s",
			n, lastCommit, e.describeRows(events))
	}

	records := e.readAll(topics)
	if len(records) != len(events) {
		t.Errorf("read %d records, want %d (one per row, no duplicates without a crash)", len(records), len(events))
	}
	byID := eventsByID(events)
	bad := 0
	for _, r := range records {
		id, _ := header(r, "id")
		ev := byID[id]
		if ev == nil {
			t.Errorf("record with no or unknown id header: %s", describeRecord(r))
			continue
		}
		problems := recordProblems(r, ev)
		for _, p := range problems {
			t.Errorf("event %d (%s): %s", ev.seq, ev.id, p)
		}
		if len(problems) > 0 {
			if bad++; bad == 10 {
				t.Fatalf("stopping after 10 records with problems")
			}
		}
	}
	checkKeyOrder(t, records, func(r *kgo.Record) (int, bool) {
		id, _ := header(r, "id")
		ev, ok := byID[id]
		if !ok {
			return 0, false
		}
		return ev.seq, true
	})

	relay.terminate(t)
	checkLogs(t, relay.stderr.String(), []string{password, "payload-canary-", "header-canary-"})
}

// recordProblems compares a record with the row it came from.
func recordProblems(r *kgo.Record, ev *event) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if r.Topic != ev.wantTopic() {
		bad("topic %q, want %q", r.Topic, ev.wantTopic())
	}
	if string(r.Key) != ev.aggregateID {
		bad("key %q, want aggregateid %q", r.Key, ev.aggregateID)
	}
	if want := javaPartition([]byte(ev.aggregateID), 3); r.Partition != want {
		bad("key %q in partition %d, want %d (murmur2, as the Java client)", r.Key, r.Partition, want)
	}
	switch {
	case ev.storedPayload == nil && r.Value != nil:
		bad("value %q, want null (payload is NULL)", r.Value)
	case ev.storedPayload != nil && string(r.Value) != *ev.storedPayload:
		bad("value %q, want the stored jsonb text %q", r.Value, *ev.storedPayload)
	}
	var keys []string
	for _, h := range r.Headers {
		keys = append(keys, h.Key)
	}
	if len(r.Headers) < 2 || r.Headers[0].Key != "id" || r.Headers[1].Key != "type" {
		return append(problems, fmt.Sprintf("header keys %q, want id, type first", keys))
	}
	if got := string(r.Headers[0].Value); got != ev.id {
		bad("id header %q, want %q", got, ev.id)
	}
	if got := string(r.Headers[1].Value); got != ev.typ {
		bad("type header %q, want %q", got, ev.typ)
	}
	rest := make(map[string]string)
	for _, h := range r.Headers[2:] {
		if _, dup := rest[h.Key]; dup {
			bad("header %q twice", h.Key)
		}
		rest[h.Key] = string(h.Value)
	}
	want := ev.headers
	if want == nil {
		want = map[string]string{}
	}
	if !maps.Equal(rest, want) {
		bad("headers after id, type = %v, want the row's headers %v", rest, want)
	}
	return problems
}

// checkLogs requires every line of stderr to be a zerolog JSON object with a
// level and a component, and none to contain any of secrets.
func checkLogs(t *testing.T, stderr string, secrets []string) {
	t.Helper()
	lines := 0
	for line := range strings.SplitSeq(strings.TrimSpace(stderr), "\n") {
		if line == "" {
			continue
		}
		lines++
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Errorf("log line is not JSON: %s", line)
			continue
		}
		if _, ok := entry["level"]; !ok {
			t.Errorf("log line without level: %s", line)
		}
		if _, ok := entry["component"]; !ok {
			t.Errorf("log line without component: %s", line)
		}
		for _, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("log line contains %q (a payload, header value or password): %s", s, line)
			}
		}
	}
	if lines == 0 {
		t.Errorf("the relay logged nothing on stderr, want JSON logs")
	}
}

// TestAckModes checks what each ACK_MODE does to a row once Kafka acked it,
// by the time the slot confirmed past the row's commit.
func TestAckModes(t *testing.T) {
	tests := []struct {
		mode                string
		wantRows, wantMarks int
	}{
		{mode: "delete", wantRows: 0, wantMarks: 0},
		{mode: "mark", wantRows: 10, wantMarks: 10},
		{mode: "none", wantRows: 10, wantMarks: 0},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			e := newEnv(t)
			e.createTable()
			e.startRelay("OUTBOX_RELAY_ACK_MODE=" + tt.mode)
			var events []*event
			for i := range 10 {
				events = append(events, &event{aggregateType: "order", aggregateID: fmt.Sprintf("o-%d", i%3),
					typ: "OrderPlaced", payload: jsonText(`{}`), seq: i})
			}
			e.insert(events[:4]...)
			last := e.insert(events[4:]...)
			e.readEvents(time.Minute, outboxTopics, idSet(events))
			e.waitConfirmed(30*time.Second, last)
			rows := e.queryInt("SELECT count(*) FROM public.outbox")
			marks := e.queryInt("SELECT count(*) FROM public.outbox WHERE published_at IS NOT NULL AND published_at >= created_at")
			if rows != tt.wantRows || marks != tt.wantMarks {
				t.Errorf("ACK_MODE=%s: %d rows, %d with published_at set, want %d and %d",
					tt.mode, rows, marks, tt.wantRows, tt.wantMarks)
			}
		})
	}
}
