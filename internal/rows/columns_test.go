package rows_test

import (
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/rows"
	"github.com/outbox-relay/outbox-relay/outbox"
)

var outboxTable = outbox.Table{Schema: "public", Name: "outbox"}

// scanOne selects the table's only row with cols and scans it.
func scanOne(t *testing.T, conn rows.Querier, cols *rows.Columns, table string, ev *outbox.Event) rows.Row {
	t.Helper()
	r, err := conn.Query(testContext(t), "SELECT "+cols.SelectList()+" FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.Next() {
		t.Fatalf("no row in %s: %v", table, r.Err())
	}
	row, err := cols.Scan(r, ev)
	if err != nil {
		t.Fatalf("Scan: %v", err)
	}
	if r.Next() {
		t.Fatalf("more than one row in %s", table)
	}
	return row
}

// TestScanOptionalColumnsMissing reads a table that has none of the
// optional columns: they are selected as NULL, and the row is fine.
func TestScanOptionalColumnsMissing(t *testing.T) {
	conn, _ := newDB(t)
	ctx := testContext(t)
	mustExec(t, conn, `CREATE TABLE public.outbox (
		id bigint PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL,
		type text NOT NULL, payload jsonb)`)
	mustExec(t, conn, `INSERT INTO public.outbox VALUES (42, 'order', 'o-1', 'OrderCreated', '{"n":1}')`)

	cols, err := rows.Lookup(ctx, conn, outboxTable, outbox.DefaultMapping())
	if err != nil {
		t.Fatal(err)
	}
	for _, col := range []string{"headers", "topic", "created_at", "published_at"} {
		if cols.Has(col) {
			t.Errorf("Has(%q) = true, want false", col)
		}
	}
	if !cols.Has("payload") {
		t.Errorf(`Has("payload") = false, want true`)
	}
	if got := cols.SelectList(); strings.Count(got, "NULL::") != 5 {
		t.Errorf("SelectList() = %s, want headers, topic, created_at, record and commit time selected as NULL", got)
	}
	if got := cols.Time(); got != "" {
		t.Errorf("Time() = %q with no created_at and track_commit_timestamp off, want \"\"", got)
	}

	ev := outbox.Event{Topic: []byte("stale"), Headers: headers("stale", "x"), LSN: 7, CommitTime: 8, Txn: 9}
	row := scanOne(t, conn, cols, "public.outbox", &ev)
	want := outbox.Event{ID: b("42"), AggregateType: b("order"), AggregateID: b("o-1"), Type: b("OrderCreated"), Payload: b(`{"n": 1}`)}
	checkEvent(t, &ev, &want)
	if row != (rows.Row{}) {
		t.Errorf("Row = %+v, want zero (no created_at, no problem)", row)
	}
}

// TestScanUnmappedOptionalColumns: a mapping that names no headers or topic
// column ignores the table's columns of those names.
func TestScanUnmappedOptionalColumns(t *testing.T) {
	conn, _ := newDB(t)
	mustExec(t, conn, looseTable)
	insertRow(t, conn, 1, map[string]string{"topic": `'t'`, "headers": `'[1]'`})
	m := outbox.DefaultMapping()
	m.Headers, m.Topic, m.CreatedAt = "", "", ""
	cols, err := rows.Lookup(testContext(t), conn, outboxTable, m)
	if err != nil {
		t.Fatal(err)
	}
	var ev outbox.Event
	row := scanOne(t, conn, cols, "public.outbox", &ev)
	want := defaultEvent(func(ev *outbox.Event) { ev.Headers = nil })
	checkEvent(t, &ev, &want)
	if !row.Problem.IsZero() || !row.CreatedAt.IsZero() {
		t.Errorf("Row = %+v, want zero: the unmapped headers are not read", row)
	}
}

// TestScanColumnTypes covers the other column types the decoder accepts:
// the bytes must be the decoder's, whatever the type.
func TestScanColumnTypes(t *testing.T) {
	tests := []struct {
		name  string
		ddl   string
		value string // the VALUES list
		want  outbox.Event
	}{
		{
			name:  "uuid id in canonical form",
			ddl:   `id uuid, aggregatetype varchar(20), aggregateid uuid, type bpchar(4), payload text, headers jsonb, topic varchar, created_at timestamptz`,
			value: `'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 'order', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', 'T', 'not json at all', NULL, NULL, now()`,
			want: outbox.Event{
				ID: b("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), AggregateType: b("order"),
				AggregateID: b("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12"), Type: b("T   "), Payload: b("not json at all"),
			},
		},
		{
			name:  "bytea payload is the raw bytes",
			ddl:   `id int4, aggregatetype text, aggregateid text, type text, payload bytea, headers jsonb, topic text, created_at timestamptz`,
			value: `-7, 'order', 'o', 'T', '\x00ff5c4142'::bytea, NULL, NULL, now()`,
			want:  outbox.Event{ID: b("-7"), AggregateType: b("order"), AggregateID: b("o"), Type: b("T"), Payload: []byte{0, 0xff, '\\', 'A', 'B'}},
		},
		{
			name:  "empty bytea payload is not NULL",
			ddl:   `id int2, aggregatetype text, aggregateid text, type text, payload bytea, headers jsonb, topic text, created_at timestamptz`,
			value: `1, 'order', 'o', 'T', ''::bytea, NULL, NULL, now()`,
			want:  outbox.Event{ID: b("1"), AggregateType: b("order"), AggregateID: b("o"), Type: b("T"), Payload: []byte{}},
		},
		{
			name: "json columns keep their text as written",
			ddl:  `id text, aggregatetype text, aggregateid text, type text, payload json, headers json, topic text, created_at timestamp`,
			value: `'x', 'order', 'o', 'T', '{"b":1,  "a":2, "a":3}',` +
				` '{ "z" : "1", "a":"\u00e9\ud800", "z": "2" }', NULL, now()`,
			want: outbox.Event{
				ID: b("x"), AggregateType: b("order"), AggregateID: b("o"), Type: b("T"),
				Payload: b(`{"b":1,  "a":2, "a":3}`),
				// Document order, duplicates kept, a lone surrogate becomes U+FFFD.
				Headers: headers("z", "1", "a", "é\uFFFD", "z", "2"),
			},
		},
	}
	conn, _ := newDB(t)
	ctx := testContext(t)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			schema := "s" + string(rune('a'+i))
			mustExec(t, conn, "CREATE SCHEMA "+schema)
			mustExec(t, conn, "CREATE TABLE "+schema+".outbox ("+tt.ddl+")")
			mustExec(t, conn, "INSERT INTO "+schema+".outbox VALUES ("+tt.value+")")
			cols, err := rows.Lookup(ctx, conn, outbox.Table{Schema: schema, Name: "outbox"}, outbox.DefaultMapping())
			if err != nil {
				t.Fatal(err)
			}
			var ev outbox.Event
			row := scanOne(t, conn, cols, schema+".outbox", &ev)
			want := tt.want
			if strings.Contains(tt.ddl, "created_at timestamptz") {
				// A timestamptz is the record time; a timestamp (without
				// time zone) is not.
				want.Time = row.CreatedAt.UnixNano()
			}
			checkEvent(t, &ev, &want)
			if !row.Problem.IsZero() {
				t.Errorf("Problem = %v, want none", row.Problem)
			}
			if age := time.Since(row.CreatedAt); age < -time.Hour*24 || age > 24*time.Hour {
				t.Errorf("CreatedAt = %v, want about now", row.CreatedAt)
			}
		})
	}
}

// TestScanReusesEvent scans rows into one recycled Event: the buffer is
// reused and nothing of an earlier row survives into a later one.
func TestScanReusesEvent(t *testing.T) {
	conn, _ := newDB(t)
	ctx := testContext(t)
	mustExec(t, conn, looseTable)
	insertRow(t, conn, 1, map[string]string{"topic": `'orders.v1'`, "payload": `'{"big": "` + strings.Repeat("x", 1000) + `"}'`})
	insertRow(t, conn, 2, map[string]string{"id": `'2'`, "payload": `NULL`, "headers": `NULL`})
	insertRow(t, conn, 3, map[string]string{"id": `'3'`, "aggregateid": `NULL`, "headers": `'{"x": 1}'`})
	cols, err := rows.Lookup(ctx, conn, outboxTable, outbox.DefaultMapping())
	if err != nil {
		t.Fatal(err)
	}
	r, err := conn.Query(ctx, "SELECT "+cols.SelectList()+" FROM public.outbox ORDER BY k")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var ev outbox.Event
	var first *byte
	for i := 0; r.Next(); i++ {
		row, err := cols.Scan(r, &ev)
		if err != nil {
			t.Fatal(err)
		}
		switch i {
		case 0:
			first = &ev.ID[0]
		case 1:
			want := defaultEvent(func(ev *outbox.Event) { ev.ID, ev.Payload, ev.Headers = b("2"), nil, nil })
			want.Time = row.CreatedAt.UnixNano()
			checkEvent(t, &ev, &want)
			if &ev.ID[0] != first {
				t.Errorf("second row got a new buffer, want the first row's reused")
			}
		case 2:
			want := defaultEvent(func(ev *outbox.Event) { ev.ID, ev.AggregateID, ev.Headers = b("3"), nil, nil })
			want.Time = row.CreatedAt.UnixNano()
			checkEvent(t, &ev, &want)
			if row.Problem.Column != "aggregateid" {
				t.Errorf("Problem = %v, want aggregateid is null", row.Problem)
			}
		}
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	// The fields are capped: appending to one cannot overwrite the next.
	_ = append(ev.ID, "XXXX"...)
	if string(ev.AggregateType) != "order" {
		t.Errorf("AggregateType = %q after appending to ID, want %q", ev.AggregateType, "order")
	}
}

func TestLookupErrors(t *testing.T) {
	conn, _ := newDB(t)
	ctx := testContext(t)
	mustExec(t, conn, `CREATE TABLE public.outbox (id text, aggregatetype text, aggregateid text, type text)`)
	noColumn := outbox.DefaultMapping()
	noColumn.Type = ""
	tests := []struct {
		name    string
		table   outbox.Table
		mapping outbox.Mapping
		wantErr string
	}{
		{"missing table", outbox.Table{Schema: "public", Name: "nope"}, outbox.DefaultMapping(), "table public.nope does not exist"},
		{"missing payload column", outboxTable, outbox.DefaultMapping(), `no column "payload", which the column mapping requires for Payload`},
		{"mapping names no type column", outboxTable, noColumn, "names no column for Type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := rows.Lookup(ctx, conn, tt.table, tt.mapping)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Lookup error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
