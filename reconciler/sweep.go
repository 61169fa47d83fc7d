package reconciler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/rows"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// queries are the statements of a sweep, built once per connection from the
// table's columns.
type queries struct {
	cols *rows.Columns
	// selectOld locks the oldest unacknowledged rows that the age rule lets
	// go: $1 the grace in microseconds, $2 the watermark's commit time, $3
	// the batch size. Rows another sweep holds are skipped, not waited for.
	selectOld string
	// remove deletes or marks the rows at the addresses $1 (text[],
	// "tableoid:ctid") whose ctids are $2 (text[]).
	remove string
}

func buildQueries(cols *rows.Columns, cfg Config) (*queries, error) {
	m := cfg.Mapping
	age := cols.Time()
	if age == "" {
		return nil, fmt.Errorf("table %s has no column %q (OUTBOX_RELAY_COLUMN_TIMESTAMP) and track_commit_timestamp is off: the reconciler needs a row's age from one of them", cfg.Table, m.CreatedAt)
	}
	if cfg.AckMode == outbox.AckMark && !cols.Has(m.PublishedAt) {
		return nil, fmt.Errorf("table %s has no column %q (published_at), which ACK_MODE mark needs", cfg.Table, m.PublishedAt)
	}
	table := cfg.Table.Quoted()
	unacked := m.Unacked(cols.Has(m.PublishedAt))
	// The age rule, on the server's clock both ways: created_at is the
	// server's now() of the inserting transaction (or the commit time of the
	// row's transaction) and the watermark's commit time comes from the WAL.
	grace := "$1::bigint * interval '1 microsecond'"
	q := &queries{cols: cols}
	q.selectOld = fmt.Sprintf(
		"SELECT %s, ctid::text, tableoid::text FROM %s WHERE %s AND %s < now() - %s AND %s < $2::timestamptz - %s ORDER BY %s, %s LIMIT $3 FOR UPDATE SKIP LOCKED",
		cols.SelectList(), table, unacked, age, grace, age, grace, age, outbox.QuoteIdent(m.ID))
	// The rows are locked by this transaction, so their ctids cannot change
	// before it ends; unlike the id, a ctid also finds a row whose id is NULL.
	// A ctid is unique within one table only: the partitions of a
	// partitioned outbox each have a row at (0,1), so a row's address is
	// its table's oid and its ctid. The ctids alone let each partition
	// find its rows with a TID scan; the address filter then keeps only
	// those of the right partition.
	byAddress := "ctid = ANY($2::text[]::tid[]) AND (tableoid::text || ':' || ctid::text) = ANY($1::text[])"
	q.remove = fmt.Sprintf("DELETE FROM %s WHERE %s", table, byAddress)
	if cfg.AckMode == outbox.AckMark {
		q.remove = fmt.Sprintf("UPDATE %s SET %s = now() WHERE %s", table, outbox.QuoteIdent(m.PublishedAt), byAddress)
	}
	return q, nil
}

// foundRow is what a sweep keeps about a locked row besides its Event.
type foundRow struct {
	ctid     string
	tableOID string // the partition holding the row (the table itself when not partitioned)
	row      rows.Row
}

// Sweep runs one pass: batch after batch, it locks the oldest rows the age
// rule lets go, dead-letters them and, once DeadLetter returned nil, deletes
// or marks them in the same transaction, until a batch comes back short. It
// returns how many rows it dead-lettered and removed. With an unknown
// Position it does nothing.
//
// Rows that the stream could not have turned into a record either (NULL
// aggregateid, headers that are not an object of strings, …) are
// dead-lettered with reason decode_error, as the stream does, each on its
// own so that its error text names its fault; the others with reason
// unacked_after_grace.
func (r *Reconciler) Sweep(ctx context.Context) (int, error) {
	watermark := r.pos()
	if watermark.IsZero() {
		return 0, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.connectLocked(ctx); err != nil {
		return 0, err
	}
	var total batch
	var err error
	for {
		var b batch
		b, err = r.sweepBatch(ctx, watermark)
		if b.rows > 0 && (total.oldest.IsZero() || b.oldest.Before(total.oldest)) {
			total.oldest = b.oldest
		}
		total.rows += b.rows
		total.undecodable += b.undecodable
		if err != nil || !b.full {
			break
		}
	}
	if total.rows > 0 {
		ev := r.log.Warn().Int("rows", total.rows).Int("undecodable", total.undecodable).Dur("grace", r.cfg.Grace)
		if !total.oldest.IsZero() {
			ev = ev.Dur("oldest_age", time.Since(total.oldest).Round(time.Second))
		}
		ev.Msg("dead-lettered rows never acknowledged within the grace period")
	}
	return total.rows, err
}

func (r *Reconciler) connectLocked(ctx context.Context) error {
	if r.conn != nil {
		return nil
	}
	conn, err := r.connect(ctx)
	if err != nil {
		return fmt.Errorf("reconciler: connect: %w", err)
	}
	cols, err := rows.Lookup(ctx, conn, r.cfg.Table, r.cfg.Mapping)
	if err == nil {
		r.queries, err = buildQueries(cols, r.cfg)
	}
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("reconciler: %w", err)
	}
	r.conn = conn
	return nil
}

// errDeadLetter marks a DeadLetter failure: the transaction is rolled back
// but the connection is fine.
type errDeadLetter struct{ err error }

func (e *errDeadLetter) Error() string { return e.err.Error() }
func (e *errDeadLetter) Unwrap() error { return e.err }

// batch is what one transaction of a sweep did.
type batch struct {
	rows        int       // dead-lettered and removed
	undecodable int       // of rows, dead-lettered with reason decode_error
	oldest      time.Time // the oldest created_at among them
	full        bool      // the batch was full: more rows may be waiting
}

// sweepBatch sweeps one batch in one transaction.
func (r *Reconciler) sweepBatch(ctx context.Context, watermark time.Time) (batch, error) {
	b, err := r.sweepTx(ctx, watermark)
	var dlErr *errDeadLetter
	if err != nil && !errors.As(err, &dlErr) {
		// A broken connection or a changed table: start afresh next time.
		r.closeConnLocked(context.WithoutCancel(ctx))
	}
	return b, err
}

func (r *Reconciler) sweepTx(ctx context.Context, watermark time.Time) (batch, error) {
	tx, err := r.conn.Begin(ctx)
	if err != nil {
		return batch{}, fmt.Errorf("reconciler: begin: %w", err)
	}
	// After a commit this does nothing; otherwise nothing is removed.
	defer tx.Rollback(context.WithoutCancel(ctx))

	found, err := r.lockOld(ctx, tx, watermark)
	if err != nil || found == 0 {
		return batch{}, err
	}
	undecodable, err := r.deadLetter(ctx)
	if err != nil {
		return batch{}, &errDeadLetter{fmt.Errorf("reconciler: dead-letter %d rows (nothing removed): %w", found, err)}
	}
	addresses, ctids := make([]string, found), make([]string, found)
	for i, f := range r.found {
		addresses[i], ctids[i] = f.tableOID+":"+f.ctid, f.ctid
	}
	tag, err := tx.Exec(ctx, r.queries.remove, addresses, ctids)
	if err != nil {
		return batch{}, fmt.Errorf("reconciler: remove %d dead-lettered rows: %w", found, err)
	}
	if int(tag.RowsAffected()) != found {
		return batch{}, fmt.Errorf("reconciler: removed %d of %d locked rows; rolled back", tag.RowsAffected(), found)
	}
	if err := tx.Commit(ctx); err != nil {
		return batch{}, fmt.Errorf("reconciler: commit removal of %d dead-lettered rows: %w", found, err)
	}
	return batch{rows: found, undecodable: undecodable, oldest: r.found[0].row.CreatedAt, full: found == r.cfg.Batch}, nil
}

// lockOld selects and locks a batch into r.events and r.found, oldest first.
func (r *Reconciler) lockOld(ctx context.Context, tx pgx.Tx, watermark time.Time) (int, error) {
	res, err := tx.Query(ctx, r.queries.selectOld, r.cfg.Grace.Microseconds(), watermark, r.cfg.Batch)
	if err != nil {
		return 0, fmt.Errorf("reconciler: select unacknowledged rows: %w", err)
	}
	defer res.Close()
	r.found = r.found[:0]
	n := 0
	for res.Next() {
		if n == len(r.events) {
			r.events = append(r.events, outbox.Event{})
		}
		row, err := r.queries.cols.Scan(res, &r.events[n])
		if err != nil {
			return 0, fmt.Errorf("reconciler: %w", err)
		}
		raw := res.RawValues()
		extra := r.queries.cols.Len() // ctid and tableoid follow the selected columns
		r.found = append(r.found, foundRow{ctid: string(raw[extra]), tableOID: string(raw[extra+1]), row: row})
		n++
	}
	if err := res.Err(); err != nil {
		return 0, fmt.Errorf("reconciler: select unacknowledged rows: %w", err)
	}
	return n, nil
}

// deadLetter publishes the locked rows in order: each run of sound rows in
// one call, each undecodable row in a call of its own. It returns how many
// rows were undecodable.
func (r *Reconciler) deadLetter(ctx context.Context) (int, error) {
	late := fmt.Sprintf("not acknowledged within %s of being committed", r.cfg.Grace)
	problems, start := 0, 0
	flush := func(end int) error {
		if start == end {
			return nil
		}
		err := r.dl.DeadLetter(ctx, r.events[start:end], outbox.ReasonUnackedAfterGrace, late)
		start = end
		return err
	}
	for i, f := range r.found {
		if f.row.Problem.IsZero() {
			continue
		}
		problems++
		if err := flush(i); err != nil {
			return problems, err
		}
		errText := r.events[i].Problem + " (" + late + ")"
		if err := r.dl.DeadLetter(ctx, r.events[i:i+1], outbox.ReasonDecodeError, errText); err != nil {
			return problems, err
		}
		start = i + 1
	}
	return problems, flush(len(r.found))
}
