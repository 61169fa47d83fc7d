package faults

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// committedTxn is one transaction whose COMMIT returned success: its xid
// (32 bits, as the WAL carries it) finds its commit record for the audit.
type committedTxn struct {
	xid  uint32
	ids  []string
	keys []string
	seqs []int // commit order within each key's writer
}

// ledger is C: what the scenario knows it committed, recorded only after
// COMMIT returned. uncertain holds the ids of transactions whose COMMIT
// was sent but never answered (the server went away): they may or may not
// exist, so they count neither as committed nor as strangers.
type ledger struct {
	mu        sync.Mutex
	txns      []committedTxn
	uncertain map[string]bool
}

func newLedger() *ledger { return &ledger{uncertain: make(map[string]bool)} }

func (l *ledger) add(t committedTxn) {
	l.mu.Lock()
	l.txns = append(l.txns, t)
	l.mu.Unlock()
}

func (l *ledger) markUncertain(ids []string) {
	l.mu.Lock()
	for _, id := range ids {
		l.uncertain[id] = true
	}
	l.mu.Unlock()
}

func (l *ledger) rows() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, t := range l.txns {
		n += len(t.ids)
	}
	return n
}

// row is one outbox row a scenario inserts; nil pointers are SQL NULL.
type row struct {
	aggregateType string
	key           string
	seq           int
	payload       *string // JSON text
	headers       *string // JSON text, verbatim
	topic         *string
}

// insertSQL inserts the rows of arrays in one statement; the xid comes back
// with every id.
const insertSQL = `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, headers, topic)
	SELECT t, k, 'Placed', p::jsonb, h::jsonb, tp FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(t, k, p, h, tp)
	RETURNING id::text, aggregateid, coalesce((payload->>'seq')::int, 0), (txid_current() % 4294967296)::bigint`

// commitRows inserts rows in one transaction and records it in the ledger
// once COMMIT returned. A COMMIT without an answer marks its ids uncertain.
func (l *ledger) commitRows(ctx context.Context, conn *pgx.Conn, rows []row) error {
	var types, keys []string
	var payloads, headers, topics []*string
	for _, r := range rows {
		types = append(types, r.aggregateType)
		keys = append(keys, r.key)
		payloads = append(payloads, r.payload)
		headers = append(headers, r.headers)
		topics = append(topics, r.topic)
	}
	return l.commitQuery(ctx, conn, insertSQL, types, keys, payloads, headers, topics)
}

// commitQuery runs an INSERT that returns id, key, seq and xid of each row
// in one transaction, then commits it.
func (l *ledger) commitQuery(ctx context.Context, conn *pgx.Conn, sql string, args ...any) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	res, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	t := committedTxn{}
	for res.Next() {
		var id, key string
		var seq int
		var xid int64
		if err := res.Scan(&id, &key, &seq, &xid); err != nil {
			res.Close()
			return err
		}
		t.ids, t.keys, t.seqs, t.xid = append(t.ids, id), append(t.keys, key), append(t.seqs, seq), uint32(xid)
	}
	res.Close()
	if err := res.Err(); err != nil {
		return err
	}
	return l.commit(ctx, tx, t)
}

// commit commits tx, then records t: committed, or uncertain when the
// answer to COMMIT was lost.
func (l *ledger) commit(ctx context.Context, tx pgx.Tx, t committedTxn) error {
	if err := tx.Commit(ctx); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			l.markUncertain(t.ids) // sent, perhaps applied, never answered
		}
		return fmt.Errorf("commit: %w", err)
	}
	l.add(t)
	return nil
}

// writer commits small transactions (1 to 3 rows, keys <prefix>-0…7)
// continuously from its own connection, reconnecting after errors, until
// stopped. Its rows are the scenario's steady load.
type writer struct {
	prefix   string
	pause    time.Duration // between transactions
	stopping atomic.Bool
	done     chan struct{}
	commits  atomic.Int64
	failures atomic.Int64
}

func (w *world) startWriter(prefix string, pause time.Duration) *writer {
	wr := &writer{prefix: prefix, pause: pause, done: make(chan struct{})}
	go wr.run(w.name, w.ledger)
	w.t.Cleanup(wr.stop)
	return wr
}

func (wr *writer) run(db string, l *ledger) {
	defer close(wr.done)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for seq := 0; !wr.stopping.Load(); {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if conn == nil || conn.IsClosed() {
			var err error
			if conn, err = connectSync(ctx, db); err != nil {
				cancel()
				conn = nil
				wr.failures.Add(1)
				time.Sleep(200 * time.Millisecond) // the server is down: retry
				continue
			}
		}
		rows := make([]row, 1+seq%3)
		for i := range rows {
			s := seq + i
			rows[i] = row{aggregateType: "order", key: fmt.Sprintf("%s-%d", wr.prefix, s%8), seq: s,
				payload: jsonText(fmt.Sprintf(`{"seq": %d}`, s))}
		}
		err := l.commitRows(ctx, conn, rows)
		cancel()
		if err != nil {
			wr.failures.Add(1)
			conn.Close(context.Background())
			conn = nil
			continue
		}
		seq += len(rows) // a failed transaction's seqs are used again: its rows do not exist, or are uncertain
		wr.commits.Add(1)
		if wr.pause > 0 {
			time.Sleep(wr.pause) // the load's rate
		}
	}
}

// stop stops the writer after its current transaction.
func (wr *writer) stop() {
	wr.stopping.Store(true)
	<-wr.done
}

// connectSync connects to db with synchronous_commit on: a commit that
// returned is on disk, so a crashed server keeps it (the cluster's default
// is off, for speed).
func connectSync(ctx context.Context, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(pg.URL(db))
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["synchronous_commit"] = "on"
	return pgx.ConnectConfig(ctx, cfg)
}

func jsonText(s string) *string { return &s }

// waitCommits waits until the writer committed n more transactions.
func (w *world) waitCommits(wr *writer, n int64, timeout time.Duration) {
	w.t.Helper()
	from := wr.commits.Load()
	w.waitFor(timeout, fmt.Sprintf("%d more commits by writer %s", n, wr.prefix), func() (bool, string) {
		got := wr.commits.Load() - from
		return got >= n, fmt.Sprintf("%d commits, %d failures", got, wr.failures.Load())
	})
}
