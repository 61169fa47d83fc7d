package relay

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/replication"
)

// partitionedOutboxDDL creates public.outbox partitioned by range on
// created_at with PRIMARY KEY (id, created_at), as the README shows it,
// without partitions.
const partitionedOutboxDDL = `CREATE TABLE public.outbox (id uuid NOT NULL DEFAULT gen_random_uuid(), aggregatetype text NOT NULL,
	aggregateid text NOT NULL, type text NOT NULL, payload jsonb, headers jsonb, topic text,
	created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz,
	PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at)`

// connectNewDatabase creates the database name on pg and returns a
// connection to it, closed when tb ends.
func connectNewDatabase(tb testing.TB, ctx context.Context, pg *devenv.Postgres, name string) *pgx.Conn {
	tb.Helper()
	if err := pg.CreateDatabase(ctx, name); err != nil {
		tb.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, pg.URL(name))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestAckPartitionedByKey: on a table partitioned by created_at, the ack
// narrowed by the rows' partition key values records every row whose key
// is right, and a row whose key does not find it (a wrong value, text that
// does not read back as a timestamptz) is still recorded, by id alone; only
// a row that is really gone counts as missing.
func TestAckPartitionedByKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	conn := connectNewDatabase(t, ctx, pg, "ack")
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(partitionedOutboxDDL)
	exec("CREATE TABLE public.outbox_old PARTITION OF public.outbox FOR VALUES FROM (MINVALUE) TO (now() - interval '1 day')")
	exec("CREATE TABLE public.outbox_new PARTITION OF public.outbox FOR VALUES FROM (now() - interval '1 day') TO (MAXVALUE)")
	table := outbox.Table{Schema: "public", Name: "outbox"}
	key, ok, err := replication.PartitionKey(ctx, conn, table)
	if err != nil || !ok || key.Name != "created_at" || key.Type != "timestamp with time zone" {
		t.Fatalf("PartitionKey = %+v, %v, %v; want created_at, timestamp with time zone", key, ok, err)
	}

	insert := func(n int, age string) (ids, keys []string) {
		t.Helper()
		rows, err := conn.Query(ctx, `INSERT INTO public.outbox (aggregatetype, aggregateid, type, created_at)
			SELECT 'order', 'o-' || g, 'Placed', now() - $2::interval - g * interval '1 second'
			FROM generate_series(1, $1::int) g RETURNING id::text, created_at::text`, n, age)
		if err != nil {
			t.Fatal(err)
		}
		var id, k string
		if _, err := pgx.ForEachRow(rows, []any{&id, &k}, func() error {
			ids, keys = append(ids, id), append(keys, k)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return ids, keys
	}
	count := func(ids []string) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM public.outbox WHERE id = ANY($1::text[]::uuid[])", ids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	tests := []struct {
		name string
		keys func(keys []string) []string
	}{
		{name: "right keys", keys: func(k []string) []string { return k }},
		{name: "no keys", keys: func([]string) []string { return nil }},
		{name: "a wrong key", keys: func(k []string) []string { k[1] = "2001-02-03 04:05:06+00"; return k }},
		{name: "a key that does not read back", keys: func(k []string) []string { k[2] = "not a time"; return k }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			missing := prometheus.NewCounter(prometheus.CounterOpts{Name: "missing"})
			acker := newTableAcker(conn, table, outbox.DefaultMapping(), "uuid", key, outbox.AckDelete, zerolog.New(zerolog.NewTestWriter(t)), missing)
			newIDs, newKeys := insert(3, "0")
			oldIDs, oldKeys := insert(3, "2 days")
			ids, keys := append(newIDs, oldIDs...), append(newKeys, oldKeys...)
			if err := acker.Ack(ctx, ids, tt.keys(keys), nil, nil); err != nil {
				t.Fatalf("Ack: %v", err)
			}
			if n := count(ids); n != 0 {
				t.Errorf("%d rows left after their ack, want 0", n)
			}
			if got := counterValue(t, missing); got != 0 {
				t.Errorf("missing = %v, want 0", got)
			}
			// Acked again (re-sent after a restart): gone for good, counted.
			if err := acker.Ack(ctx, ids, keys, nil, nil); err != nil {
				t.Fatalf("Ack again: %v", err)
			}
			if got := counterValue(t, missing); got != float64(len(ids)) {
				t.Errorf("missing after a second ack = %v, want %d", got, len(ids))
			}
		})
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
