package reconciler_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/internal/devenv/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/reconciler"
	"github.com/outbox-relay/outbox-relay/sql"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var (
	outboxTable = outbox.Table{Schema: "public", Name: "outbox"}
	zerologNop  = zerolog.Nop()
)

// env is a test's database with the outbox table created by the relay's DDL.
type env struct {
	t    *testing.T
	url  string
	conn *pgx.Conn // the test's own connection, never the reconciler's
}

func newEnv(t *testing.T) *env {
	t.Helper()
	_, url := pgtest.Database(t)
	e := &env{t: t, url: url}
	e.conn = e.connect()
	e.exec(sql.OutboxTable(outboxTable))
	return e
}

func (e *env) connect() *pgx.Conn {
	e.t.Helper()
	conn, err := pgx.Connect(testContext(e.t), e.url)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.conn.Exec(testContext(e.t), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// insertAged inserts a row written age ago and returns its id.
func (e *env) insertAged(age time.Duration) string {
	e.t.Helper()
	var id string
	err := e.conn.QueryRow(testContext(e.t), `
		INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, headers, created_at)
		VALUES ('order', 'o-1', 'OrderCreated', '{"n": 1}', '{"trace": "abc"}', now() - $1::bigint * interval '1 microsecond')
		RETURNING id::text`, age.Microseconds()).Scan(&id)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

// now is the server's clock, which created_at and commit times come from.
func (e *env) now() time.Time {
	e.t.Helper()
	var now time.Time
	if err := e.conn.QueryRow(testContext(e.t), "SELECT now()").Scan(&now); err != nil {
		e.t.Fatal(err)
	}
	return now
}

// state returns "deleted", "unacked" or "marked" for row id.
func (e *env) state(id string) string {
	e.t.Helper()
	var marked bool
	err := e.conn.QueryRow(testContext(e.t), "SELECT published_at IS NOT NULL FROM public.outbox WHERE id = $1", id).Scan(&marked)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "deleted"
	case err != nil:
		e.t.Fatal(err)
	case marked:
		return "marked"
	}
	return "unacked"
}

func (e *env) count() int {
	e.t.Helper()
	var n int
	if err := e.conn.QueryRow(testContext(e.t), "SELECT count(*) FROM public.outbox").Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// reconciler returns a Reconciler on the test's database, closed at the end.
func (e *env) reconciler(cfg reconciler.Config, dl reconciler.DeadLetterer, pos reconciler.Position) *reconciler.Reconciler {
	e.t.Helper()
	cfg.Table, cfg.Mapping = outboxTable, outbox.DefaultMapping()
	connect := func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, e.url) }
	r, err := reconciler.New(cfg, connect, dl, pos, zerolog.New(zerolog.NewTestWriter(e.t)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { r.Close(context.Background()) })
	return r
}

func at(t time.Time) reconciler.Position { return func() time.Time { return t } }

func testContext(t *testing.T) context.Context { return pgtest.Context(t) }

// call is one DeadLetter call as the recorder saw it.
type call struct {
	ids     []string
	events  []outbox.Event // copies
	reason  string
	errText string
}

// recorder is a DeadLetterer that remembers what it was given. during, when
// set, runs inside DeadLetter before it returns fail.
type recorder struct {
	mu     sync.Mutex
	calls  []call
	fail   error
	during func(events []outbox.Event)
}

func (r *recorder) DeadLetter(ctx context.Context, events []outbox.Event, reason, errText string) error {
	r.mu.Lock()
	during, fail := r.during, r.fail
	r.mu.Unlock()
	if during != nil {
		during(events)
	}
	if fail != nil {
		return fail
	}
	c := call{reason: reason, errText: errText}
	for _, ev := range events {
		c.ids = append(c.ids, string(ev.ID))
		c.events = append(c.events, copyEvent(ev))
	}
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	return nil
}

func (r *recorder) setFail(err error) {
	r.mu.Lock()
	r.fail = err
	r.mu.Unlock()
}

func (r *recorder) recorded() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

func (r *recorder) ids() []string {
	var ids []string
	for _, c := range r.recorded() {
		ids = append(ids, c.ids...)
	}
	return ids
}

func copyEvent(ev outbox.Event) outbox.Event {
	clone := func(b []byte) []byte {
		if b == nil {
			return nil
		}
		return append([]byte{}, b...)
	}
	out := outbox.Event{
		ID: clone(ev.ID), AggregateType: clone(ev.AggregateType), AggregateID: clone(ev.AggregateID),
		Type: clone(ev.Type), Payload: clone(ev.Payload), Topic: clone(ev.Topic),
		LSN: ev.LSN, CommitTime: ev.CommitTime, Txn: ev.Txn,
	}
	for _, h := range ev.Headers {
		out.Headers = append(out.Headers, outbox.Header{Key: h.Key, Value: clone(h.Value)})
	}
	return out
}
