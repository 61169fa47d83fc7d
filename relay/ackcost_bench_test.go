package relay

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/replication"
)

// BenchmarkAckCost measures what recording a delivered row costs the
// database, per row, for the statements the acker could send: the backend's
// CPU time (from /proc, so the relay's own work is not in it) and the WAL it
// writes. "acker/*" is the product's statement (tableAcker, uuid ids in
// binary); the others are the alternatives it was chosen against.
//
//	go test -run x -bench AckCost -benchtime 1x ./relay/
//
// Each run deletes (or marks) a 200,000-row outbox of the default shape in
// batches of 1,000 ids, the size of an ack during a backlog drain.
func BenchmarkAckCost(b *testing.B) {
	ctx := context.Background()
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{})
	if err != nil {
		b.Skip("no postgres: ", err)
	}
	b.Cleanup(func() { pg.Stop() })
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	const rows, batch = 200_000, 1000
	table := outbox.Table{Schema: "public", Name: "outbox"}
	missing := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	statements := []struct {
		name string
		run  func(ids []string) error
	}{
		{"acker/delete", ackerRun(conn, table, outbox.AckDelete, missing)},
		{"acker/mark", ackerRun(conn, table, outbox.AckMark, missing)},
		{"text-array/delete", execRun(conn, `DELETE FROM outbox WHERE id = ANY($1::text[]::uuid[])`)},
		{"unnest-join/delete", execRun(conn, `DELETE FROM outbox o USING unnest($1::text[]::uuid[]) k(id) WHERE o.id = k.id`)},
	}
	for _, st := range statements {
		b.Run(st.name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				ids := fillOutbox(b, conn, rows)
				var pid int
				var lsn0 string
				if err := conn.QueryRow(ctx, "SELECT pg_backend_pid(), pg_current_wal_lsn()::text").Scan(&pid, &lsn0); err != nil {
					b.Fatal(err)
				}
				cpu0 := processCPU(b, pid)
				b.StartTimer()
				for i := 0; i < len(ids); i += batch {
					if err := st.run(ids[i:min(i+batch, len(ids))]); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				cpu := processCPU(b, pid) - cpu0
				var wal int64
				if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn0).Scan(&wal); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(cpu.Microseconds())/rows, "backend-µs/row")
				b.ReportMetric(float64(wal)/rows, "WAL-B/row")
			}
		})
	}
}

func ackerRun(conn *pgx.Conn, table outbox.Table, mode outbox.AckMode, missing prometheus.Counter) func([]string) error {
	a := newTableAcker(conn, table, outbox.DefaultMapping(), "uuid", replication.Column{}, mode, zerolog.Nop(), missing)
	return func(ids []string) error { return a.Ack(context.Background(), ids, nil, nil, nil) }
}

func execRun(conn *pgx.Conn, sql string) func([]string) error {
	return func(ids []string) error {
		_, err := conn.Exec(context.Background(), sql, ids)
		return err
	}
}

// fillOutbox recreates the outbox with n rows and returns their ids in
// physical order, as a drain delivers them.
func fillOutbox(b *testing.B, conn *pgx.Conn, n int) []string {
	ctx := context.Background()
	for _, sql := range []string{
		`DROP TABLE IF EXISTS outbox`,
		`CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregatetype text NOT NULL, aggregateid text NOT NULL,
			type text NOT NULL, payload jsonb, headers jsonb, topic text, created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz)`,
		`CREATE INDEX ON outbox (created_at) WHERE published_at IS NULL`,
		`INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
			SELECT 'bench', (g % 1000)::text, 'created', jsonb_build_object('n', g, 'pad', repeat('x', 380)) FROM generate_series(1, ` + strconv.Itoa(n) + `) g`,
		`VACUUM ANALYZE outbox`,
		`CHECKPOINT`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	r, err := conn.Query(ctx, `SELECT id::text FROM outbox ORDER BY ctid`)
	if err != nil {
		b.Fatal(err)
	}
	ids, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		b.Fatal(err)
	}
	return ids
}

// processCPU is the user+system CPU time of process pid.
func processCPU(b *testing.B, pid int) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}
