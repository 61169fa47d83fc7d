package outbox

// AckMode says what the relay does to a row once Kafka acked its record
// (OUTBOX_RELAY_ACK_MODE).
type AckMode string

// The ack modes.
const (
	AckDelete AckMode = "delete" // delete the row
	AckMark   AckMode = "mark"   // set published_at
	AckNone   AckMode = "none"   // leave the row alone
)

// RecordsDelivery reports whether the mode records every delivery in the
// table (delete and mark), which is what lets an unacked row be told from a
// delivered one: with none, nothing is ever unacked.
func (m AckMode) RecordsDelivery() bool { return m == AckDelete || m == AckMark }

// Unacked returns the SQL condition, for a WHERE clause, that is true for
// the rows whose delivery is not recorded. It is the one definition of an
// unacked row that setup, status, the leader's watch, the backfill and the
// reconciler share.
//
// A delivered row is deleted (ACK_MODE delete) or gets published_at (mark),
// so a row present is unacked unless its published_at is set — in every
// mode: a row marked before an operator switched from mark to delete is
// history, not a row to send again or to dead-letter. hasPublishedAt says
// whether the table has the mapping's published_at column; without it every
// present row is unacked.
func (m Mapping) Unacked(hasPublishedAt bool) string {
	if m.PublishedAt == "" || !hasPublishedAt {
		return "TRUE"
	}
	return QuoteIdent(m.PublishedAt) + " IS NULL"
}
