package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/replication"
)

// checkColumns refuses, before anything is created or read, a table that
// lacks a column the mapping names, each error naming the variable that
// names the column; and a table whose rows have no age (no timestamp column
// and track_commit_timestamp off) when the reconciler and the oldest-unacked
// gauge need one (ACK_MODE delete or mark).
func checkColumns(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	table, m := cfg.TableName(), cfg.Mapping()
	cols, err := replication.TableColumns(ctx, conn, table)
	if err != nil {
		return err
	}
	var errs []error
	missing := func(field, column, use string) {
		errs = append(errs, fmt.Errorf("%s: table %s has no column %q (%s)", ColumnVariables[field], table, column, use))
	}
	for _, c := range []struct{ field, column, use string }{
		{"ID", m.ID, "the id header, and how a delivered row is recorded"},
		{"AggregateID", m.AggregateID, "the record key"},
		{"AggregateType", m.AggregateType, "the routing value of OUTBOX_RELAY_TOPIC"},
		{"Type", m.Type, "the type header"},
		{"Payload", m.Payload, "the record value"},
	} {
		if !hasColumn(cols, c.column) {
			missing(c.field, c.column, c.use)
		}
	}
	if cfg.AckMode == outbox.AckMark && !hasColumn(cols, m.PublishedAt) {
		missing("PublishedAt", m.PublishedAt, "ACK_MODE mark sets it")
	}
	for _, h := range m.HeaderColumns {
		if !hasColumn(cols, h.Column) {
			missing("HeaderColumns", h.Column, "copied into header "+h.Header)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", replication.ErrRefused, errors.Join(errs...))
	}
	if err := checkColumnTypes(ctx, conn, table, m); err != nil {
		return err
	}
	if !cfg.AckMode.RecordsDelivery() || hasColumn(cols, m.CreatedAt) {
		return nil
	}
	var commitTimestamps bool
	if err := conn.QueryRow(ctx, "SELECT current_setting('track_commit_timestamp')::bool").Scan(&commitTimestamps); err != nil {
		return fmt.Errorf("read track_commit_timestamp: %w", err)
	}
	if commitTimestamps {
		return nil
	}
	column := m.CreatedAt
	if strings.TrimSpace(column) == "" {
		column = "created_at"
	}
	return fmt.Errorf("%w: %s: table %s has no column %q and track_commit_timestamp is off, so the reconciler and the oldest-unacked gauge cannot tell a row's age: "+
		"add the column (ALTER TABLE %s ADD COLUMN %s timestamptz NOT NULL DEFAULT now()), name another one in %s, "+
		"or set track_commit_timestamp = on (postgresql.conf, then restart Postgres)",
		replication.ErrRefused, ColumnVariables["CreatedAt"], table, m.CreatedAt,
		table.Quoted(), outbox.QuoteIdent(column), ColumnVariables["CreatedAt"])
}

// checkColumnTypes refuses a mapped column of a type the decoder cannot
// turn into a record's bytes, as the stream's first Relation message would,
// but at start and naming the variable.
func checkColumnTypes(ctx context.Context, conn *pgx.Conn, table outbox.Table, m outbox.Mapping) error {
	rows, err := conn.Query(ctx, `SELECT attname, atttypid, format_type(atttypid, atttypmod) FROM pg_attribute
		WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, table.Quoted())
	if err != nil {
		return fmt.Errorf("read the column types of %s: %w", table, err)
	}
	var columns []decoder.Column
	types := map[string]string{}
	for rows.Next() {
		var c decoder.Column
		var typ string
		if err := rows.Scan(&c.Name, &c.TypeOID, &typ); err != nil {
			rows.Close()
			return fmt.Errorf("read the column types of %s: %w", table, err)
		}
		columns, types[c.Name] = append(columns, c), typ
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read the column types of %s: %w", table, err)
	}
	var bad *decoder.MappingError
	if err := decoder.New(table, m).CheckColumns(columns); errors.As(err, &bad) {
		return fmt.Errorf("%w: %s: column %q is %s: %v", replication.ErrRefused, ColumnVariables[bad.Field], bad.Column, types[bad.Column], bad)
	} else if err != nil {
		return err
	}
	return nil
}
