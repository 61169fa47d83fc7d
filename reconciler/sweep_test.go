package reconciler_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/reconciler"
)

var ackModes = []struct {
	mode       outbox.AckMode
	sweptState string // what a swept row becomes
}{
	{outbox.AckDelete, "deleted"},
	{outbox.AckMark, "marked"},
}

// TestSweepDeadLettersOldUnackedRow: an old unacknowledged row is
// dead-lettered, and deleted or marked only after DeadLetter returned: while
// DeadLetter runs, the row is still there, unmarked and locked.
func TestSweepDeadLettersOldUnackedRow(t *testing.T) {
	for _, am := range ackModes {
		t.Run(string(am.mode), func(t *testing.T) {
			e := newEnv(t)
			old := e.insertAged(10 * time.Minute)
			young := e.insertAged(time.Minute)
			// A row the stream delivered long ago: in mark mode it stays,
			// marked, and must not be swept again.
			delivered := e.insertAged(time.Hour)
			e.exec("UPDATE public.outbox SET published_at = now() - interval '59 minutes' WHERE id = $1", delivered)
			if am.mode == outbox.AckDelete {
				e.exec("DELETE FROM public.outbox WHERE id = $1", delivered)
			}

			other := e.connect()
			var duringState string
			var lockErr error
			dl := &recorder{during: func([]outbox.Event) {
				duringState = e.state(old)
				_, lockErr = other.Exec(testContext(t), "SELECT 1 FROM public.outbox WHERE id = $1 FOR UPDATE NOWAIT", old)
			}}
			r := e.reconciler(reconciler.Config{AckMode: am.mode, Grace: 5 * time.Minute}, dl, at(e.now()))

			n, err := r.Sweep(testContext(t))
			if duringState != "unacked" {
				t.Errorf("row state during DeadLetter = %q, want unacked (removed only after the dead letter was acked)", duringState)
			}
			var pgErr *pgconn.PgError
			if !errors.As(lockErr, &pgErr) || pgErr.Code != "55P03" {
				t.Errorf("locking the row from another session during DeadLetter: %v, want lock_not_available (55P03)", lockErr)
			}
			if err != nil {
				t.Fatalf("Sweep: %v", err)
			}
			if n != 1 {
				t.Errorf("Sweep = %d rows, want 1", n)
			}
			calls := dl.recorded()
			if len(calls) != 1 {
				t.Fatalf("DeadLetter calls = %d, want 1", len(calls))
			}
			c := calls[0]
			if !slices.Equal(c.ids, []string{old}) {
				t.Errorf("dead-lettered ids = %v, want [%s]", c.ids, old)
			}
			if c.reason != outbox.ReasonUnackedAfterGrace {
				t.Errorf("reason = %q, want %q", c.reason, outbox.ReasonUnackedAfterGrace)
			}
			if want := "not acknowledged within 5m0s of being committed"; c.errText != want {
				t.Errorf("errText = %q, want %q", c.errText, want)
			}
			ev := c.events[0]
			if string(ev.AggregateID) != "o-1" || string(ev.Type) != "OrderCreated" || string(ev.Payload) != `{"n": 1}` ||
				len(ev.Headers) != 1 || ev.Headers[0].Key != "trace" || string(ev.Headers[0].Value) != "abc" || ev.LSN != 0 {
				t.Errorf("dead-lettered event = %+v, want the row as the stream would have published it, LSN 0", ev)
			}
			if got := e.state(old); got != am.sweptState {
				t.Errorf("old row after Sweep: %s, want %s", got, am.sweptState)
			}
			if got := e.state(young); got != "unacked" {
				t.Errorf("young row after Sweep: %s, want unacked", got)
			}
			if am.mode == outbox.AckMark {
				var stillOld bool
				if err := e.conn.QueryRow(testContext(t), "SELECT published_at < now() - interval '58 minutes' FROM public.outbox WHERE id = $1", delivered).Scan(&stillOld); err != nil || !stillOld {
					t.Errorf("delivered row's published_at was rewritten (%v), want it left alone", err)
				}
			}

			// Nothing left to sweep.
			if n, err := r.Sweep(testContext(t)); n != 0 || err != nil {
				t.Errorf("second Sweep = %d, %v, want 0, nil", n, err)
			}
		})
	}
}

// TestSweepDeadLetterFailureLeavesRows: when DeadLetter fails, nothing is
// deleted or marked, nothing stays locked, and the next sweep retries.
func TestSweepDeadLetterFailureLeavesRows(t *testing.T) {
	for _, am := range ackModes {
		t.Run(string(am.mode), func(t *testing.T) {
			e := newEnv(t)
			id := e.insertAged(10 * time.Minute)
			errBroker := errors.New("broker unavailable")
			dl := &recorder{fail: errBroker}
			r := e.reconciler(reconciler.Config{AckMode: am.mode, Grace: 5 * time.Minute}, dl, at(e.now()))

			n, err := r.Sweep(testContext(t))
			if !errors.Is(err, errBroker) || n != 0 {
				t.Fatalf("Sweep = %d, %v, want 0 and the DeadLetter error", n, err)
			}
			if got := e.state(id); got != "unacked" {
				t.Errorf("row after a failed DeadLetter: %s, want unacked", got)
			}
			other := e.connect()
			tx, err := other.Begin(testContext(t))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(testContext(t), "SELECT 1 FROM public.outbox WHERE id = $1 FOR UPDATE NOWAIT", id); err != nil {
				t.Errorf("row still locked after a failed sweep: %v", err)
			}
			tx.Rollback(testContext(t))

			dl.setFail(nil)
			if n, err := r.Sweep(testContext(t)); n != 1 || err != nil {
				t.Fatalf("Sweep after the broker came back = %d, %v, want 1, nil", n, err)
			}
			if got := e.state(id); got != am.sweptState {
				t.Errorf("row after the retried sweep: %s, want %s", got, am.sweptState)
			}
		})
	}
}

// TestSweepAgeRule: a row is swept only if it is older than the grace both
// by the server's clock and by the watermark's commit time.
func TestSweepAgeRule(t *testing.T) {
	const grace = 5 * time.Minute
	tests := []struct {
		name      string
		age       time.Duration // of the row
		watermark time.Duration // the watermark's commit time, relative to now
		unknown   bool          // Position returns the zero time
		wantSwept bool
	}{
		{name: "older than the grace", age: 10 * time.Minute, wantSwept: true},
		{name: "just older than the grace", age: grace + 10*time.Second, wantSwept: true},
		{name: "just younger than the grace", age: grace - 10*time.Second},
		{name: "much younger than the grace", age: time.Second},
		{name: "lagging slot: older than the grace but not than the watermark minus the grace", age: 10 * time.Minute, watermark: -(5*time.Minute + 10*time.Second)},
		{name: "lagging slot: far behind", age: time.Hour, watermark: -2 * time.Hour},
		{name: "lagging slot: older than the watermark minus the grace", age: 10 * time.Minute, watermark: -(5*time.Minute - 10*time.Second), wantSwept: true},
		{name: "a watermark ahead of the clock does not shorten the grace", age: grace - 10*time.Second, watermark: time.Hour},
		{name: "unknown position", age: 24 * time.Hour, unknown: true},
	}
	e := newEnv(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.t = t
			e.exec("TRUNCATE public.outbox")
			id := e.insertAged(tt.age)
			pos := at(time.Time{})
			if !tt.unknown {
				pos = at(e.now().Add(tt.watermark))
			}
			dl := &recorder{}
			r := e.reconciler(reconciler.Config{AckMode: outbox.AckDelete, Grace: grace}, dl, pos)
			n, err := r.Sweep(testContext(t))
			if err != nil {
				t.Fatal(err)
			}
			swept := n == 1 && slices.Equal(dl.ids(), []string{id}) && e.state(id) == "deleted"
			if !swept && (n != 0 || len(dl.ids()) != 0 || e.state(id) != "unacked") {
				t.Fatalf("Sweep = %d, dead-lettered %v, row %s: inconsistent", n, dl.ids(), e.state(id))
			}
			if swept != tt.wantSwept {
				t.Errorf("row written %s ago, watermark at now%+v, grace %s: swept = %v, want %v", tt.age, tt.watermark, grace, swept, tt.wantSwept)
			}
		})
	}
}

// TestSweepUnknownPosition: until the relay knows its watermark's commit
// time, a sweep does nothing at all, not even connect.
func TestSweepUnknownPosition(t *testing.T) {
	connect := func(ctx context.Context) (*pgx.Conn, error) {
		t.Error("Sweep connected with an unknown position")
		return nil, errors.New("must not connect")
	}
	r, err := reconciler.New(reconciler.Config{Table: outboxTable, Mapping: outbox.DefaultMapping(), AckMode: outbox.AckDelete},
		connect, &recorder{}, at(time.Time{}), zerologNop)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.Sweep(testContext(t)); n != 0 || err != nil {
		t.Errorf("Sweep = %d, %v, want 0, nil", n, err)
	}
}

// TestConcurrentSweepsSkipLocked: two reconcilers (say an old leader that
// has not noticed yet and the new one) sweep at once; SKIP LOCKED lets the
// second take other rows while the first holds its batch, and no row is
// dead-lettered twice.
func TestConcurrentSweepsSkipLocked(t *testing.T) {
	e := newEnv(t)
	e.exec(`INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, created_at)
		SELECT 'order', 'o-' || i, 'T', '{}', now() - interval '10 minutes' - i * interval '1 ms' FROM generate_series(1, 200) i`)
	pos := at(e.now())
	cfg := reconciler.Config{AckMode: outbox.AckDelete, Grace: 5 * time.Minute, Batch: 50}

	seen := &recorder{} // both reconcilers record here
	bStarted := make(chan struct{})
	var bOnce, aOnce sync.Once
	aHolding := make(chan struct{})
	overlapped := false
	a := e.reconciler(cfg, &hookDL{rec: seen, hook: func() {
		aOnce.Do(func() {
			close(aHolding)
			// Hold A's first batch locked until B has dead-lettered a batch
			// of its own.
			select {
			case <-bStarted:
				overlapped = true
			case <-time.After(10 * time.Second):
			}
		})
	}}, pos)
	b := e.reconciler(cfg, &hookDL{rec: seen, hook: func() { bOnce.Do(func() { close(bStarted) }) }}, pos)

	var wg sync.WaitGroup
	var na, nb int
	var errA, errB error
	wg.Go(func() { na, errA = a.Sweep(testContext(t)) })
	<-aHolding
	wg.Go(func() { nb, errB = b.Sweep(testContext(t)) })
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("Sweep errors: %v, %v", errA, errB)
	}
	if !overlapped {
		t.Errorf("the second sweep dead-lettered nothing while the first held its batch locked (it waited instead of skipping)")
	}
	ids := seen.ids()
	counts := map[string]int{}
	for _, id := range ids {
		if counts[id]++; counts[id] == 2 {
			t.Errorf("row %s dead-lettered twice", id)
		}
	}
	if len(counts) != 200 || na+nb != 200 {
		t.Errorf("dead-lettered %d distinct rows, sweeps reported %d + %d, want 200", len(counts), na, nb)
	}
	if n := e.count(); n != 0 {
		t.Errorf("%d rows left, want 0", n)
	}
}

// hookDL runs hook, then records into rec.
type hookDL struct {
	rec  *recorder
	hook func()
}

func (h *hookDL) DeadLetter(ctx context.Context, events []outbox.Event, reason, errText string) error {
	h.hook()
	return h.rec.DeadLetter(ctx, events, reason, errText)
}

// TestSweepBatches: one sweep works through the backlog in batches, oldest
// first, one transaction and one DeadLetter call per batch.
func TestSweepBatches(t *testing.T) {
	e := newEnv(t)
	e.exec(`INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, created_at)
		SELECT 'order', 'o-' || i, 'T', '{}', now() - interval '10 minutes' - (i % 300) * interval '1 ms' FROM generate_series(1, 1200) i`)
	wantOrder := queryIDs(t, e.conn, "SELECT id::text FROM public.outbox ORDER BY created_at, id")
	dl := &recorder{}
	r := e.reconciler(reconciler.Config{AckMode: outbox.AckDelete, Grace: 5 * time.Minute, Batch: 500}, dl, at(e.now()))

	n, err := r.Sweep(testContext(t))
	if err != nil || n != 1200 {
		t.Fatalf("Sweep = %d, %v, want 1200, nil", n, err)
	}
	var sizes []int
	for _, c := range dl.recorded() {
		sizes = append(sizes, len(c.ids))
	}
	if !slices.Equal(sizes, []int{500, 500, 200}) {
		t.Errorf("DeadLetter batch sizes = %v, want [500 500 200]", sizes)
	}
	if got := dl.ids(); !slices.Equal(got, wantOrder) {
		t.Errorf("dead-letter order differs from created_at, id order")
	}
	if n := e.count(); n != 0 {
		t.Errorf("%d rows left, want 0", n)
	}
}

func queryIDs(t *testing.T, conn *pgx.Conn, sql string) []string {
	t.Helper()
	r, err := conn.Query(testContext(t), sql)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestSweepUndecodableRows: rows the stream could not have published either
// are dead-lettered too, never dropped or skipped: reason decode_error, one
// call each with the fault in the error text, in created_at order with the
// others.
func TestSweepUndecodableRows(t *testing.T) {
	e := newEnv(t)
	e.exec("ALTER TABLE public.outbox ALTER COLUMN aggregateid DROP NOT NULL")
	first := e.insertAged(40 * time.Minute)
	nullKey := e.insertAged(30 * time.Minute)
	e.exec("UPDATE public.outbox SET aggregateid = NULL WHERE id = $1", nullKey)
	badHeaders := e.insertAged(20 * time.Minute)
	e.exec(`UPDATE public.outbox SET headers = '{"n": 1}' WHERE id = $1`, badHeaders)
	last := e.insertAged(10 * time.Minute)
	dl := &recorder{}
	r := e.reconciler(reconciler.Config{AckMode: outbox.AckDelete, Grace: 5 * time.Minute}, dl, at(e.now()))

	n, err := r.Sweep(testContext(t))
	if err != nil || n != 4 {
		t.Fatalf("Sweep = %d, %v, want 4, nil", n, err)
	}
	late := "not acknowledged within 5m0s of being committed"
	want := []call{
		{ids: []string{first}, reason: outbox.ReasonUnackedAfterGrace, errText: late},
		{ids: []string{nullKey}, reason: outbox.ReasonDecodeError,
			errText: fmt.Sprintf("row id=%s of public.outbox: column aggregateid: is null (%s)", nullKey, late)},
		{ids: []string{badHeaders}, reason: outbox.ReasonDecodeError,
			errText: fmt.Sprintf("row id=%s of public.outbox: column headers: headers must be a JSON object of string values (%s)", badHeaders, late)},
		{ids: []string{last}, reason: outbox.ReasonUnackedAfterGrace, errText: late},
	}
	got := dl.recorded()
	if len(got) != len(want) {
		t.Fatalf("DeadLetter calls = %d, want %d", len(got), len(want))
	}
	for i := range want {
		if !slices.Equal(got[i].ids, want[i].ids) || got[i].reason != want[i].reason || got[i].errText != want[i].errText {
			t.Errorf("call %d = %v %q %q, want %v %q %q", i, got[i].ids, got[i].reason, got[i].errText, want[i].ids, want[i].reason, want[i].errText)
		}
	}
	if n := e.count(); n != 0 {
		t.Errorf("%d rows left, want 0", n)
	}
}

func TestSweepTableErrors(t *testing.T) {
	tests := []struct {
		name    string
		alter   string
		mode    outbox.AckMode
		wantErr string
	}{
		{"mark mode without published_at", "ALTER TABLE public.outbox DROP COLUMN published_at", outbox.AckMark, `no column "published_at"`},
		{"no created_at", "ALTER TABLE public.outbox DROP COLUMN created_at", outbox.AckDelete, `no column "created_at" (OUTBOX_RELAY_COLUMN_TIMESTAMP) and track_commit_timestamp is off`},
		{"no table", "DROP TABLE public.outbox", outbox.AckDelete, "table public.outbox does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.exec(tt.alter)
			r := e.reconciler(reconciler.Config{AckMode: tt.mode}, &recorder{}, at(e.now()))
			if _, err := r.Sweep(testContext(t)); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Sweep error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestSweepReconnects: a connection killed under the reconciler is replaced
// at the next sweep.
func TestSweepReconnects(t *testing.T) {
	e := newEnv(t)
	dl := &recorder{}
	r := e.reconciler(reconciler.Config{AckMode: outbox.AckDelete}, dl, at(e.now()))
	if _, err := r.Sweep(testContext(t)); err != nil {
		t.Fatal(err)
	}
	e.exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
	id := e.insertAged(time.Hour)
	swept := 0
	for range 2 { // the first sweep may find the connection dead
		n, _ := r.Sweep(testContext(t))
		swept += n
	}
	if swept != 1 || e.state(id) != "deleted" {
		t.Errorf("after the connection was killed: swept %d, row %s, want 1, deleted", swept, e.state(id))
	}
}

func TestNew(t *testing.T) {
	ok := reconciler.Config{Table: outboxTable, Mapping: outbox.DefaultMapping(), AckMode: outbox.AckDelete}
	connect := func(ctx context.Context) (*pgx.Conn, error) { return nil, errors.New("unused") }
	tests := []struct {
		name    string
		edit    func(*reconciler.Config)
		wantErr string
	}{
		{"delete", func(*reconciler.Config) {}, ""},
		{"mark", func(c *reconciler.Config) { c.AckMode = outbox.AckMark }, ""},
		{"none is disabled", func(c *reconciler.Config) { c.AckMode = "none" }, reconciler.ErrDisabled.Error()},
		{"unknown mode", func(c *reconciler.Config) { c.AckMode = "later" }, `ack mode "later"`},
		{"negative grace", func(c *reconciler.Config) { c.Grace = -time.Second }, "must be positive"},
		// The commit time may stand in (track_commit_timestamp): the
		// first sweep, not New, finds out whether it does.
		{"no created_at", func(c *reconciler.Config) { c.Mapping.CreatedAt = "" }, ""},
		{"mark without published_at", func(c *reconciler.Config) { c.AckMode, c.Mapping.PublishedAt = outbox.AckMark, "" }, "no published_at column"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ok
			tt.edit(&cfg)
			_, err := reconciler.New(cfg, connect, &recorder{}, at(time.Time{}), zerologNop)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("New error = %v, want %q", err, tt.wantErr)
			}
		})
	}
	if _, err := reconciler.New(reconciler.Config{AckMode: "none"}, connect, &recorder{}, at(time.Time{}), zerologNop); !errors.Is(err, reconciler.ErrDisabled) {
		t.Errorf("New(ack mode none) = %v, want ErrDisabled", err)
	}
}
