package rows_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/rows"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestScanMatchesDecoder writes rows once and reads them twice: through a
// pgoutput slot and the stream's decoder, and with SQL and Scan. Each row
// must become the same Event, and be refused for the same fault, either way;
// otherwise a record would depend on whether the stream, the backfill or the
// reconciler found its row.
func TestScanMatchesDecoder(t *testing.T) {
	typed := []string{
		`'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 'order', 'key  ', '\x00ff5c4142'::bytea, '{"a": "\u00e9", "a": "x\ud83d\ude00"}', 'Topic '`,
		`'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', 'order', 'k', ''::bytea, '{ "z" : "1", "a":"\ud800\t\"" }', NULL`,
		`'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13', 'order', 'k', NULL, 'null', 'x'`,
		`'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a14', 'order', 'k', 'abc'::bytea, '{"a": ["x"]}', 'x'`,
		`'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a15', 'order', NULL, 'abc'::bytea, NULL, NULL`,
		`'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a16', 'order', 'k', 'abc'::bytea, ' {} ', NULL`,
	}
	tables := []struct {
		name    string
		ddl     string
		inserts []string // full INSERT statements, in the order the rows are read back
	}{
		{name: "jsonb columns", ddl: looseTable, inserts: looseInserts()},
		{
			name: "other column types",
			ddl: `CREATE TABLE public.outbox (
				k serial PRIMARY KEY, id uuid, aggregatetype varchar(10), aggregateid bpchar(5),
				payload bytea, headers json, topic bpchar(6), type text DEFAULT 'T',
				created_at timestamptz DEFAULT now())`,
			inserts: func() []string {
				var stmts []string
				for _, v := range typed {
					stmts = append(stmts, "INSERT INTO public.outbox (id, aggregatetype, aggregateid, payload, headers, topic) VALUES ("+v+")")
				}
				return stmts
			}(),
		},
	}
	for _, tt := range tables {
		t.Run(tt.name, func(t *testing.T) {
			conn, db := newDB(t)
			ctx := testContext(t)
			mustExec(t, conn, tt.ddl)
			mustExec(t, conn, `CREATE PUBLICATION p FOR TABLE public.outbox WITH (publish = 'insert')`)
			mustExec(t, conn, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, db)
			t.Cleanup(func() {
				conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, db)
			})
			// The SQL interface decodes only flushed WAL; the cluster's
			// default (off) leaves the last commits unflushed for a while.
			mustExec(t, conn, `SET synchronous_commit = on`)
			for _, stmt := range tt.inserts {
				mustExec(t, conn, stmt)
			}

			streamed := decodeSlot(t, conn, db, outbox.DefaultMapping(), false)
			if len(streamed) != len(tt.inserts) {
				t.Fatalf("decoded %d inserts from the slot, want %d", len(streamed), len(tt.inserts))
			}

			cols, err := rows.Lookup(ctx, conn, outboxTable, outbox.DefaultMapping())
			if err != nil {
				t.Fatal(err)
			}
			matchScan(t, conn, cols, "k", streamed, nil)
		})
	}
}

// matchScan reads the outbox rows in order with Scan and compares each with
// the decoder's Event of the same row, and then calls more, when set, for
// further checks.
func matchScan(t *testing.T, conn *pgx.Conn, cols *rows.Columns, order string, streamed []decoded, more func(t *testing.T, ev *outbox.Event, row rows.Row, want decoded)) {
	t.Helper()
	r, err := conn.Query(testContext(t), "SELECT "+cols.SelectList()+" FROM public.outbox ORDER BY "+order)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var ev outbox.Event
	for i := 0; r.Next(); i++ {
		row, err := cols.Scan(r, &ev)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprintf("row %d", i+1), func(t *testing.T) {
			want := streamed[i]
			checkEvent(t, &ev, &want.event)
			if row.Problem != want.problem {
				t.Errorf("Problem = %+v, decoder said %+v", row.Problem, want.problem)
			}
			if ev.Problem != want.errText {
				t.Errorf("ev.Problem = %q, decoder's RowError says %q", ev.Problem, want.errText)
			}
			if more != nil {
				more(t, &ev, row, want)
			}
		})
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
}

// looseInserts are the INSERTs of scanCases.
func looseInserts() []string {
	var stmts []string
	for k, tc := range scanCases {
		stmts = append(stmts, insertSQL(k, tc.values))
	}
	return stmts
}

// decoded is one Insert the decoder turned into an Event (a copy).
type decoded struct {
	event   outbox.Event
	problem rows.Problem
	errText string // the RowError's text
}

// decodeSlot reads the slot's pending changes with the SQL interface (the
// same pgoutput bytes a replication connection gets) and decodes them with
// mapping m. With commitTimes, each event gets its transaction's commit
// time from the Begin message, as the relay's pipeline sets it.
func decodeSlot(t *testing.T, conn *pgx.Conn, slot string, m outbox.Mapping, commitTimes bool) []decoded {
	t.Helper()
	r, err := conn.Query(testContext(t), `SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
		'proto_version', '1', 'publication_names', 'p')`, slot)
	if err != nil {
		t.Fatal(err)
	}
	messages, err := pgx.CollectRows(r, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	dec := decoder.New(outboxTable, m)
	var out []decoded
	var commitTime int64
	for _, data := range messages {
		var ev outbox.Event
		msg, err := dec.Decode(data, &ev)
		if msg.Kind == decoder.KindBegin && commitTimes {
			commitTime = msg.CommitTime
		}
		ev.CommitTime = commitTime
		var rowErr *decoder.RowError
		switch {
		case errors.As(err, &rowErr):
		case err != nil:
			t.Fatalf("decode %q: %v", data[:1], err)
		}
		if msg.Kind != decoder.KindInsert {
			continue
		}
		d := decoded{event: ev}
		if rowErr != nil {
			d.problem = rows.Problem{Column: rowErr.Column, Reason: rowErr.Reason}
			d.errText = rowErr.Error()
		}
		out = append(out, d)
	}
	return out
}
