// Package outbox holds the vocabulary the pipeline stages share: the Event a
// row becomes, WAL positions, the outbox table name and its column mapping.
//
// It must stay small and free of I/O: every stage imports it, so nothing here
// may import a stage.
package outbox

import (
	"fmt"
	"strings"
)

// LSN is a position in the Postgres write-ahead log.
type LSN uint64

// String formats the LSN the way Postgres does (upper/lower 32 bits in hex).
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// ParseLSN parses the textual form printed by Postgres, such as "16/B374D848".
func ParseLSN(s string) (LSN, error) {
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	return LSN(uint64(hi)<<32 | uint64(lo)), nil
}

// Header is one Kafka record header taken from the row's headers column.
type Header struct {
	Key   string
	Value []byte
}

// Event is one outbox row decoded from an INSERT, ready to publish.
//
// The byte slices point into buf, which the decoder reuses when the Event is
// decoded into again, so an Event is recycled only after its record was acked.
type Event struct {
	// ID is the row's primary key in text form; it becomes the "id" header
	// and identifies the row when it is deleted or marked after the ack.
	ID []byte
	// AggregateType fills the ${aggregatetype} placeholder of the topic template.
	AggregateType []byte
	// AggregateID is the Kafka key.
	AggregateID []byte
	// Type becomes the "type" header.
	Type []byte
	// Payload is the record value exactly as stored; nil means SQL NULL.
	Payload []byte
	// Topic is the per-row topic override; nil when the column is NULL or absent.
	Topic []byte
	// Headers are the row's header columns (Mapping.HeaderColumns, in their
	// order), then the entries of its headers column, in the order they
	// appear in the jsonb text.
	Headers []Header
	// Time is the row's timestamp column (Mapping.CreatedAt) in Unix
	// nanoseconds; 0 when the column is NULL, absent or not a timestamptz.
	Time int64
	// PartitionKey is the text of the row's partition key column when the
	// outbox is partitioned by one column, nil otherwise: the ack looks for
	// the row in the partitions that can hold it instead of in all.
	PartitionKey []byte

	// LSN is the WAL position of the INSERT.
	LSN LSN
	// CommitTime is the commit timestamp of the row's transaction, in Unix nanoseconds.
	CommitTime int64
	// Txn identifies the row's transaction to the checkpoint tracker.
	Txn uint64
	// Problem says why the row cannot become a record (a decode error such
	// as a NULL aggregateid); such an event goes to the dead-letter topic.
	Problem string
	// Kept, set once the event was dead-lettered with a partial record, says
	// why its row goes to the dead-letter table when it is recorded.
	Kept *Kept

	buf []byte
}

// RecordTime is the timestamp of the event's record, in Unix nanoseconds:
// the row's timestamp column when it has one, else its transaction's commit
// time; 0 when neither is known (the producer then stamps the send time).
func (e *Event) RecordTime() int64 {
	if e.Time != 0 {
		return e.Time
	}
	return e.CommitTime
}

// Buffer returns the event's backing buffer emptied, for a decoder to fill.
func (e *Event) Buffer() []byte { return e.buf[:0] }

// SetBuffer keeps b as the event's backing buffer so its capacity is reused.
func (e *Event) SetBuffer(b []byte) { e.buf = b }

// eventOverhead approximates the memory an in-flight Event costs beyond its
// buffer: the struct, and the Kafka message and headers built from it.
const eventOverhead = 512

// Size estimates the memory the event holds while in flight, for the
// in-flight cap: its whole buffer (not just the bytes in use), its header
// keys, and the structs around it, so that the cap bounds real memory.
func (e *Event) Size() int {
	n := max(cap(e.buf), len(e.ID)+len(e.AggregateType)+len(e.AggregateID)+len(e.Type)+len(e.Payload)+len(e.Topic)+len(e.PartitionKey))
	for _, h := range e.Headers {
		n += len(h.Key) + 16
	}
	return n + eventOverhead
}

// Table names the outbox table.
type Table struct {
	Schema string
	Name   string
}

// ParseTable splits "schema.name" (or "name", meaning schema public).
func ParseTable(s string) (Table, error) {
	schema, name, ok := strings.Cut(s, ".")
	if !ok {
		schema, name = "public", s
	}
	if schema == "" || name == "" || strings.Contains(name, ".") {
		return Table{}, fmt.Errorf("table %q: want schema.name", s)
	}
	return Table{Schema: schema, Name: name}, nil
}

// String returns schema.name without quoting, for logs and errors.
func (t Table) String() string { return t.Schema + "." + t.Name }

// Quoted returns the table name quoted for use in SQL.
func (t Table) Quoted() string { return QuoteIdent(t.Schema) + "." + QuoteIdent(t.Name) }

// QuoteIdent quotes a SQL identifier.
func QuoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// Mapping names the outbox columns the relay reads. Columns of the table that
// no field names are ignored.
type Mapping struct {
	ID            string // required: the "id" header, and how a row is acked
	AggregateType string // required: the routing value of the topic template
	AggregateID   string // required: the Kafka key
	Type          string // required
	Payload       string // required: the record value
	Headers       string // optional
	Topic         string // optional
	// CreatedAt is the row's timestamp (optional): the record timestamp,
	// the backfill's order and the age the reconciler and the
	// oldest-unacked gauge go by. Without it the transaction's commit time
	// stands in (track_commit_timestamp for the rows read with SQL).
	CreatedAt   string
	PublishedAt string // used by ACK_MODE=mark
	// HeaderColumns are further columns copied into record headers, each
	// as its text form; NULL adds no header.
	HeaderColumns []HeaderColumn
}

// HeaderColumn is a column copied into a record header of the given name.
type HeaderColumn struct {
	Column string
	Header string
}

// MaxHeaderColumns bounds Mapping.HeaderColumns: the decoder keeps their
// values in a fixed array so that a row costs no allocation.
const MaxHeaderColumns = 16

// DefaultMapping returns the column names of the default outbox table, which
// match Debezium's outbox event router.
func DefaultMapping() Mapping {
	return Mapping{
		ID:            "id",
		AggregateType: "aggregatetype",
		AggregateID:   "aggregateid",
		Type:          "type",
		Payload:       "payload",
		Headers:       "headers",
		Topic:         "topic",
		CreatedAt:     "created_at",
		PublishedAt:   "published_at",
	}
}
