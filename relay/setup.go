package relay

import (
	"context"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/replication"
	"github.com/outbox-relay/outbox-relay/sql"
)

// Setup idempotently creates the outbox table, the publication and the slot,
// and prints what it did to out. It never drops anything.
func Setup(ctx context.Context, cfg Config, log zerolog.Logger, out io.Writer) error {
	table := cfg.TableName()
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
		if _, err := conn.Exec(ctx, sql.OutboxTable(table)); err != nil {
			return fmt.Errorf("create table %s: %w (an admin can run the DDL in sql/outbox.sql)", table, err)
		}
		fmt.Fprintf(out, "table %s: created\n", table)
	}
	ackColumn := ""
	if cfg.AckMode == AckMark {
		ackColumn = outbox.DefaultMapping().PublishedAt
	}
	if _, err := replication.CheckTable(ctx, conn, table, outbox.DefaultMapping(), ackColumn); err != nil {
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
	if ok {
		if err := replication.CheckSlot(ctx, conn, slot); err != nil {
			return err
		}
		fmt.Fprintf(out, "slot %s: exists (confirmed %s)\n", cfg.Slot, slot.ConfirmedFlushLSN)
		return nil
	}
	repl, err := replication.Connect(ctx, cfg.PGURL, log)
	if err != nil {
		return err
	}
	defer repl.Close(context.WithoutCancel(ctx))
	res, err := repl.CreateSlot(ctx, cfg.Slot, false)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "slot %s: created at %s\n", cfg.Slot, res.ConsistentPoint)
	return nil
}
