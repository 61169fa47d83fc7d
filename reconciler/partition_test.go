package reconciler_test

import (
	"slices"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/devenv/pgtest"
	"github.com/outbox-relay/outbox-relay/reconciler"
)

// newPartitionedEnv is newEnv with public.outbox partitioned by range on
// created_at into an old and a recent partition, as the README shows.
func newPartitionedEnv(t *testing.T) *env {
	t.Helper()
	_, url := pgtest.Database(t)
	e := &env{t: t, url: url}
	e.conn = e.connect()
	e.exec(`CREATE TABLE public.outbox (
		id uuid NOT NULL DEFAULT gen_random_uuid(),
		aggregatetype text NOT NULL,
		aggregateid text NOT NULL,
		type text NOT NULL,
		payload jsonb,
		headers jsonb,
		topic text,
		created_at timestamptz NOT NULL DEFAULT now(),
		published_at timestamptz,
		PRIMARY KEY (id, created_at)
	) PARTITION BY RANGE (created_at)`)
	e.exec("CREATE TABLE public.outbox_old PARTITION OF public.outbox FOR VALUES FROM (MINVALUE) TO (now() - interval '3 minutes')")
	e.exec("CREATE TABLE public.outbox_new PARTITION OF public.outbox FOR VALUES FROM (now() - interval '3 minutes') TO (MAXVALUE)")
	return e
}

// TestSweepPartitionedTable: on a partitioned outbox the first row of each
// partition sits at the same ctid, (0,1). A sweep of the old partition's row
// must remove that row only, not the young one at the same ctid in the other
// partition (which the stream may still deliver).
func TestSweepPartitionedTable(t *testing.T) {
	for _, am := range ackModes {
		t.Run(string(am.mode), func(t *testing.T) {
			e := newPartitionedEnv(t)
			old := e.insertAged(10 * time.Minute)
			young := e.insertAged(time.Minute)
			var oldAt, youngAt string
			if err := e.conn.QueryRow(testContext(t), `SELECT
				(SELECT tableoid::regclass::text || ctid::text FROM public.outbox WHERE id = $1),
				(SELECT tableoid::regclass::text || ctid::text FROM public.outbox WHERE id = $2)`, old, young).Scan(&oldAt, &youngAt); err != nil {
				t.Fatal(err)
			}
			if oldAt != "outbox_old(0,1)" || youngAt != "outbox_new(0,1)" {
				t.Fatalf("rows at %s and %s, want outbox_old(0,1) and outbox_new(0,1): the test needs one ctid in two partitions", oldAt, youngAt)
			}

			dl := &recorder{}
			r := e.reconciler(reconciler.Config{AckMode: am.mode, Grace: 5 * time.Minute}, dl, at(e.now()))
			n, err := r.Sweep(testContext(t))
			if err != nil {
				t.Fatalf("Sweep: %v", err)
			}
			if n != 1 {
				t.Errorf("Sweep = %d rows, want 1", n)
			}
			if got := dl.ids(); !slices.Equal(got, []string{old}) {
				t.Errorf("dead-lettered ids = %v, want [%s]", got, old)
			}
			if got := e.state(old); got != am.sweptState {
				t.Errorf("old row is %s after the sweep, want %s", got, am.sweptState)
			}
			if got := e.state(young); got != "unacked" {
				t.Errorf("young row in the other partition is %s after the sweep, want unacked (it sits at the same ctid, not at the same address)", got)
			}
		})
	}
}
