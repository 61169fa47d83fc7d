package relay

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/replication"
	"github.com/outbox-relay/outbox-relay/sql"
)

// BenchmarkAckPartitioned measures one ack of a batch of delivered rows
// (DELETE, or UPDATE … SET published_at, WHERE id = ANY) on the plain outbox
// table and on one partitioned by range on created_at with PRIMARY KEY (id,
// created_at). By the ids alone no partition is pruned: every partition's
// index on id is probed for every id. That costs little in a partition that
// is empty (delete mode, drained) and grows with each partition that holds
// rows: a backlog spread over many partitions, or the history mark mode
// keeps. With the rows' created_at values ("keyed", as the stream's acks
// carry them) only the partitions holding the batch are searched.
// It reports µs per batch and per row; it asserts nothing.
func BenchmarkAckPartitioned(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer pg.Stop()
	const batch = 500
	table := outbox.Table{Schema: "public", Name: "outbox"}
	// Partition p holds the hour that ends p hours before base.
	base := time.Now().Truncate(time.Hour).Add(time.Hour).UTC().Format(time.RFC3339)
	cases := []struct {
		name       string
		partitions int
		mode       outbox.AckMode
		// older says what the partitions but the newest hold: nothing
		// ("drained"), unacked rows ("backlog") or marked rows ("marked").
		older string
		keyed bool // the acks carry the rows' created_at
	}{
		{name: "plain/delete", mode: outbox.AckDelete},
		{name: "partitions=32/delete/drained", partitions: 32, mode: outbox.AckDelete, older: "drained"},
		{name: "partitions=32/delete/backlog", partitions: 32, mode: outbox.AckDelete, older: "backlog"},
		{name: "partitions=32/delete/backlog/keyed", partitions: 32, mode: outbox.AckDelete, older: "backlog", keyed: true},
		{name: "partitions=128/delete/backlog", partitions: 128, mode: outbox.AckDelete, older: "backlog"},
		{name: "partitions=128/delete/backlog/keyed", partitions: 128, mode: outbox.AckDelete, older: "backlog", keyed: true},
		{name: "partitions=32/mark/marked", partitions: 32, mode: outbox.AckMark, older: "marked"},
		{name: "partitions=32/mark/marked/keyed", partitions: 32, mode: outbox.AckMark, older: "marked", keyed: true},
	}
	for i, c := range cases {
		conn := connectNewDatabase(b, ctx, pg, fmt.Sprintf("ack_%d", i))
		exec := func(q string, args ...any) {
			if _, err := conn.Exec(ctx, q, args...); err != nil {
				b.Fatalf("%s: %v", q, err)
			}
		}
		if c.partitions == 0 {
			exec(sql.OutboxTable(table))
		} else {
			exec(partitionedOutboxDDL)
			for p := range c.partitions {
				exec(fmt.Sprintf(`CREATE TABLE public.outbox_%d PARTITION OF public.outbox
					FOR VALUES FROM (timestamptz '%s' - interval '%d hours') TO (timestamptz '%s' - interval '%d hours')`, p, base, p+1, base, p))
			}
		}
		// $1 base, $2 how many, $3 how many partitions to spread over,
		// $4 published_at.
		insert := `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, created_at, published_at)
			SELECT 'order', 'o-' || g, 'Placed', '{}', $1::timestamptz - (g % $3::int) * interval '1 hour' - interval '1 minute' - random() * interval '58 minutes', $4
			FROM generate_series(1, $2::int) g RETURNING id::text, created_at::text`
		exec(insert, base, 20_000, 1, nil)
		switch c.older {
		case "backlog":
			exec(insert, base, 2_000*c.partitions, c.partitions, nil)
		case "marked":
			exec(insert, base, 2_000*c.partitions, c.partitions, time.Now())
		}
		exec("VACUUM ANALYZE public.outbox")
		var key replication.Column
		if c.partitions > 0 {
			key = replication.Column{Name: "created_at", Type: "timestamp with time zone"}
		}
		acker := newTableAcker(conn, table, outbox.DefaultMapping(), "uuid", key, c.mode, zerolog.Nop(),
			prometheus.NewCounter(prometheus.CounterOpts{Name: "bench_missing"}))
		ids, keys := make([]string, 0, batch), make([]string, 0, batch)
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				rows, err := conn.Query(ctx, insert, base, batch, 1, nil)
				if err != nil {
					b.Fatal(err)
				}
				ids, keys = ids[:0], keys[:0]
				var id, key string
				_, err = pgx.ForEachRow(rows, []any{&id, &key}, func() error {
					ids, keys = append(ids, id), append(keys, key)
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
				ackKeys := keys
				if !c.keyed {
					ackKeys = nil
				}
				b.StartTimer()
				if err := acker.Ack(ctx, ids, ackKeys, nil, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			perBatch := float64(b.Elapsed().Microseconds()) / float64(b.N)
			b.ReportMetric(perBatch, "µs/batch")
			b.ReportMetric(perBatch/batch, "µs/row")
		})
	}
}
