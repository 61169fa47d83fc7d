// Package sql holds the relay's DDL, embedded so the binary can create the
// outbox table without the repository at hand.
package sql

import (
	_ "embed"
	"strings"

	"github.com/outbox-relay/outbox-relay/outbox"
)

//go:embed outbox.sql
var outboxDDL string

// deadLetterSection starts the dead-letter table's part of outbox.sql.
const deadLetterSection = "-- {{DEAD_LETTER_SECTION}}\n"

// OutboxTable returns the DDL that creates table, its index and its
// dead-letter table, idempotently.
func OutboxTable(table outbox.Table) string {
	return replacer(table, "id").Replace(strings.Replace(outboxDDL, deadLetterSection, "", 1))
}

// DeadLetterTable returns the DDL that creates the dead-letter table of
// table (outbox.Table.DeadLetterTable) and its unique index on idColumn
// (the table's id column, OUTBOX_RELAY_COLUMN_ID), idempotently.
func DeadLetterTable(table outbox.Table, idColumn string) string {
	_, ddl, _ := strings.Cut(outboxDDL, deadLetterSection)
	return replacer(table, idColumn).Replace(ddl)
}

func replacer(table outbox.Table, idColumn string) *strings.Replacer {
	dead := table.DeadLetterTable()
	// An index name cannot be schema-qualified: it lives in the table's schema.
	return strings.NewReplacer(
		"{{TABLE}}", table.Quoted(),
		"{{ID}}", outbox.QuoteIdent(idColumn),
		"{{INDEX}}", outbox.QuoteIdent(table.Name+"_unacked_idx"),
		"{{DEAD_LETTER_TABLE}}", dead.Quoted(),
		"{{DEAD_LETTER_INDEX}}", outbox.QuoteIdent(dead.Name+"_id_idx"))
}
