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

// NumColumns is how many columns SelectList selects. A caller may select
// more columns after them (a ctid, say) and read those itself from
// RawValues()[NumColumns:]; Scan ignores them.
const NumColumns = 8

// Positions of the selected columns.
const (
	colID = iota
	colAggregateType
	colAggregateID
	colType
	colPayload
	colHeaders
	colTopic
	colCreatedAt
)

// Querier runs a query: *pgx.Conn and pgx.Tx are Queriers.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Columns says how the mapped columns of one outbox table are selected and
// scanned. Build it with Lookup; it is immutable and safe for concurrent use.
type Columns struct {
	table   outbox.Table
	mapping outbox.Mapping
	present map[string]bool   // the table's columns
	types   map[string]string // column name -> built-in type name (pg_type.typname)
	// payloadHex: the payload column is bytea, selected as hex text and
	// decoded back to the raw bytes, as the decoder does with bytea.
	payloadHex bool
	selectList string
}

// Lookup reads the columns of table from the catalog and returns how to read
// its rows with mapping m. The columns for ID, AggregateType, AggregateID,
// Type and Payload must exist; Headers, Topic and CreatedAt may be absent
// from the table (or unnamed by m), and are then selected as NULL.
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
	c := &Columns{table: table, mapping: m, present: present, types: types, payloadHex: types[m.Payload] == "bytea"}
	c.selectList = c.buildSelectList()
	return c, nil
}

// Has reports whether the table has the named column.
func (c *Columns) Has(column string) bool { return column != "" && c.present[column] }

// SelectList is the column list of a SELECT from the outbox table whose rows
// Scan reads: id, aggregatetype, aggregateid, type, payload, headers, topic
// and created_at (as mapped), each but created_at as the text pgoutput
// carries for it (`col::text`; a bpchar as is, keeping its padding; a bytea
// payload as hex); mapped columns the table lacks are selected as NULL.
// Column names are quoted, so the list can be used as is in
// `SELECT <list> FROM <table>`.
func (c *Columns) SelectList() string { return c.selectList }

func (c *Columns) buildSelectList() string {
	m := c.mapping
	asText := func(column string) string {
		switch {
		case !c.Has(column):
			return "NULL::text"
		case c.types[column] == "bpchar":
			// A cast to text would strip the padding the stream keeps; a
			// bpchar's binary and text forms are both the padded text.
			return outbox.QuoteIdent(column)
		default:
			// The type's output function, as pgoutput sends it.
			return outbox.QuoteIdent(column) + "::text"
		}
	}
	exprs := [NumColumns]string{
		colID:            asText(m.ID),
		colAggregateType: asText(m.AggregateType),
		colAggregateID:   asText(m.AggregateID),
		colType:          asText(m.Type),
		colPayload:       asText(m.Payload),
		colHeaders:       asText(m.Headers),
		colTopic:         asText(m.Topic),
		colCreatedAt:     "NULL::timestamptz",
	}
	if c.payloadHex {
		// bytea's text form depends on bytea_output; hex does not.
		exprs[colPayload] = "encode(" + outbox.QuoteIdent(m.Payload) + ", 'hex')"
	}
	if c.Has(m.CreatedAt) {
		exprs[colCreatedAt] = outbox.QuoteIdent(m.CreatedAt) + "::timestamptz"
	}
	return strings.Join(exprs[:], ", ")
}
