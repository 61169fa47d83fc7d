package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/internal/devenv/pgtest"
)

// debeziumRow is one row of Debezium's example outbox table.
type debeziumRow struct {
	ID            string  `json:"id"`
	AggregateType string  `json:"aggregatetype"`
	AggregateID   string  `json:"aggregateid"`
	Type          string  `json:"type"`
	Payload       *string `json:"payload"`
}

// debeziumFixture is what Debezium's outbox event router produced for rows
// (tests/testdata/debezium-router-*.json, written by the Debezium test with
// the router's settings; "__debezium.*" context headers included).
type debeziumFixture struct {
	Converter       string        `json:"converter"`
	Rows            []debeziumRow `json:"rows"`
	DeletedAfter    []string      `json:"deleted_after_insert"`
	RowsAfterDelete []debeziumRow `json:"rows_after_delete"`
	Records         []struct {
		Topic   string  `json:"topic"`
		Key     *string `json:"key"`
		Value   *string `json:"value"`
		Headers []struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		} `json:"headers"`
	} `json:"records"`
}

// debeziumContextHeader prefixes the headers Kafka Connect adds to every
// record of a Debezium connector (logical name, task, run id), which the
// relay has no counterpart for.
const debeziumContextHeader = "__debezium.context."

// TestDebeziumShapedTable points the relay, configured as a Debezium user
// would (only OUTBOX_RELAY_TOPIC=outbox.event.${routedByValue}), at a table
// shaped exactly like Debezium's documentation example, on a server with
// track_commit_timestamp = on: rows written before the relay started
// (backfill) and after (stream) become records with the topic, key, value
// and id/type headers Debezium's router gives them, stamped with their
// commit time; a row the stream never saw is dead-lettered by the
// reconciler, which has no created_at to go by; and where the Debezium
// test left a golden fixture of the router's real output, the records must
// equal it but for Kafka Connect's own context headers.
func TestDebeziumShapedTable(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cluster := pgtest.StartCluster(t, map[string]string{"track_commit_timestamp": "on"})
	if err := cluster.CreateDatabase(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, cluster.URL(e.name))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(debeziumTableDDL)

	// Debezium's value is the payload's text with StringConverter only
	// (JsonConverter re-encodes it): only such a fixture can match byte for
	// byte, and the README lists the JsonConverter difference.
	fixtures, _ := filepath.Glob("testdata/debezium-router-*.json")
	var fixture *debeziumFixture
	for _, path := range fixtures {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		f := new(debeziumFixture)
		if err := json.Unmarshal(data, f); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if f.Converter != "string" {
			t.Logf("%s: converter %q, not compared (the value is re-encoded JSON)", path, f.Converter)
			continue
		}
		fixture = f
		t.Logf("comparing with Debezium's output in %s", path)
	}
	if fixture == nil {
		t.Logf("no tests/testdata/debezium-router-*.json with the string converter: checking the router's documented record shape only")
	}
	rows := debeziumTestRows()
	var deleted map[string]bool
	if fixture != nil {
		rows = append(append([]debeziumRow{}, fixture.Rows...), fixture.RowsAfterDelete...)
		deleted = map[string]bool{}
		for _, id := range fixture.DeletedAfter {
			deleted[id] = true
		}
	}

	// Each row in its own transaction, whose commit time the record must carry.
	commitTimes := map[string]time.Time{}
	insert := func(r debeziumRow) {
		t.Helper()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var xid string
		if err := tx.QueryRow(ctx, `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload)
			VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING pg_current_xact_id()::text`,
			r.ID, r.AggregateType, r.AggregateID, r.Type, r.Payload).Scan(&xid); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		var at time.Time
		if err := conn.QueryRow(ctx, "SELECT pg_xact_commit_timestamp($1::text::xid)", xid).Scan(&at); err != nil {
			t.Fatal(err)
		}
		commitTimes[r.ID] = at
		if deleted[r.ID] {
			exec("DELETE FROM public.outbox WHERE id = $1", r.ID)
		}
	}
	// Two rows of one key whose ids sort against their commit order: the
	// backfill must send them by commit time, there being no created_at.
	empty := "{}"
	byCommit := []debeziumRow{
		{"7d1c3e0a-0001-4000-8000-0000000000f2", "order", "by-commit", "order.first", &empty},
		{"7d1c3e0a-0001-4000-8000-0000000000f1", "order", "by-commit", "order.second", &empty},
	}
	half := len(rows) / 2
	for _, r := range append(append([]debeziumRow{}, byCommit...), rows[:half]...) {
		insert(r) // before the slot exists: the backfill sends these
	}
	fixtureRows := len(rows)

	env := e.relayEnv("OUTBOX_RELAY_PG_URL="+cluster.URL(e.name), "OUTBOX_RELAY_TOPIC=outbox.event.${routedByValue}",
		"OUTBOX_RELAY_RECONCILE_GRACE=500ms", "OUTBOX_RELAY_RECONCILE_INTERVAL=200ms", "OUTBOX_RELAY_HEARTBEAT_INTERVAL=200ms")
	relay := startRelayProcess(t, relayBin, env, "run")
	e.waitFor(30*time.Second, "the relay to stream from its slot", func() (bool, string) {
		var active bool
		err := conn.QueryRow(ctx, "SELECT COALESCE(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1", e.name).Scan(&active)
		return err == nil && active, fmt.Sprintf("active %v, err %v", active, err)
	})
	for _, r := range rows[half:] {
		insert(r)
	}
	rows = append(rows, byCommit...)

	want := map[string]bool{}
	byID := map[string]debeziumRow{}
	for _, r := range rows {
		want[r.ID], byID[r.ID] = true, r
	}
	records := e.readEvents(time.Minute, []string{`^outbox\.event\.`}, want)
	got := map[string]*kgo.Record{}
	for _, rec := range records {
		id, _ := header(rec, "id")
		if got[id] == nil {
			got[id] = rec
		}
	}
	for _, r := range rows {
		rec := got[r.ID]
		var stored *string // the jsonb's text, as Postgres normalised it: Debezium's value too
		if r.Payload != nil {
			var s string
			if err := conn.QueryRow(ctx, "SELECT $1::jsonb::text", *r.Payload).Scan(&s); err != nil {
				t.Fatal(err)
			}
			stored = &s
		}
		if rec.Topic != "outbox.event."+r.AggregateType {
			t.Errorf("row %s: topic = %q, want outbox.event.%s", r.ID, rec.Topic, r.AggregateType)
		}
		if string(rec.Key) != r.AggregateID {
			t.Errorf("row %s: key = %q, want the aggregateid %q", r.ID, rec.Key, r.AggregateID)
		}
		if (stored == nil) != (rec.Value == nil) || (stored != nil && string(rec.Value) != *stored) {
			t.Errorf("row %s: value = %q (nil %v), want the payload %v", r.ID, rec.Value, rec.Value == nil, orNil(stored))
		}
		var headers []string
		for _, h := range rec.Headers {
			headers = append(headers, h.Key+"="+string(h.Value))
		}
		if wantHeaders := fmt.Sprint([]string{"id=" + r.ID, "type=" + r.Type}); fmt.Sprint(headers) != wantHeaders {
			t.Errorf("row %s: headers = %v, want %s", r.ID, headers, wantHeaders)
		}
		if at := commitTimes[r.ID].Truncate(time.Millisecond); !rec.Timestamp.Equal(at) {
			t.Errorf("row %s: record timestamp = %v, want its commit time %v", r.ID, rec.Timestamp.UTC(), at.UTC())
		}
	}

	var keyOrder []string
	for _, rec := range records {
		if id, _ := header(rec, "id"); string(rec.Key) == "by-commit" {
			keyOrder = append(keyOrder, id)
		}
	}
	if fmt.Sprint(keyOrder) != fmt.Sprint([]string{byCommit[0].ID, byCommit[1].ID}) {
		t.Errorf("backfilled records of key by-commit in order %v, want commit order %s, %s", keyOrder, byCommit[0].ID, byCommit[1].ID)
	}

	if fixture != nil {
		if len(fixture.Records) != fixtureRows {
			t.Errorf("the fixture holds %d records for %d rows", len(fixture.Records), fixtureRows)
		}
		// Ids per topic and key, in the order Debezium wrote them (its topics
		// have one partition; ours three: only a key's order is kept).
		perKey := map[string][]string{}
		for _, fr := range fixture.Records {
			var id string
			var headers []string
			for _, h := range fr.Headers {
				if strings.HasPrefix(h.Key, debeziumContextHeader) {
					continue
				}
				if h.Key == "id" {
					id = h.Value
				}
				headers = append(headers, h.Key+"="+h.Value)
			}
			key := fr.Topic + "/"
			if fr.Key != nil {
				key += *fr.Key
			}
			perKey[key] = append(perKey[key], id)
			rec := got[id]
			if rec == nil {
				t.Errorf("Debezium wrote a record for id %q, the relay did not", id)
				continue
			}
			var ours []string
			for _, h := range rec.Headers {
				ours = append(ours, h.Key+"="+string(h.Value))
			}
			if rec.Topic != fr.Topic || !sameBytes(rec.Key, fr.Key) || !sameBytes(rec.Value, fr.Value) || fmt.Sprint(ours) != fmt.Sprint(headers) {
				t.Errorf("id %s: relay wrote topic %q key %q value %q headers %v; Debezium wrote topic %q key %v value %v headers %v",
					id, rec.Topic, rec.Key, rec.Value, ours, fr.Topic, orNil(fr.Key), orNil(fr.Value), headers)
			}
		}
		for key, ids := range perKey {
			var ours []string
			for _, rec := range records {
				if id, _ := header(rec, "id"); rec.Topic+"/"+string(rec.Key) == key {
					ours = append(ours, id)
				}
			}
			if fmt.Sprint(ours) != fmt.Sprint(ids) {
				t.Errorf("topic/key %s: relay's order %v, Debezium's %v", key, ours, ids)
			}
		}
	}

	// A row the stream never sees: the reconciler finds it by its commit time.
	lost := debeziumRow{ID: "7d1c3e0a-0001-4000-8000-0000000000ff", AggregateType: "order", AggregateID: "lost", Type: "order.lost"}
	pub := pgx.Identifier{e.name}.Sanitize()
	exec("ALTER PUBLICATION " + pub + " DROP TABLE public.outbox")
	insert(lost)
	exec("ALTER PUBLICATION " + pub + " ADD TABLE public.outbox")
	dead := e.readEvents(30*time.Second, exactTopic(defaultDLQTopic), map[string]bool{lost.ID: true})
	if reason, _ := header(dead[0], "outbox.dlq.reason"); reason != "unacked_after_grace" {
		t.Errorf("the lost row's dead letter has reason %q, want unacked_after_grace", reason)
	}
	e.waitFor(30*time.Second, "the table to be empty", func() (bool, string) {
		var n int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM public.outbox").Scan(&n)
		return err == nil && n == 0, fmt.Sprintf("%d rows, err %v", n, err)
	})
	if !strings.Contains(relay.stderr.String(), "backfilling rows written before the slot existed") {
		t.Errorf("the relay did not backfill the rows written before it started")
	}
	for _, line := range strings.Split(relay.stderr.String(), "\n") {
		if strings.Contains(line, "sweep failed") || strings.Contains(line, "cannot measure the oldest unacked row") {
			t.Errorf("the relay failed to judge a row's age: %s", line)
		}
	}
}

// debeziumTestRows are rows like those of Debezium's documentation, with
// the payloads a jsonb column can hold (NULL, unicode, an array, a string).
func debeziumTestRows() []debeziumRow {
	p := func(s string) *string { return &s }
	return []debeziumRow{
		{"7d1c3e0a-0001-4000-8000-000000000001", "order", "1001", "order.created", p(`{"id": 1001, "lines": [{"sku": "A-1", "qty": 2}], "total": 39.98}`)},
		{"7d1c3e0a-0001-4000-8000-000000000002", "order", "1001", "order.paid", p(`{"status": "paid", "amount": 39.98}`)},
		{"7d1c3e0a-0001-4000-8000-000000000003", "customer", "c-7", "customer.renamed", p(`{"name": "Zoë Ünïcode ✓", "note": "quote \" tab \t"}`)},
		{"7d1c3e0a-0001-4000-8000-000000000004", "customer", "c-7", "customer.noted", nil},
		{"7d1c3e0a-0001-4000-8000-000000000005", "order", "1002", "order.tagged", p(`["a", "b", "c"]`)},
		{"7d1c3e0a-0001-4000-8000-000000000006", "shipment", "s-1", "shipment.text", p(`"just a string"`)},
	}
}

func sameBytes(b []byte, s *string) bool {
	if s == nil {
		return b == nil
	}
	return b != nil && string(b) == *s
}

// TestBackfillOrderWhenCommitTimesStart: on a Debezium-shaped table, a row
// written before track_commit_timestamp was turned on has no commit time;
// the backfill must still send it before the rows of its key written after.
func TestBackfillOrderWhenCommitTimesStart(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cluster := pgtest.StartCluster(t, nil)
	if err := cluster.CreateDatabase(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	connect := func() *pgx.Conn {
		t.Helper()
		conn, err := pgx.Connect(ctx, cluster.URL(e.name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	conn := connect()
	insert := func(conn *pgx.Conn, id string) {
		t.Helper()
		if _, err := conn.Exec(ctx, `INSERT INTO public.outbox VALUES ($1, 'order', 'k', 'order.changed', '{}')`, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, debeziumTableDDL); err != nil {
		t.Fatal(err)
	}
	const before, after = "7d1c3e0a-0001-4000-8000-0000000000b2", "7d1c3e0a-0001-4000-8000-0000000000b1"
	insert(conn, before)
	if _, err := conn.Exec(ctx, "ALTER SYSTEM SET track_commit_timestamp = on"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	conn = connect()
	insert(conn, after)

	startRelayProcess(t, relayBin, e.relayEnv("OUTBOX_RELAY_PG_URL="+cluster.URL(e.name), "OUTBOX_RELAY_TOPIC=outbox.event.${routedByValue}"), "run")
	records := e.readEvents(time.Minute, exactTopic("outbox.event.order"), map[string]bool{before: true, after: true})
	var order []string
	for _, rec := range records {
		id, _ := header(rec, "id")
		order = append(order, id)
	}
	if fmt.Sprint(order) != fmt.Sprint([]string{before, after}) {
		t.Errorf("records of key k in order %v, want %s (no commit time) then %s", order, before, after)
	}
}
