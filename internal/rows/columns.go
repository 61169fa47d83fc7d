// Package rows reads outbox rows with SQL and turns them into outbox.Events
// exactly as the stream's decoder turns their INSERTs into Events: the same
// bytes for every field, the same headers in the same order, nil for SQL
// NULL, and the same faults for rows that cannot become records.
//
// The backfill (rows written before the slot existed) and the reconciler
// (rows whose delivery was never confirmed) use it. It runs the queries its
// callers build from SelectList; it never writes, and it never drops a row it
// cannot convert: such a row comes back with a Problem so that the caller can
// dead-letter it.
package rows

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Positions of the selected columns; the header columns
// (Mapping.HeaderColumns) follow them, in their order.
const (
	colID = iota
	colAggregateType
	colAggregateID
	colType
	colPayload
	colHeaders
	colTopic
	colCreatedAt
	colTime
	colCommitTime
	numFixed
)

// Querier runs a query: *pgx.Conn and pgx.Tx are Queriers.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Columns says how the mapped columns of one outbox table are selected and
// scanned. Build it with Lookup; it is immutable and safe for concurrent use.
type Columns struct {
	table   outbox.Table
	mapping outbox.Mapping
	present map[string]bool   // the table's columns
	types   map[string]string // column name -> built-in type name (pg_type.typname)
	// commitTimestamps: track_commit_timestamp is on, so a row's commit
	// time is known (pg_xact_commit_timestamp(xmin)).
	commitTimestamps bool
	// hex says, per selected column, that it is a bytea selected as hex
	// text and decoded back to the raw bytes, as the decoder does with bytea.
	hex        []bool
	selectList string
}

// Lookup reads the columns of table from the catalog and returns how to read
// its rows with mapping m. The columns for ID, AggregateType, AggregateID,
// Type and Payload must exist, and those of m.HeaderColumns; Headers, Topic
// and CreatedAt may be absent from the table (or unnamed by m), and are then
// selected as NULL.
//
// In a transaction that imports a snapshot, call Lookup after SET
// TRANSACTION SNAPSHOT, or before BEGIN on the same connection: the snapshot
// must be set before the transaction's first query.
func Lookup(ctx context.Context, q Querier, table outbox.Table, m outbox.Mapping) (*Columns, error) {
	r, err := q.Query(ctx, `
		SELECT a.attname, CASE WHEN t.typnamespace = 'pg_catalog'::regnamespace THEN t.typname ELSE '' END
		FROM pg_attribute a
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped`,
		table.Schema, table.Name)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	present := map[string]bool{}
	types := map[string]string{}
	for r.Next() {
		var name, typ string
		if err := r.Scan(&name, &typ); err != nil {
			r.Close()
			return nil, fmt.Errorf("read columns of %s: %w", table, err)
		}
		present[name], types[name] = true, typ
	}
	if err := r.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	if len(present) == 0 {
		return nil, fmt.Errorf("table %s does not exist", table)
	}
	var commitTimestamps bool
	if err := q.QueryRow(ctx, "SELECT current_setting('track_commit_timestamp')::bool").Scan(&commitTimestamps); err != nil {
		return nil, fmt.Errorf("read track_commit_timestamp: %w", err)
	}
	required := []struct{ field, column string }{
		{"ID", m.ID}, {"AggregateType", m.AggregateType}, {"AggregateID", m.AggregateID},
		{"Type", m.Type}, {"Payload", m.Payload},
	}
	for _, r := range required {
		if r.column == "" {
			return nil, fmt.Errorf("table %s: the column mapping names no column for %s, which is required", table, r.field)
		}
		if !present[r.column] {
			return nil, fmt.Errorf("table %s has no column %q, which the column mapping requires for %s", table, r.column, r.field)
		}
	}
	for _, h := range m.HeaderColumns {
		if !present[h.Column] {
			return nil, fmt.Errorf("table %s has no column %q, which the column mapping copies into header %q", table, h.Column, h.Header)
		}
	}
	c := &Columns{table: table, mapping: m, present: present, types: types, commitTimestamps: commitTimestamps}
	c.selectList = c.buildSelectList()
	return c, nil
}

// Len is how many columns SelectList selects. A caller may select more
// columns after them (a ctid, say) and read those itself from
// RawValues()[Len():]; Scan ignores them.
func (c *Columns) Len() int { return numFixed + len(c.mapping.HeaderColumns) }

// Time is the SQL expression of a row's age, for the reconciler's rule,
// the backfill's order and the oldest-unacked gauge: the timestamp column
// (Mapping.CreatedAt) when the table has it, else the commit time of the
// row's transaction when track_commit_timestamp is on (NULL for a row
// older than the setting, and for a frozen one); "" when neither is there.
func (c *Columns) Time() string {
	return TimeExpr(c.Has(c.mapping.CreatedAt), c.mapping.CreatedAt, c.commitTimestamps)
}

// TimeExpr is Columns.Time for callers without a Columns: hasColumn says
// whether the table has the timestamp column.
func TimeExpr(hasColumn bool, column string, commitTimestamps bool) string {
	switch {
	case hasColumn:
		return outbox.QuoteIdent(column) + "::timestamptz"
	case commitTimestamps:
		return "pg_xact_commit_timestamp(xmin)"
	}
	return ""
}

// Has reports whether the table has the named column.
func (c *Columns) Has(column string) bool { return column != "" && c.present[column] }

// SelectList is the column list of a SELECT from the outbox table whose rows
// Scan reads: id, aggregatetype, aggregateid, type, payload, headers, topic
// (as mapped), each as the text pgoutput carries for it (`col::text`; a
// bpchar as is, keeping its padding; a bytea as hex); then the row's age
// (Time), its record time (a timestamptz timestamp column, in Unix
// microseconds), its commit time (with track_commit_timestamp, in Unix
// microseconds), and the header columns as text. Mapped columns the table
// lacks are selected as NULL. Column names are quoted, so the list can be
// used as is in `SELECT <list> FROM <table>`.
func (c *Columns) SelectList() string { return c.selectList }

// int64 nanoseconds hold 1678 to 2261: an instant outside (or infinite) is
// no record time, as in the decoder.
const (
	minRecordTime = "'1678-01-01 00:00:00+00'"
	maxRecordTime = "'2262-01-01 00:00:00+00'"
)

func (c *Columns) buildSelectList() string {
	m := c.mapping
	c.hex = make([]bool, c.Len())
	asText := func(col int, column string) string {
		switch {
		case !c.Has(column):
			return "NULL::text"
		case c.types[column] == "bpchar":
			// A cast to text would strip the padding the stream keeps; a
			// bpchar's binary and text forms are both the padded text.
			return outbox.QuoteIdent(column)
		case c.types[column] == "bytea" && (col == colPayload || col >= numFixed):
			// bytea's text form depends on bytea_output; hex does not.
			c.hex[col] = true
			return "encode(" + outbox.QuoteIdent(column) + ", 'hex')"
		default:
			// The type's output function, as pgoutput sends it.
			return outbox.QuoteIdent(column) + "::text"
		}
	}
	micros := func(expr string) string {
		return "(extract(epoch FROM " + expr + ") * 1000000)::int8"
	}
	exprs := make([]string, c.Len())
	exprs[colID] = asText(colID, m.ID)
	exprs[colAggregateType] = asText(colAggregateType, m.AggregateType)
	exprs[colAggregateID] = asText(colAggregateID, m.AggregateID)
	exprs[colType] = asText(colType, m.Type)
	exprs[colPayload] = asText(colPayload, m.Payload)
	exprs[colHeaders] = asText(colHeaders, m.Headers)
	exprs[colTopic] = asText(colTopic, m.Topic)
	exprs[colCreatedAt] = "NULL::timestamptz"
	if t := c.Time(); t != "" {
		exprs[colCreatedAt] = t
	}
	exprs[colTime] = "NULL::int8"
	if c.Has(m.CreatedAt) && c.types[m.CreatedAt] == "timestamptz" {
		col := outbox.QuoteIdent(m.CreatedAt)
		exprs[colTime] = "CASE WHEN " + col + " >= " + minRecordTime + " AND " + col + " < " + maxRecordTime + " THEN " + micros(col) + " END"
	}
	exprs[colCommitTime] = "NULL::int8"
	if c.commitTimestamps {
		exprs[colCommitTime] = micros("pg_xact_commit_timestamp(xmin)")
	}
	for i, h := range m.HeaderColumns {
		exprs[numFixed+i] = asText(numFixed+i, h.Column)
	}
	return strings.Join(exprs, ", ")
}
