package relay

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/internal/rows"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/replication"
)

// backfillBatch is how many rows the backfill publishes and acks at a time.
const backfillBatch = 1000

// createSlot creates the missing slot. With ACK_MODE delete or mark it first
// publishes the unacked rows already in the table — rows the WAL of a new
// slot will never show — reading them from the slot's exported snapshot: a
// row committed before the slot's consistent point is in the snapshot, one
// committed after it is in the stream, never both and never neither.
//
// The backfill runs under a temporary slot, turned into the slot only once
// every backfilled row was published and acked: the slot's confirmed
// position (its consistent point) passes the backfilled rows, so it must not
// exist before they are recorded. If the backfill fails or the process dies
// in the middle, the temporary slot goes with its connection and the next
// start backfills again; rows published before the failure are then
// published again (duplicates, never gaps).
func (r *Relay) createSlot(ctx context.Context, conn *pgx.Conn, repl *replication.Conn, acker rowAcker, log zerolog.Logger) error {
	name := r.cfg.Slot
	if !r.cfg.AckMode.RecordsDelivery() {
		created, err := repl.CreateSlot(ctx, name, false)
		if err != nil {
			return err
		}
		log.Info().Str("slot", name).Str("lsn", created.ConsistentPoint.String()).Msg("created replication slot")
		log.Info().Msg("ACK_MODE none: no backfill (the relay cannot tell which existing rows were delivered)")
		return nil
	}
	created, err := repl.CreateTemporarySlot(ctx, name)
	if err != nil {
		return err
	}
	temp := replication.TemporarySlotName(name)
	log.Info().Str("slot", temp).Str("lsn", created.ConsistentPoint.String()).
		Msg("created a temporary replication slot; it becomes slot " + name + " once the backfill is recorded")
	n, err := r.backfill(ctx, conn, created.SnapshotName, acker, log)
	if err != nil {
		return fmt.Errorf("backfill under temporary slot %q (%d rows published before the failure; the next start backfills again): %w", temp, n, err)
	}
	// The lease fences publishing, not this copy: a leader that lost the
	// lock while backfilling stops here rather than create the slot.
	if err := r.checkLeading(ctx, conn); err != nil {
		return err
	}
	if err := repl.PersistSlot(ctx, conn, name); err != nil {
		return err
	}
	log.Info().Str("slot", name).Str("lsn", created.ConsistentPoint.String()).Int("backfilled", n).Msg("created replication slot")
	return nil
}

// checkLeading returns errLostLeadership unless this instance's lock session
// still holds the leader lock, as Postgres sees it now.
func (r *Relay) checkLeading(ctx context.Context, conn *pgx.Conn) error {
	var held bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND pid = $1)`, int64(r.lockPID)).Scan(&held)
	if err != nil {
		return fmt.Errorf("check the leader lock: %w", err)
	}
	if !held {
		return fmt.Errorf("%w: the lock session (pid %d) no longer holds it; stopping the backfill", errLostLeadership, r.lockPID)
	}
	return nil
}

// beginInSnapshot begins a read-only transaction on conn that sees exactly
// the exported snapshot of a slot just created.
func beginInSnapshot(ctx context.Context, conn *pgx.Conn, snapshot string) (pgx.Tx, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("begin a transaction in the slot's snapshot: %w", err)
	}
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+strings.ReplaceAll(snapshot, "'", "''")+"'"); err != nil {
		tx.Rollback(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("import the slot's snapshot %q: %w", snapshot, err)
	}
	return tx, nil
}

// backfill publishes the unacked rows visible in the exported snapshot, in
// created_at (or commit time), id order, and acks each batch before the next. No walsender
// fences it (a new leader ends the old one's walsender, not its queries), so
// before each batch it checks on conn that the leader lock is still held.
func (r *Relay) backfill(ctx context.Context, conn *pgx.Conn, snapshot string, acker rowAcker, log zerolog.Logger) (int, error) {
	table, mapping := r.table, r.mapping
	started := time.Now()

	snapConn, err := pgx.Connect(ctx, r.cfg.PGURL)
	if err != nil {
		return 0, fmt.Errorf("connect for the backfill: %w", err)
	}
	defer snapConn.Close(context.WithoutCancel(ctx))
	tx, err := beginInSnapshot(ctx, snapConn, snapshot)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	cols, err := rows.Lookup(ctx, tx, table, mapping)
	if err != nil {
		return 0, err
	}
	// Oldest first, so that a key's rows go out in the order they were
	// written: by created_at, or by commit time for a table without it.
	order := outbox.QuoteIdent(mapping.ID)
	if age := cols.Time(); cols.Has(mapping.CreatedAt) {
		order = age + ", " + order
	} else if age != "" {
		// A row whose commit time is unknown was written before
		// track_commit_timestamp was turned on: before every known one.
		order = age + " NULLS FIRST, " + order
	}
	// The count sees the same snapshot as the read below, so done/rows is
	// the backfill's exact progress.
	unacked := mapping.Unacked(cols.Has(mapping.PublishedAt))
	var expected int64
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+table.Quoted()+" WHERE "+unacked).Scan(&expected); err != nil {
		return 0, fmt.Errorf("count rows to backfill: %w", err)
	}
	r.metrics.backfillRows.Set(float64(expected))
	r.metrics.backfillDone.Set(0)
	if expected > 0 {
		log.Info().Int64("rows", expected).Str("snapshot", snapshot).Msg("backfilling rows written before the slot existed")
	}
	query := "SELECT " + cols.SelectList() + " FROM " + table.Quoted() + " WHERE " + unacked + " ORDER BY " + order
	result, err := tx.Query(ctx, query)
	if err != nil {
		return 0, fmt.Errorf("read rows to backfill: %w", err)
	}
	defer result.Close()

	batch := make([]outbox.Event, 0, backfillBatch)
	ids := make([]string, 0, backfillBatch)
	total := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := r.checkLeading(ctx, conn); err != nil {
			return err
		}
		delivered, err := r.delivery.deliver(ctx, batch)
		if err != nil {
			return err
		}
		r.metrics.published.Add(float64(delivered))
		var kept []outbox.KeptRow
		ids, _, kept = appendAck(ids[:0], nil, nil, batch)
		// Rows read by SQL carry no partition key: recorded by id alone.
		if err := acker.Ack(ctx, ids, nil, nil, kept); err != nil {
			return err
		}
		total += len(batch)
		r.metrics.backfillDone.Set(float64(total))
		batch = batch[:0]
		return nil
	}
	for result.Next() {
		n := len(batch)
		batch = batch[:n+1]
		ev := &batch[n]
		if _, err := cols.Scan(result, ev); err != nil { // sets ev.Problem for undecodable rows
			return total, err
		}
		if len(batch) == backfillBatch {
			if err := flush(); err != nil {
				return total, err
			}
		}
	}
	if err := result.Err(); err != nil {
		return total, fmt.Errorf("read rows to backfill: %w", err)
	}
	if err := flush(); err != nil {
		return total, err
	}
	if total > 0 {
		log.Info().Int("rows", total).Dur("took", time.Since(started)).Msg("backfilled rows written before the slot existed")
	}
	return total, nil
}
