package rows_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/rows"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// looseTable is an outbox table without NOT NULL constraints, so that rows
// the decoder must refuse can be written; k identifies a row in a test.
const looseTable = `CREATE TABLE public.outbox (
	k             int PRIMARY KEY,
	id            text,
	aggregatetype text,
	aggregateid   text,
	type          text,
	payload       jsonb,
	headers       jsonb,
	topic         text,
	created_at    timestamptz DEFAULT now(),
	published_at  timestamptz
)`

// defaultRow is the SQL of a row every case starts from.
var defaultRow = map[string]string{
	"id":            `'id-1'`,
	"aggregatetype": `'order'`,
	"aggregateid":   `'o-1'`,
	"type":          `'OrderCreated'`,
	"payload":       `'{"n": 1}'`,
	"headers":       `'{"trace": "abc"}'`,
	"topic":         `NULL`,
}

// defaultEvent is what defaultRow becomes.
func defaultEvent(edit func(ev *outbox.Event)) outbox.Event {
	ev := outbox.Event{
		ID:            b("id-1"),
		AggregateType: b("order"),
		AggregateID:   b("o-1"),
		Type:          b("OrderCreated"),
		Payload:       b(`{"n": 1}`),
		Headers:       headers("trace", "abc"),
	}
	if edit != nil {
		edit(&ev)
	}
	return ev
}

var headersProblem = rows.Problem{Column: "headers", Reason: "headers must be a JSON object of string values"}

type scanCase struct {
	name        string
	values      map[string]string // SQL expressions replacing defaultRow's
	want        outbox.Event
	wantProblem rows.Problem
}

// scanCases are rows of looseTable and what Scan (and the decoder) make of them.
var scanCases = []scanCase{
	{name: "default row", want: defaultEvent(nil)},
	{
		name:   "full row with topic",
		values: map[string]string{"topic": `'orders.v1'`, "headers": `'{"tenant": "t1", "trace": "abc"}'`},
		want: defaultEvent(func(ev *outbox.Event) {
			ev.Topic = b("orders.v1")
			// jsonb keeps keys shorter first, then bytewise: document order of its text.
			ev.Headers = headers("trace", "abc", "tenant", "t1")
		}),
	},
	{
		name:   "payload is jsonb text as Postgres prints it",
		values: map[string]string{"payload": `'{"b":1,  "a" : [1, 2.50, "é😀\u00e9"]}'`},
		want:   defaultEvent(func(ev *outbox.Event) { ev.Payload = b(`{"a": [1, 2.50, "é😀é"], "b": 1}`) }),
	},
	{
		name:   "null payload",
		values: map[string]string{"payload": `NULL`},
		want:   defaultEvent(func(ev *outbox.Event) { ev.Payload = nil }),
	},
	{
		name:   "json null payload is not SQL NULL",
		values: map[string]string{"payload": `'null'`},
		want:   defaultEvent(func(ev *outbox.Event) { ev.Payload = b("null") }),
	},
	{
		name:   "empty topic is not NULL",
		values: map[string]string{"topic": `''`},
		want:   defaultEvent(func(ev *outbox.Event) { ev.Topic = b("") }),
	},
	{
		name:   "headers with escapes and unicode",
		values: map[string]string{"headers": `'{"k\"ey": "line\nbreak \u00e9 😀 \ud83d\ude00 \/ \t", "ctl": "\u0001\\"}'`},
		want: defaultEvent(func(ev *outbox.Event) {
			ev.Headers = headers("ctl", "\x01\\", `k"ey`, "line\nbreak é 😀 😀 / \t")
		}),
	},
	{
		name:   "headers duplicate key: jsonb keeps the last",
		values: map[string]string{"headers": `'{"a": "1", "a": "2"}'`},
		want:   defaultEvent(func(ev *outbox.Event) { ev.Headers = headers("a", "2") }),
	},
	{
		name:   "headers empty string value",
		values: map[string]string{"headers": `'{"a": ""}'`},
		want:   defaultEvent(func(ev *outbox.Event) { ev.Headers = headers("a", "") }),
	},
	{
		name:   "headers SQL NULL",
		values: map[string]string{"headers": `NULL`},
		want:   defaultEvent(func(ev *outbox.Event) { ev.Headers = nil }),
	},
	{
		name:   "headers JSON null",
		values: map[string]string{"headers": `'null'`},
		want:   defaultEvent(func(ev *outbox.Event) { ev.Headers = nil }),
	},
	{
		name:   "headers empty object",
		values: map[string]string{"headers": `'{}'`},
		want:   defaultEvent(func(ev *outbox.Event) { ev.Headers = nil }),
	},

	// Rows that cannot become records: a Problem, the rest filled.
	{
		name:        "headers array",
		values:      map[string]string{"headers": `'["a", "b"]'`},
		want:        defaultEvent(func(ev *outbox.Event) { ev.Headers = nil }),
		wantProblem: headersProblem,
	},
	{
		name:        "headers number value",
		values:      map[string]string{"headers": `'{"a": "x", "b": 1}'`},
		want:        defaultEvent(func(ev *outbox.Event) { ev.Headers = nil }),
		wantProblem: headersProblem,
	},
	{
		name:        "headers nested object",
		values:      map[string]string{"headers": `'{"a": {"b": "c"}}'`},
		want:        defaultEvent(func(ev *outbox.Event) { ev.Headers = nil }),
		wantProblem: headersProblem,
	},
	{
		name:        "headers string",
		values:      map[string]string{"headers": `'"a"'`},
		want:        defaultEvent(func(ev *outbox.Event) { ev.Headers = nil }),
		wantProblem: headersProblem,
	},
	{
		name:        "null aggregateid",
		values:      map[string]string{"aggregateid": `NULL`},
		want:        defaultEvent(func(ev *outbox.Event) { ev.AggregateID = nil }),
		wantProblem: rows.Problem{Column: "aggregateid", Reason: "is null"},
	},
	{
		name:        "null id",
		values:      map[string]string{"id": `NULL`},
		want:        defaultEvent(func(ev *outbox.Event) { ev.ID = nil }),
		wantProblem: rows.Problem{Column: "id", Reason: "is null"},
	},
	{
		name:        "null aggregatetype",
		values:      map[string]string{"aggregatetype": `NULL`},
		want:        defaultEvent(func(ev *outbox.Event) { ev.AggregateType = nil }),
		wantProblem: rows.Problem{Column: "aggregatetype", Reason: "is null"},
	},
	{
		name:        "first of two faults is reported",
		values:      map[string]string{"type": `NULL`, "headers": `'[]'`},
		want:        defaultEvent(func(ev *outbox.Event) { ev.Type, ev.Headers = nil, nil }),
		wantProblem: rows.Problem{Column: "type", Reason: "is null"},
	},
}

func TestScan(t *testing.T) {
	conn, _ := newDB(t)
	ctx := testContext(t)
	mustExec(t, conn, looseTable)
	cols, err := rows.Lookup(ctx, conn, outbox.Table{Schema: "public", Name: "outbox"}, outbox.DefaultMapping())
	if err != nil {
		t.Fatal(err)
	}
	var ev outbox.Event // recycled across the cases, as the callers do
	for k, tt := range scanCases {
		t.Run(tt.name, func(t *testing.T) {
			insertRow(t, conn, k, tt.values)
			r, err := conn.Query(ctx, "SELECT "+cols.SelectList()+" FROM public.outbox WHERE k = $1", k)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if !r.Next() {
				t.Fatalf("row k=%d not found: %v", k, r.Err())
			}
			row, err := cols.Scan(r, &ev)
			if err != nil {
				t.Fatalf("Scan: %v", err)
			}
			want := tt.want
			want.Time = row.CreatedAt.UnixNano() // the record time is created_at, checked below
			checkEvent(t, &ev, &want)
			if row.Problem != tt.wantProblem {
				t.Errorf("Problem = %+v, want %+v", row.Problem, tt.wantProblem)
			}
			wantText := ""
			if !tt.wantProblem.IsZero() {
				wantText = "row id=" + string(tt.want.ID) + " of public.outbox: " + tt.wantProblem.String()
				if tt.want.ID == nil {
					wantText = "row of public.outbox: " + tt.wantProblem.String()
				}
			}
			if ev.Problem != wantText {
				t.Errorf("ev.Problem = %q, want %q", ev.Problem, wantText)
			}
			if age := time.Since(row.CreatedAt); age < 0 || age > time.Minute {
				t.Errorf("CreatedAt = %v, want about now", row.CreatedAt)
			}
		})
	}
}

// insertRow inserts row k of looseTable: defaultRow, with values replacing
// some of its columns.
func insertRow(t *testing.T, conn *pgx.Conn, k int, values map[string]string) {
	t.Helper()
	mustExec(t, conn, insertSQL(k, values))
}

func insertSQL(k int, values map[string]string) string {
	names := []string{"k"}
	exprs := []string{strconv.Itoa(k)}
	for _, col := range []string{"id", "aggregatetype", "aggregateid", "type", "payload", "headers", "topic"} {
		expr, ok := values[col]
		if !ok {
			expr = defaultRow[col]
		}
		names, exprs = append(names, col), append(exprs, expr)
	}
	return fmt.Sprintf("INSERT INTO public.outbox (%s) VALUES (%s)", strings.Join(names, ", "), strings.Join(exprs, ", "))
}

func TestProblemString(t *testing.T) {
	if got := (rows.Problem{}).String(); got != "" {
		t.Errorf("zero Problem.String() = %q, want empty", got)
	}
	if got, want := (rows.Problem{Column: "aggregateid", Reason: "is null"}).String(), "column aggregateid: is null"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if !strings.Contains(headersProblem.String(), "headers") {
		t.Errorf("String() = %q, want the column named", headersProblem.String())
	}
}
