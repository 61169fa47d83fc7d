package tests

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

var updateDebeziumGolden = flag.Bool("debezium.update", false,
	"rewrite tests/testdata/debezium-router-*.json from what Debezium produced")

// routerRow is an outbox row of the Debezium golden test; payload is the
// jsonb literal, nil for NULL.
type routerRow struct {
	ID            string  `json:"id"`
	AggregateType string  `json:"aggregatetype"`
	AggregateID   string  `json:"aggregateid"`
	Type          string  `json:"type"`
	Payload       *string `json:"payload"`
	// PayloadText is payload::text as Postgres prints it (filled in from
	// the database): jsonb normalises spacing, key order and duplicates.
	PayloadText *string `json:"payload_text"`
}

// debeziumRows cover what a router may treat differently: nested objects
// and arrays, jsonb's key order, escapes and non-ASCII text, numbers beyond
// int64 and double precision, a NULL payload, an empty object, an array,
// a bare string, and several rows of one key.
var debeziumRows = []routerRow{
	{ID: "7d1c3e0a-0001-4000-8000-000000000001", AggregateType: "order", AggregateID: "1001", Type: "order.created",
		Payload: jsonText(`{"id": 1001, "lines": [{"sku": "A-1", "qty": 2}], "total": 39.98}`)},
	{ID: "7d1c3e0a-0001-4000-8000-000000000002", AggregateType: "order", AggregateID: "1001", Type: "order.paid",
		Payload: jsonText(`{"status": "paid", "paidAt": "2026-12-07T01:00:00Z", "amount": 39.98, "ok": true}`)},
	{ID: "7d1c3e0a-0001-4000-8000-000000000003", AggregateType: "customer", AggregateID: "c-7", Type: "customer.renamed",
		Payload: jsonText(`{"name": "Zoë Ünïcode ✓", "note": "quote \" backslash \\ newline \n tab \t"}`)},
	{ID: "7d1c3e0a-0001-4000-8000-000000000004", AggregateType: "customer", AggregateID: "c-7", Type: "customer.noted",
		Payload: nil},
	debeziumArrayRow,
	debeziumNumbersRow,
	{ID: "7d1c3e0a-0001-4000-8000-000000000007", AggregateType: "shipment", AggregateID: "s-1", Type: "shipment.empty",
		Payload: jsonText(`{}`)},
	{ID: "7d1c3e0a-0001-4000-8000-000000000008", AggregateType: "shipment", AggregateID: "s-1", Type: "shipment.text",
		Payload: jsonText(`"just a string"`)},
}

// debeziumArrayRow has a top-level array as its payload.
var debeziumArrayRow = routerRow{ID: "7d1c3e0a-0001-4000-8000-000000000005", AggregateType: "order",
	AggregateID: "1002", Type: "order.tagged", Payload: jsonText(`["a", "b", "c"]`)}

// debeziumNumbersRow has numbers beyond int64 and float64's usual range.
var debeziumNumbersRow = routerRow{ID: "7d1c3e0a-0001-4000-8000-000000000006", AggregateType: "order",
	AggregateID: "1003", Type: "order.numbers",
	Payload: jsonText(`{"big": 12345678901234567890, "exp": 1.5e300, "small": 0.000001, "neg": -7}`)}

// deletedDebeziumRow is deleted after the inserts (as ACK_MODE=delete
// does), and then debeziumRowAfterDelete is inserted: the router drops
// deletes, so nothing comes between that row's record and the others.
const deletedDebeziumRow = "7d1c3e0a-0001-4000-8000-000000000007"

var debeziumRowAfterDelete = routerRow{ID: "7d1c3e0a-0001-4000-8000-000000000009", AggregateType: "order",
	AggregateID: "1001", Type: "order.shipped", Payload: jsonText(`{"carrier": "x", "after": "the delete"}`)}

// debeziumGolden is a fixture file: the rows, the settings that matter,
// and exactly what Debezium's router produced for them.
type debeziumGolden struct {
	About     string            `json:"about"`
	Debezium  string            `json:"debezium"`
	Converter string            `json:"converter"`
	Settings  map[string]string `json:"settings"`
	// Rows are inserted in one transaction, then Deleted is deleted in a
	// second one, then RowsAfterDelete are inserted in a third.
	Rows            []routerRow    `json:"rows"`
	Deleted         []string       `json:"deleted_after_insert"`
	RowsAfterDelete []routerRow    `json:"rows_after_delete"`
	Records         []goldenRecord `json:"records"`
	// FailsTask are rows the router cannot take with this converter: the
	// connector's task fails on them (Connect stops it for good) with
	// Error, the first line of its trace.
	FailsTask []failingRow `json:"fails_task,omitempty"`
}

// goldenRecord is one record as read back. Key and Value are the bytes as
// UTF-8 text (all of them are valid UTF-8), nil when absent.
type goldenRecord struct {
	Topic     string         `json:"topic"`
	Partition int32          `json:"partition"`
	Key       *string        `json:"key"`
	Value     *string        `json:"value"`
	Headers   []goldenHeader `json:"headers"`
}

type failingRow struct {
	Row   routerRow `json:"row"`
	Error string    `json:"error"`
}

type goldenHeader struct {
	Key   string  `json:"key"`
	Value *string `json:"value"`
}

// TestDebeziumOutboxRouter runs Debezium's PostgreSQL connector with the
// outbox event router (Kafka Connect standalone, pgoutput, its own slot)
// against a real broker, inserts outbox rows with jsonb payloads, and reads
// back with an independent client what it produced, once per converter:
// one record per inserted row in outbox.event.<aggregatetype>, key
// aggregateid, the row id in the "id" header, nothing for a delete. The
// records must equal tests/testdata/debezium-router-<converter>.json, the
// fixture the relay's Debezium drop-in is compared with
// (-debezium.update rewrites it).
func TestDebeziumOutboxRouter(t *testing.T) {
	requireDebezium(t)
	k := startApache(t, devenv.ApacheOptions{})
	topics := []string{"outbox.event.order", "outbox.event.customer", "outbox.event.shipment"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, topic := range topics {
		if err := k.CreateTopic(ctx, topic, 1, 1, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, converter := range []string{devenv.DebeziumStringConverter, devenv.DebeziumJSONConverter} {
		t.Run(converter, func(t *testing.T) {
			// JSON expansion cannot take a top-level array or a number
			// beyond int64: the task fails on them, so each is tried
			// last, by a connector of its own.
			rows, failing := debeziumRows, []routerRow(nil)
			if converter == devenv.DebeziumJSONConverter {
				rows, failing = nil, []routerRow{debeziumArrayRow, debeziumNumbersRow}
				for _, r := range debeziumRows {
					if r.ID != debeziumArrayRow.ID && r.ID != debeziumNumbersRow.ID {
						rows = append(rows, r)
					}
				}
			}
			e := newDatabaseEnv(t)
			e.brokers = k.InternalAddrs()
			e.createTable()
			before, err := devenv.EndOffsets(ctx, e.brokers, []string{`^outbox\.event\.`})
			if err != nil {
				t.Fatal(err)
			}
			dbz := startDebezium(t, e, devenv.DebeziumOptions{Converter: converter})
			rows = e.insertDebeziumRows(rows)
			e.exec("DELETE FROM public.outbox WHERE id = $1", deletedDebeziumRow)
			after := e.insertDebeziumRows([]routerRow{debeziumRowAfterDelete})

			all := append(append([]routerRow(nil), rows...), after...)
			records := e.readDebeziumRecords(before, len(all))
			got := goldenRecords(records, all)
			checkRouterRecords(t, converter, all, got)
			var failed []failingRow
			for i, r := range failing {
				d := startDebezium(t, e, devenv.DebeziumOptions{Converter: converter,
					Slot: fmt.Sprintf("dbz_%s_fail%d", e.name, i), Publication: "dbz_" + e.name})
				failed = append(failed, e.expectTaskFailure(d, r))
				if err := d.Close(); err != nil {
					t.Error(err)
				}
				// Close drops the slot, which would pin WAL otherwise.
				slot := fmt.Sprintf("dbz_%s_fail%d", e.name, i)
				if n := e.queryInt("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", slot); n != 0 {
					t.Errorf("slot %s still exists after Close", slot)
				}
			}

			golden := debeziumGolden{
				About: "What Debezium's outbox event router (Kafka Connect standalone) produced for these rows; " +
					"written by TestDebeziumOutboxRouter -debezium.update. key/value are the record's bytes as UTF-8, " +
					"null when absent; each topic has one partition, records are in commit order. " +
					"Record timestamps (the commit time) are left out. Debezium adds four __debezium.context.* headers to " +
					"every record (extended.headers.enabled, on by default); runId's value, new each run, is a placeholder here.",
				Debezium:        debeziumVersion(t),
				Converter:       converter,
				Settings:        dbz.RouterSettings(),
				Rows:            rows,
				Deleted:         []string{deletedDebeziumRow},
				RowsAfterDelete: after,
				Records:         got,
				FailsTask:       failed,
			}
			compareGolden(t, filepath.Join("testdata", "debezium-router-"+converter+".json"), golden)
		})
	}
}

// expectTaskFailure inserts row and waits until the connector's task has
// FAILED on it, returning the first line of the trace.
func (e *testEnv) expectTaskFailure(d *devenv.Debezium, row routerRow) failingRow {
	e.t.Helper()
	e.insertDebeziumRows([]routerRow{row})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var trace string
	e.waitFor(time.Minute, fmt.Sprintf("the task to fail on row %s", row.ID), func() (bool, string) {
		st, err := d.Status(ctx)
		if err != nil {
			return false, err.Error()
		}
		if len(st.Tasks) == 0 {
			return false, "no task"
		}
		trace = st.Tasks[0].Trace
		return st.Tasks[0].State == "FAILED", "task " + st.Tasks[0].State
	})
	first, _, _ := strings.Cut(trace, "\n")
	// The cause says what it could not take.
	for _, line := range strings.Split(trace, "\n") {
		if strings.HasPrefix(line, "Caused by: ") {
			first = strings.TrimSpace(line)
		}
	}
	return failingRow{Row: row, Error: first}
}

// requireDebezium skips the test when java or mvn is missing, and fails it
// instead under CI.
func requireDebezium(t *testing.T) {
	t.Helper()
	requireApache(t)
	if err := devenv.DebeziumAvailable(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("debezium test cannot run: %v", err)
		}
		t.Skipf("debezium test skipped: %v", err)
	}
}

// startDebezium starts Debezium on e's database with a slot and
// publication of its own (named after the database unless opts say), stopped (and its slot dropped) when the test
// ends; its log is shown when the test fails.
func startDebezium(t *testing.T, e *testEnv, opts devenv.DebeziumOptions) *devenv.Debezium {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	opts.PostgresURL = pg.URL(e.name)
	opts.Brokers = e.brokers
	if opts.Slot == "" {
		opts.Slot, opts.Publication = "dbz_"+e.name, "dbz_"+e.name
	}
	start := time.Now()
	d, err := devenv.StartDebezium(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("debezium (%s converter) streaming %.1fs after start", opts.Converter, time.Since(start).Seconds())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kafka connect log, last 60 lines:\n%s", d.LogTail(60))
		}
		if err := d.Close(); err != nil {
			t.Errorf("close debezium: %v", err)
		}
	})
	return d
}

// insertDebeziumRows inserts rows in one transaction and returns them with
// PayloadText filled in from the database.
func (e *testEnv) insertDebeziumRows(rows []routerRow) []routerRow {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tx, err := e.db.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	out := make([]routerRow, len(rows))
	for i, r := range rows {
		err := tx.QueryRow(ctx, `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload)
			VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING payload::text`,
			r.ID, r.AggregateType, r.AggregateID, r.Type, r.Payload).Scan(&r.PayloadText)
		if err != nil {
			e.t.Fatalf("insert row %s: %v", r.ID, err)
		}
		out[i] = r
	}
	if err := tx.Commit(ctx); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// readDebeziumRecords reads the outbox topics past the offsets before
// until n records arrived, and then what else they hold (a record for the
// delete would come before the last row's).
func (e *testEnv) readDebeziumRecords(before map[devenv.TopicPartition]int64, n int) []*kgo.Record {
	e.t.Helper()
	ctx, cancel := e.context(2 * time.Minute)
	defer cancel()
	fresh := func(all []*kgo.Record) []*kgo.Record {
		var out []*kgo.Record
		for _, r := range all {
			if r.Offset >= before[devenv.TopicPartition{Topic: r.Topic, Partition: r.Partition}] {
				out = append(out, r)
			}
		}
		return out
	}
	all, err := devenv.ReadRecords(ctx, e.brokers, []string{`^outbox\.event\.`}, func(got []*kgo.Record) bool {
		return len(fresh(got)) >= n
	})
	if err != nil {
		e.t.Fatalf("%v: %d of %d records arrived", err, len(fresh(all)), n)
	}
	rest, err := devenv.ReadAll(ctx, e.brokers, []string{`^outbox\.event\.`})
	if err != nil {
		e.t.Fatal(err)
	}
	return fresh(rest)
}

// debeziumRunIDHeader is one of the headers Debezium adds to every record
// (extended.headers.enabled, on by default); its value is new each run,
// so the fixture holds a placeholder.
const debeziumRunIDHeader = "__debezium.context.runId"

// goldenRecords describes records in the fixture's terms, in the order of
// rows (each topic's records are in commit order already).
func goldenRecords(records []*kgo.Record, rows []routerRow) []goldenRecord {
	index := make(map[string]int)
	for i, r := range rows {
		index[r.ID] = i
	}
	records = slices.Clone(records)
	slices.SortStableFunc(records, func(a, b *kgo.Record) int {
		ia, _ := header(a, "id")
		ib, _ := header(b, "id")
		return cmp.Compare(index[ia], index[ib])
	})
	text := func(b []byte) *string {
		if b == nil {
			return nil
		}
		s := string(b)
		return &s
	}
	out := make([]goldenRecord, 0, len(records))
	for _, r := range records {
		g := goldenRecord{Topic: r.Topic, Partition: r.Partition, Key: text(r.Key), Value: text(r.Value)}
		for _, h := range r.Headers {
			v := text(h.Value)
			if h.Key == debeziumRunIDHeader && v != nil {
				v = jsonText("<a UUID, new each run>")
			}
			g.Headers = append(g.Headers, goldenHeader{Key: h.Key, Value: v})
		}
		out = append(out, g)
	}
	return out
}

// checkRouterRecords checks the router's contract independently of the
// fixture: one record per row, in its topic, keyed by aggregateid, with
// the id and type headers, in commit order per key, and the payload as
// the converter writes it.
func checkRouterRecords(t *testing.T, converter string, rows []routerRow, got []goldenRecord) {
	t.Helper()
	byID := make(map[string]routerRow)
	for _, r := range rows {
		byID[r.ID] = r
	}
	seen := make(map[string]int)
	lastIndex := make(map[string]int) // per key: the row index of its last record
	index := make(map[string]int)
	for i, r := range rows {
		index[r.ID] = i
	}
	for _, rec := range got {
		id := goldenHeaderValue(rec, "id")
		row, ok := byID[id]
		if !ok {
			t.Errorf("record with id header %q matches no row: %+v", id, rec)
			continue
		}
		seen[id]++
		if want := "outbox.event." + row.AggregateType; rec.Topic != want {
			t.Errorf("row %s: topic %q, want %q", id, rec.Topic, want)
		}
		if typ := goldenHeaderValue(rec, "type"); typ != row.Type {
			t.Errorf("row %s: type header %q, want %q", id, typ, row.Type)
		}
		wantKey := row.AggregateID
		if converter == devenv.DebeziumJSONConverter {
			wantKey = jsonString(row.AggregateID)
		}
		if rec.Key == nil || *rec.Key != wantKey {
			t.Errorf("row %s: key %v, want %q", id, shown(rec.Key), wantKey)
		}
		switch {
		case row.PayloadText == nil && converter == devenv.DebeziumJSONConverter:
			// JsonConverter writes the null as JSON text.
			if rec.Value == nil || *rec.Value != "null" {
				t.Errorf("row %s: value %v for a NULL payload, want null as JSON", id, shown(rec.Value))
			}
		case row.PayloadText == nil:
			if rec.Value != nil {
				t.Errorf("row %s: value %q for a NULL payload, want none", id, *rec.Value)
			}
		case rec.Value == nil:
			t.Errorf("row %s: no value, want the payload", id)
		case converter == devenv.DebeziumStringConverter:
			if *rec.Value != *row.PayloadText {
				t.Errorf("row %s: value %q, want the payload's text %q", id, *rec.Value, *row.PayloadText)
			}
		default:
			if !json.Valid([]byte(*rec.Value)) {
				t.Errorf("row %s: value %q is not JSON", id, *rec.Value)
			}
		}
		if prev, ok := lastIndex[rec.keyScope()]; ok && prev > index[id] {
			t.Errorf("row %s: after row %d of the same key, want commit order", id, prev)
		}
		lastIndex[rec.keyScope()] = index[id]
	}
	for _, r := range rows { // the deleted row too: its insert's record
		if seen[r.ID] != 1 {
			t.Errorf("row %s: %d records, want 1", r.ID, seen[r.ID])
		}
	}
}

// keyScope is the record's topic and key, the scope of per-key order.
func (g goldenRecord) keyScope() string { return g.Topic + "\x00" + shown(g.Key) }

func goldenHeaderValue(g goldenRecord, key string) string {
	for _, h := range g.Headers {
		if h.Key == key {
			return shown(h.Value)
		}
	}
	return ""
}

func shown(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// compareGolden compares got with the fixture at path, or writes it there
// under -debezium.update.
func compareGolden(t *testing.T, path string, got debeziumGolden) {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(got); err != nil {
		t.Fatal(err)
	}
	if *updateDebeziumGolden {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -debezium.update to write it)", err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("Debezium's records differ from %s (-debezium.update rewrites it):\n got: %s\nwant: %s",
			path, firstDifference(buf.String(), string(want)), firstDifference(string(want), buf.String()))
	}
}

// firstDifference is the line of a where a and b first differ.
func firstDifference(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range al {
		if i >= len(bl) || al[i] != bl[i] {
			return fmt.Sprintf("line %d: %s", i+1, strings.TrimSpace(al[i]))
		}
	}
	return "(a prefix of the other)"
}

// debeziumVersion is the version java/debezium/pom.xml names.
func debeziumVersion(t *testing.T) string {
	t.Helper()
	root, err := devenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	pom, err := os.ReadFile(filepath.Join(root, "java", "debezium", "pom.xml"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, _ := strings.Cut(string(pom), "<debezium.version>")
	v, _, _ := strings.Cut(after, "</debezium.version>")
	return v
}
