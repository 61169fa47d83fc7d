package relay

import (
	"context"
	"fmt"
	"io"
	"reflect"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/replication"
	"github.com/outbox-relay/outbox-relay/sql"
)

// SetupOptions change what Setup does.
type SetupOptions struct {
	// RecreateSlot drops the existing slot (a lost or invalidated one) so
	// that the next `run` creates it anew and backfills the unacked rows the
	// WAL will never show.
	RecreateSlot bool
}

// Setup idempotently creates the outbox table, the publication and the slot,
// and prints what it did to out. It drops nothing unless asked to recreate
// the slot.
//
// It leaves the slot to `run` when the table already holds unacked rows:
// those rows are older than any new slot, so only the relay, which creates the
// slot with an exported snapshot and publishes them before streaming, can
// deliver them with no gap and no double.
func Setup(ctx context.Context, cfg Config, log zerolog.Logger, out io.Writer, opts SetupOptions) error {
	table, mapping := cfg.TableName(), cfg.Mapping()
	conn, err := pgx.Connect(ctx, cfg.PGURL)
	if err != nil {
		return fmt.Errorf("connect to Postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	if err := replication.CheckServer(ctx, conn); err != nil {
		return err
	}
	if _, err := replication.TableColumns(ctx, conn, table); err == nil {
		fmt.Fprintf(out, "table %s: exists\n", table)
	} else {
		// sql/outbox.sql has the default column names: a table created
		// from it would not fit another mapping.
		if !reflect.DeepEqual(mapping, outbox.DefaultMapping()) {
			return fmt.Errorf("%w: table %s does not exist, and setup creates it only with the default columns (sql/outbox.sql) while the COLUMN_*/HEADER_COLUMNS variables map others: create the table as the application expects it, then run setup again", replication.ErrRefused, table)
		}
		if _, err := conn.Exec(ctx, sql.OutboxTable(table)); err != nil {
			return fmt.Errorf("create table %s: %w (an admin can run the DDL in sql/outbox.sql)", table, err)
		}
		fmt.Fprintf(out, "table %s: created\n", table)
	}
	dead := table.DeadLetterTable()
	if _, err := replication.TableColumns(ctx, conn, dead); err == nil {
		fmt.Fprintf(out, "dead-letter table %s: exists\n", dead)
	} else {
		if _, err := conn.Exec(ctx, sql.DeadLetterTable(table, mapping.ID)); err != nil {
			return fmt.Errorf("create dead-letter table %s: %w (an admin can run the DDL in sql/outbox.sql)", dead, err)
		}
		fmt.Fprintf(out, "dead-letter table %s: created\n", dead)
	}
	if err := checkColumns(ctx, conn, cfg); err != nil {
		return err
	}
	cols, err := replication.CheckTable(ctx, conn, table, mapping, cfg.AckMode)
	if err != nil {
		return err
	}
	created, err := replication.EnsurePublication(ctx, conn, cfg.Publication, table)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "publication %s: %s\n", cfg.Publication, map[bool]string{true: "created", false: "exists"}[created])

	slot, ok, err := replication.LookupSlot(ctx, conn, cfg.Slot)
	if err != nil {
		return err
	}
	if ok && opts.RecreateSlot {
		if slot.Active {
			return fmt.Errorf("slot %q is in use by pid %d: stop the relay before recreating the slot", cfg.Slot, slot.ActivePID)
		}
		if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", cfg.Slot); err != nil {
			return fmt.Errorf("drop slot %q: %w", cfg.Slot, err)
		}
		log.Warn().Str("slot", cfg.Slot).Str("wal_status", slot.WALStatus).Str("confirmed", slot.ConfirmedFlushLSN.String()).
			Msg("dropped the slot to recreate it")
		fmt.Fprintf(out, "slot %s: dropped (was %s, confirmed %s)\n", cfg.Slot, orUnknown(slot.WALStatus), slot.ConfirmedFlushLSN)
		ok = false
	}
	if ok {
		if err := replication.CheckSlot(ctx, conn, slot); err != nil {
			return err
		}
		fmt.Fprintf(out, "slot %s: exists (confirmed %s)\n", cfg.Slot, slot.ConfirmedFlushLSN)
		return nil
	}
	leaveToRun := func(unacked int64) {
		fmt.Fprintf(out, "slot %s: left to `outbox-relay run`, which creates it and first publishes the %d unacked row(s) already in %s (backfill)\n",
			cfg.Slot, unacked, table)
	}
	hasPublishedAt := hasColumn(cols, mapping.PublishedAt)
	if opts.RecreateSlot && cfg.AckMode.RecordsDelivery() {
		unacked, err := countUnacked(ctx, conn, table, mapping, hasPublishedAt)
		if err != nil {
			return err
		}
		leaveToRun(unacked)
		return nil
	}
	repl, err := replication.Connect(ctx, cfg.PGURL, log)
	if err != nil {
		return err
	}
	defer repl.Close(context.WithoutCancel(ctx))
	if !cfg.AckMode.RecordsDelivery() {
		res, err := repl.CreateSlot(ctx, cfg.Slot, false)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "slot %s: created at %s\n", cfg.Slot, res.ConsistentPoint)
		return nil
	}
	// Counted in the snapshot of a temporary slot: a row committed before
	// its consistent point is counted here, one after it is in the stream.
	// Counting before creating the slot would miss a transaction committing
	// in between, which neither the stream nor a backfill would then
	// deliver. Only `run`, which can publish, may create a slot with rows
	// behind it (it backfills them first); with none, the temporary slot
	// becomes the slot.
	res, err := repl.CreateTemporarySlot(ctx, cfg.Slot)
	if err != nil {
		return err
	}
	unacked, err := countUnackedInSnapshot(ctx, conn, res.SnapshotName, table, mapping, hasPublishedAt)
	if err != nil {
		return err
	}
	if unacked > 0 {
		leaveToRun(unacked) // the temporary slot goes with the connection
		return nil
	}
	if err := repl.PersistSlot(ctx, conn, cfg.Slot); err != nil {
		return err
	}
	fmt.Fprintf(out, "slot %s: created at %s\n", cfg.Slot, res.ConsistentPoint)
	return nil
}

// countUnackedInSnapshot counts the unacked rows visible in the exported
// snapshot, on conn (a second connection: the exporting one must stay idle).
func countUnackedInSnapshot(ctx context.Context, conn *pgx.Conn, snapshot string, table outbox.Table, m outbox.Mapping, hasPublishedAt bool) (int64, error) {
	tx, err := beginInSnapshot(ctx, conn, snapshot)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	return countUnacked(ctx, tx, table, m, hasPublishedAt)
}

// countUnacked counts the rows whose delivery is not recorded.
func countUnacked(ctx context.Context, q querier, table outbox.Table, m outbox.Mapping, hasPublishedAt bool) (int64, error) {
	var n int64
	err := q.QueryRow(ctx, "SELECT count(*) FROM "+table.Quoted()+" WHERE "+m.Unacked(hasPublishedAt)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count unacked rows of %s: %w", table, err)
	}
	return n, nil
}

// querier runs a one-row query: *pgx.Conn and pgx.Tx are queriers.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// hasColumn reports whether the table has the column; an unnamed column
// ("" in the mapping) it never has.
func hasColumn(cols map[string]replication.Column, name string) bool {
	_, ok := cols[name]
	return name != "" && ok
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
