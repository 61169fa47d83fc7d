package rows_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/devenv/pgtest"
	"github.com/outbox-relay/outbox-relay/internal/rows"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestScanMatchesDecoderMapped is TestScanMatchesDecoder for what a Debezium
// user's table brings: columns under other names, header columns of several
// types, a timestamp column (or none, the commit time standing in), on a
// cluster of its own with track_commit_timestamp = on. Each row must become
// the same Event either way, record time and headers included.
func TestScanMatchesDecoderMapped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster := pgtest.StartCluster(t, map[string]string{"track_commit_timestamp": "on"})

	debezium := outbox.DefaultMapping()
	debezium.HeaderColumns = []outbox.HeaderColumn{{Column: "type", Header: "eventType"}}
	custom := outbox.Mapping{
		ID: "event_id", AggregateType: "route", AggregateID: "k", Type: "kind", Payload: "body", Headers: "hdrs",
		CreatedAt: "ts",
		HeaderColumns: []outbox.HeaderColumn{
			{Column: "traceparent", Header: "traceparent"}, {Column: "tracestate", Header: "tracestate"},
			{Column: "blob", Header: "b"}, {Column: "n", Header: "num"}, {Column: "k", Header: "padded"}, {Column: "ts", Header: "ts-text"},
		},
	}
	tables := []struct {
		name    string
		ddl     string
		mapping outbox.Mapping
		inserts []string
	}{
		{
			name: "Debezium's example table",
			ddl: `CREATE TABLE public.outbox (id uuid NOT NULL PRIMARY KEY, aggregatetype varchar(255) NOT NULL,
				aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload jsonb)`,
			mapping: debezium,
			inserts: []string{
				`INSERT INTO public.outbox VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'Order', '1', 'OrderCreated', '{"id": 1}')`,
				`INSERT INTO public.outbox VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', 'Order', '1', 'OrderLineUpdated', NULL)`,
			},
		},
		{
			name: "other names, header columns, a timestamp",
			ddl: `CREATE TABLE public.outbox (event_id bigint PRIMARY KEY, route text, k bpchar(4), kind text, body bytea,
				hdrs jsonb, ts timestamptz, traceparent text, tracestate varchar, blob bytea, n int4)`,
			mapping: custom,
			inserts: []string{
				`INSERT INTO public.outbox VALUES (1, 'order', 'k1', 'Created', '\x00ff'::bytea, '{"tenant": "acme"}',
					'2024-05-06 07:08:09.123456+02', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'congo=t61rcWkgMzE',
					'\x5c41'::bytea, -3)`,
				// NULL timestamp: the commit time stands in; NULL header columns add no header.
				`INSERT INTO public.outbox (event_id, route, k, kind, body) VALUES (2, 'order', 'k2', 'Updated', NULL)`,
				// An instant int64 nanoseconds cannot hold: the commit time stands in.
				`INSERT INTO public.outbox (event_id, route, k, kind, ts) VALUES (3, 'order', 'k3', 'Far', '2300-01-01 00:00:00+00')`,
				// A fault: the row still matches, Problem included.
				`INSERT INTO public.outbox (event_id, route, k, kind, hdrs, traceparent) VALUES (4, 'order', NULL, 'Bad', '[1]', 'tp')`,
			},
		},
	}
	for i, tt := range tables {
		t.Run(tt.name, func(t *testing.T) {
			db := fmt.Sprintf("mapped_%d", i)
			if err := cluster.CreateDatabase(ctx, db); err != nil {
				t.Fatal(err)
			}
			conn, err := pgx.Connect(ctx, cluster.URL(db))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			mustExec(t, conn, tt.ddl)
			mustExec(t, conn, `CREATE PUBLICATION p FOR TABLE public.outbox WITH (publish = 'insert')`)
			mustExec(t, conn, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, db)
			mustExec(t, conn, `SET synchronous_commit = on`)
			for _, stmt := range tt.inserts {
				mustExec(t, conn, stmt)
			}
			streamed := decodeSlot(t, conn, db, tt.mapping, true)
			if len(streamed) != len(tt.inserts) {
				t.Fatalf("decoded %d inserts from the slot, want %d", len(streamed), len(tt.inserts))
			}
			cols, err := rows.Lookup(ctx, conn, outboxTable, tt.mapping)
			if err != nil {
				t.Fatal(err)
			}
			if cols.Time() == "" {
				t.Fatalf("Time() = \"\" with track_commit_timestamp on, want the commit time")
			}
			matchScan(t, conn, cols, outbox.QuoteIdent(tt.mapping.ID), streamed, func(t *testing.T, ev *outbox.Event, row rows.Row, want decoded) {
				if ev.RecordTime() == 0 || ev.RecordTime() != want.event.RecordTime() {
					t.Errorf("RecordTime = %d, the stream's %d; want them equal and known", ev.RecordTime(), want.event.RecordTime())
				}
				if tt.mapping.CreatedAt != "ts" && row.CreatedAt.IsZero() {
					t.Errorf("CreatedAt is zero, want the row's age: its commit time")
				}
			})
		})
	}
}
