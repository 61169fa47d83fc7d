package tests

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// partitionedOutboxDDL is public.outbox as the README's "Partitioned
// outbox" shows it: partitioned by range on created_at, the primary key the
// id plus the partition key. key replaces the primary key clause.
func partitionedOutboxDDL(key string) string {
	return `CREATE TABLE public.outbox (
		id uuid NOT NULL DEFAULT gen_random_uuid(),
		aggregatetype text NOT NULL,
		aggregateid text NOT NULL,
		type text NOT NULL,
		payload jsonb,
		headers jsonb,
		topic text,
		created_at timestamptz NOT NULL DEFAULT now(),
		published_at timestamptz` + key + `
	) PARTITION BY RANGE (created_at)`
}

const partitionedPrimaryKey = ",\n\t\tPRIMARY KEY (id, created_at)"

// TestPartitionedOutboxStartChecks: on a table partitioned by created_at the
// relay accepts PRIMARY KEY (id, created_at) and creates its publication
// with publish_via_partition_root; it refuses, naming the fix, a key that
// lets ids repeat and an existing publication that publishes the partitions
// under their own names; and following the fix it delivers.
func TestPartitionedOutboxStartChecks(t *testing.T) {
	refusals := []struct {
		name    string
		key     string
		wantFix []string
	}{
		{name: "no primary key", key: "", wantFix: []string{"id column", `partitioned by (\"created_at\")`, `ADD PRIMARY KEY (\"id\", \"created_at\")`}},
		{name: "another column in the key", key: ",\n\t\tPRIMARY KEY (id, created_at, aggregateid)", wantFix: []string{"id column", "not unique", `ADD PRIMARY KEY (\"id\", \"created_at\")`}},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			requireRelay(t)
			e := newEnv(t)
			e.exec(partitionedOutboxDDL(tt.key))
			e.exec("CREATE TABLE public.outbox_all PARTITION OF public.outbox FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")
			for _, command := range []string{"setup", "run"} {
				code, _, stderr := runRelay(t, e.relayEnv(), 30*time.Second, command)
				if code == 0 {
					t.Fatalf("%s exited 0 on a partitioned table with %s, want a refusal; stderr:\n%s", command, tt.name, stderr)
				}
				errs := errorLines(stderr)
				for _, want := range tt.wantFix {
					if !strings.Contains(errs, want) {
						t.Errorf("%s: the error does not mention %q; error lines:\n%s", command, want, errs)
					}
				}
			}
			if s := e.slot(); s.exists {
				t.Errorf("slot after the refusals: %v, want none created", s)
			}
		})
	}

	t.Run("setup creates the publication via the root", func(t *testing.T) {
		requireRelay(t)
		e := newEnv(t)
		e.exec(partitionedOutboxDDL(partitionedPrimaryKey))
		e.exec("CREATE TABLE public.outbox_all PARTITION OF public.outbox FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")
		e.setup()
		if n := e.queryInt("SELECT count(*) FROM pg_publication WHERE pubname = $1 AND pubviaroot", e.name); n != 1 {
			t.Errorf("setup's publication has publish_via_partition_root off, want on")
		}
		_, status, out := runStatusJSON(t, e.relayEnv())
		if len(status.Warnings) > 0 && !onlySlotInactiveWarning(status.Warnings) {
			t.Errorf("status warns on a partitioned outbox set up by setup: %q\n%s", status.Warnings, out)
		}
		e.startRelay()
		events := orderEvents(0, 3)
		e.insert(events...)
		e.readEvents(30*time.Second, outboxTopics, idSet(events))
	})

	t.Run("publication without publish_via_partition_root", func(t *testing.T) {
		requireRelay(t)
		e := newEnv(t)
		e.exec(partitionedOutboxDDL(partitionedPrimaryKey))
		e.exec("CREATE TABLE public.outbox_all PARTITION OF public.outbox FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")
		e.exec(fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE public.outbox WITH (publish = 'insert')", e.name))
		fix := fmt.Sprintf(`ALTER PUBLICATION \"%s\" SET (publish_via_partition_root = true)`, e.name)
		for _, command := range []string{"setup", "run"} {
			code, _, stderr := runRelay(t, e.relayEnv(), 30*time.Second, command)
			if code == 0 {
				t.Fatalf("%s exited 0 with a publication that publishes the partitions under their own names; stderr:\n%s", command, stderr)
			}
			if errs := errorLines(stderr); !strings.Contains(errs, fix) {
				t.Errorf("%s: the error does not say %s; error lines:\n%s", command, fix, errs)
			}
		}
		_, status, out := runStatusJSON(t, e.relayEnv())
		if !slices.ContainsFunc(status.Warnings, func(w string) bool { return strings.Contains(w, "publish_via_partition_root = true") }) {
			t.Errorf("status does not warn about publish_via_partition_root: %q\n%s", status.Warnings, out)
		}
		// Rows committed before the fix, while no slot existed, are
		// backfilled; rows after it are streamed.
		before := orderEvents(0, 2)
		e.insert(before...)
		e.exec(strings.ReplaceAll(fix, `\"`, `"`))
		e.startRelay()
		after := orderEvents(2, 2)
		e.insert(after...)
		e.readEvents(30*time.Second, outboxTopics, idSet(append(before, after...)))
	})
}

// onlySlotInactiveWarning reports whether the warnings are those of a slot
// no relay streams from yet.
func onlySlotInactiveWarning(warnings []string) bool {
	for _, w := range warnings {
		if !strings.Contains(w, "is the relay running?") {
			return false
		}
	}
	return true
}

// partitionWindow is the width of one partition of the churn test: short,
// so that many partitions come and go while the writer writes.
const partitionWindow = time.Second

// partitionChurn creates public.outbox's partitions ahead of the server's
// clock and drops the old ones once drained, the way the README tells an
// operator to, from its own connection, until stopped.
type partitionChurn struct {
	conn *pgx.Conn
	// created, dropped and kept count partitions created, dropped, and
	// drop attempts that found rows still unacked (or a lock not granted
	// in time) and left the partition attached.
	created, dropped, kept atomic.Int64
	err                    error
	stopping               atomic.Bool
	done                   chan struct{}
}

// windowOf is the name of the partition holding created_at values of
// window w (Unix time divided by partitionWindow).
func windowOf(w int64) string { return fmt.Sprintf("outbox_w%d", w) }

// currentWindow is the window of the server's now().
func currentWindow(ctx context.Context, conn *pgx.Conn) (int64, error) {
	var ms int64
	err := conn.QueryRow(ctx, "SELECT (extract(epoch FROM now()) * 1000)::bigint").Scan(&ms)
	return ms / partitionWindow.Milliseconds(), err
}

// createWindows creates the partitions of windows from..to that are missing.
func createWindows(ctx context.Context, conn *pgx.Conn, from, to int64) (int, error) {
	n := 0
	for w := from; w <= to; w++ {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", "public."+windowOf(w)).Scan(&exists); err != nil {
			return n, err
		}
		if exists {
			continue
		}
		width := partitionWindow.Milliseconds()
		_, err := conn.Exec(ctx, fmt.Sprintf(
			"CREATE TABLE public.%s PARTITION OF public.outbox FOR VALUES FROM (to_timestamp(%d / 1000.0)) TO (to_timestamp(%d / 1000.0))",
			windowOf(w), w*width, (w+1)*width))
		if err != nil {
			return n, fmt.Errorf("create partition %s: %w", windowOf(w), err)
		}
		n++
	}
	return n, nil
}

func startPartitionChurn(t *testing.T, db string) *partitionChurn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	conn, err := pgx.Connect(ctx, pg.URL(db))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c := &partitionChurn{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer cancel()
		defer conn.Close(context.Background())
		for !c.stopping.Load() {
			if c.err = c.round(ctx); c.err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond) // the operator's cron, not synchronisation
		}
	}()
	t.Cleanup(func() { c.stopping.Store(true); <-c.done })
	return c
}

// round creates the next windows' partitions and tries to drop every
// partition whose window ended at least a window ago.
func (c *partitionChurn) round(ctx context.Context) error {
	cur, err := currentWindow(ctx, c.conn)
	if err != nil {
		return err
	}
	n, err := createWindows(ctx, c.conn, cur, cur+3)
	c.created.Add(int64(n))
	if err != nil {
		return err
	}
	rows, err := c.conn.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'public.outbox'::regclass ORDER BY c.relname`)
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, name := range names {
		var w int64
		if _, err := fmt.Sscanf(name, "outbox_w%d", &w); err != nil {
			return fmt.Errorf("partition %q: %w", name, err)
		}
		if w+1 > cur-1 {
			continue
		}
		dropped, err := dropIfDrained(ctx, c.conn, name)
		if err != nil {
			return err
		}
		if dropped {
			c.dropped.Add(1)
		} else {
			c.kept.Add(1)
		}
	}
	return nil
}

// dropIfDrained is the README's way to drop a partition: detach it (the
// lock waits for every transaction still writing into it), check in the
// same transaction that no unacked row is left, and drop it; otherwise roll
// back, leaving it attached for a later try. It reports whether it dropped.
func dropIfDrained(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '2s'"); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, "ALTER TABLE public.outbox DETACH PARTITION public."+name); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55P03" { // lock_not_available
			return false, nil
		}
		return false, fmt.Errorf("detach %s: %w", name, err)
	}
	var unacked int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM public."+name+" WHERE published_at IS NULL").Scan(&unacked); err != nil {
		return false, err
	}
	if unacked > 0 {
		return false, nil
	}
	if _, err := tx.Exec(ctx, "DROP TABLE public."+name); err != nil {
		return false, fmt.Errorf("drop %s: %w", name, err)
	}
	return true, tx.Commit(ctx)
}

func (c *partitionChurn) stop(t *testing.T) {
	t.Helper()
	c.stopping.Store(true)
	<-c.done
	if c.err != nil {
		t.Fatalf("partition churn: %v", c.err)
	}
}

// TestPartitionedOutboxUnderPartitionChurn runs, with ACK_MODE delete and
// mark, the relay on an outbox
// partitioned by range on created_at while a writer commits steadily and an
// operator's job creates the partitions ahead of time and detaches and drops
// the old ones once drained, also through a broker stall that keeps old
// partitions from draining for a while. Rows committed before the relay first ran are
// backfilled from the partitioned table, and a row too large for its topic
// is dead-lettered with its row moved to the dead-letter table. At the end
// every committed row is in Kafka, no record is of a row never committed,
// no row is left unacked (with delete: none is left at all) and the leader
// measured the oldest unacked row on the partitioned table throughout.
func TestPartitionedOutboxUnderPartitionChurn(t *testing.T) {
	for _, mode := range []string{"delete", "mark"} {
		t.Run(mode, func(t *testing.T) { testPartitionChurn(t, mode) })
	}
}

func testPartitionChurn(t *testing.T, mode string) {
	requireRelay(t)
	e := newEnv(t)
	ackMode := "OUTBOX_RELAY_ACK_MODE=" + mode
	const bigTopic = "outbox.event.invoice"
	if err := e.kafka.Cluster().CreateTopic(bigTopic, 3, map[string]string{"max.message.bytes": "20000"}); err != nil {
		t.Fatal(err)
	}
	e.exec(partitionedOutboxDDL(partitionedPrimaryKey))
	ctx, cancel := e.context(time.Minute)
	cur, err := currentWindow(ctx, e.db)
	if err == nil {
		_, err = createWindows(ctx, e.db, cur-1, cur+3)
	}
	cancel()
	if err != nil {
		t.Fatal(err)
	}

	// Before any slot: the relay's backfill must find these.
	backfilled := orderEvents(1_000_000, 30)
	e.insertInTransactions(backfilled)

	r := e.startRelay(ackMode)
	addr := e.httpAddr(r)
	churn := startPartitionChurn(t, e.name)
	w := startPacedWriter(t, e.name, math.MaxInt, 2*time.Millisecond)

	big := &event{aggregateType: "invoice", aggregateID: "i-1", typ: "Issued",
		payload: jsonText(fmt.Sprintf(`{"pad": %q}`, strings.Repeat("x", 30_000))), seq: 2_000_000}
	progress := func() string {
		return fmt.Sprintf("%d created, %d dropped, %d drop attempts left for later; %d events committed",
			churn.created.Load(), churn.dropped.Load(), churn.kept.Load(), w.count())
	}
	e.waitFor(time.Minute, "two partitions dropped under load", func() (bool, string) {
		return churn.dropped.Load() >= 2, progress()
	})
	e.insert(big)
	// A stalled broker leaves old partitions with unacked rows: the churn
	// must keep them until the relay caught up, then drop them.
	stall := holdProduce(e.kafka.Cluster())
	e.waitFor(time.Minute, "a drop attempt to find unacked rows", func() (bool, string) {
		return churn.kept.Load() >= 2, progress()
	})
	stall.release()
	dropped := churn.dropped.Load()
	e.waitFor(time.Minute, "more partitions dropped once the broker is back", func() (bool, string) {
		return churn.dropped.Load() >= dropped+4, progress()
	})
	events := w.finish(t)
	final := orderEvents(3_000_000, 1)
	last := e.insert(final...)
	events = append(append(events, backfilled...), final...)

	e.readEvents(2*time.Minute, outboxTopics, idSet(events))
	e.readEvents(30*time.Second, exactTopic(defaultDLQTopic), idSet([]*event{big}))
	e.waitConfirmed(time.Minute, last)
	churn.stop(t)
	t.Logf("%d events committed; partitions: %d created, %d dropped, %d drop attempts left for later",
		len(events), churn.created.Load(), churn.dropped.Load(), churn.kept.Load())

	committed := idSet(append(events, big))
	records := e.readAll([]string{`^outbox\.`})
	dups := 0
	for id, n := range countByID(records) {
		if !committed[id] {
			t.Errorf("%d records with id %q, which is of no row the test committed", n, id)
		}
		dups += n - 1
	}
	t.Logf("%d records: %d duplicates", len(records), dups)
	for _, rec := range records {
		id, _ := header(rec, "id")
		switch {
		case rec.Topic == defaultDLQTopic && id != big.id:
			t.Errorf("dead letter for row %s, want only the too-large row %s: %s", id, big.id, describeRecord(rec))
		case rec.Topic == bigTopic:
			t.Errorf("the too-large row reached its topic: %s", describeRecord(rec))
		}
	}
	// Rows are recorded before the watermark passes them: deleted, or
	// marked and kept in partitions not yet dropped.
	if n := e.queryInt("SELECT count(*) FROM public.outbox WHERE published_at IS NULL"); n != 0 {
		t.Errorf("%d rows left unacked in the outbox after all were delivered and confirmed, want 0; %s", n, e.describeRows(events))
	}
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); mode == "delete" && n != 0 {
		t.Errorf("%d rows left in the outbox with ACK_MODE delete, want 0", n)
	}
	if n := e.queryInt("SELECT count(*) FROM public.outbox_dead_letter WHERE id::text = $1 AND payload = $2::jsonb AND reason = $3",
		big.id, *big.storedPayload, reasonTooLarge); n != 1 {
		t.Errorf("dead-letter table: %d whole copies of the too-large row, want 1", n)
	}
	if entries := logEntries(r, "cannot measure the oldest unacked row"); len(entries) > 0 {
		t.Errorf("the leader could not measure the oldest unacked row %d times on the partitioned table", len(entries))
	}
	e.gauge(addr, "outbox_relay_oldest_unacked_age_seconds")
	_, status, out := runStatusJSON(t, e.relayEnv(ackMode))
	if status.UnackedRows == nil || *status.UnackedRows != 0 || len(status.Warnings) > 0 {
		t.Errorf("status: unacked rows %v, warnings %q; want 0 and none\n%s", orNil(status.UnackedRows), status.Warnings, out)
	}
}
