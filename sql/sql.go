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

// OutboxTable returns the DDL that creates table and its index, idempotently.
func OutboxTable(table outbox.Table) string {
	// An index name cannot be schema-qualified: it lives in the table's schema.
	index := outbox.QuoteIdent(table.Name + "_unacked_idx")
	return strings.NewReplacer("{{TABLE}}", table.Quoted(), "{{INDEX}}", index).Replace(outboxDDL)
}
