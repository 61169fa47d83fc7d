// Package decoder turns pgoutput messages (logical replication protocol
// version 1) into outbox Events and the transaction boundaries around them.
//
// It is pure: no I/O, no logging, no goroutines, so table tests and fuzzing
// can hammer it. It must never panic, whatever bytes it is given. Names follow
// the "Logical Replication Message Formats" chapter of the Postgres docs.
package decoder

import (
	"errors"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Kind is the kind of a decoded pgoutput message.
type Kind uint8

const (
	// KindOther is any message the relay ignores: Origin, Type, Truncate,
	// Update, Delete and message types protocol version 1 does not define.
	KindOther Kind = iota
	// KindBegin starts a transaction.
	KindBegin
	// KindCommit ends a transaction.
	KindCommit
	// KindInsert is an Insert into the outbox table; the Event is filled.
	KindInsert
	// KindRelation describes a table; the decoder caches it.
	KindRelation
	// KindMessage is a logical decoding message ('M') written by
	// pg_logical_emit_message.
	KindMessage
)

// String returns the message name used in the Postgres docs.
func (k Kind) String() string {
	switch k {
	case KindBegin:
		return "Begin"
	case KindCommit:
		return "Commit"
	case KindInsert:
		return "Insert"
	case KindRelation:
		return "Relation"
	case KindMessage:
		return "Message"
	default:
		return "Other"
	}
}

// Message describes one decoded pgoutput message. Only the fields of its Kind
// are set.
type Message struct {
	Kind Kind

	// FinalLSN is, for Begin, the LSN of the transaction's commit record.
	FinalLSN outbox.LSN
	// CommitTime is, for Begin and Commit, the commit timestamp in Unix
	// nanoseconds.
	CommitTime int64
	// Xid is, for Begin, the transaction id.
	Xid uint32

	// CommitLSN is, for Commit, the LSN of the commit record.
	CommitLSN outbox.LSN
	// EndLSN is, for Commit, the end LSN of the transaction: the position the
	// relay confirms once every record of the transaction is acked.
	EndLSN outbox.LSN

	// Prefix is, for Message, the prefix given to pg_logical_emit_message. It
	// points into the decoded input and is valid only until the caller reuses
	// that input.
	Prefix []byte
	// Content is, for Message, the message content; the same caveat applies.
	Content []byte
	// MessageLSN is, for Message, the LSN of the logical decoding message.
	MessageLSN outbox.LSN
	// Transactional is, for Message, whether the message was emitted as part
	// of a transaction (and so arrives between its Begin and Commit).
	Transactional bool

	// Relation is, for Relation, "schema.name" of the relation described.
	Relation string
}

// Decoder decodes the pgoutput messages of one replication stream. It keeps
// the relations the stream described, so one Decoder serves one stream at a
// time and is not safe for concurrent use.
type Decoder struct {
	table     outbox.Table
	tableName string
	// columnNames holds, per field, the column the mapping names for it.
	columnNames   [numFields]string
	headerColumns []outbox.HeaderColumn
	relations     map[uint32]*relation

	// Scratch space reused across Inserts so decoding headers allocates
	// nothing once it has warmed up.
	headerScratch []headerSpan
	keyScratch    []byte
	headerKeys    map[string]string
	headerValues  [outbox.MaxHeaderColumns]tupleValue
}

// New returns a Decoder for the outbox table t whose columns are named by m.
// The mapping is checked against the table when the stream describes it: a
// missing required column or an unsupported type makes that Relation message
// fail.
func New(t outbox.Table, m outbox.Mapping) *Decoder {
	d := &Decoder{
		table:      t,
		tableName:  t.String(),
		relations:  make(map[uint32]*relation),
		headerKeys: make(map[string]string),
	}
	d.columnNames = [numFields]string{
		fieldID:            m.ID,
		fieldAggregateType: m.AggregateType,
		fieldAggregateID:   m.AggregateID,
		fieldType:          m.Type,
		fieldPayload:       m.Payload,
		fieldHeaders:       m.Headers,
		fieldTopic:         m.Topic,
		fieldTime:          m.CreatedAt,
	}
	d.headerColumns = m.HeaderColumns[:min(len(m.HeaderColumns), outbox.MaxHeaderColumns):min(len(m.HeaderColumns), outbox.MaxHeaderColumns)]
	return d
}

// WithPartitionKey makes d keep the text of column, the column a
// partitioned outbox table is partitioned by, in each Event's PartitionKey,
// and returns d. Call it before the first Decode.
func (d *Decoder) WithPartitionKey(column string) *Decoder {
	d.columnNames[fieldPartitionKey] = column
	return d
}

// Decode parses one pgoutput message (the WALData of an XLogData message).
//
// For an Insert into the outbox table it fills ev, reusing ev's buffer and
// Headers capacity, and returns KindInsert. It leaves ev.LSN, ev.CommitTime
// and ev.Txn to the caller, and does not touch ev for other messages, which
// may pass a nil ev.
//
// A *RowError (returned with KindInsert) means the row cannot become a record
// but the stream can go on; every other error is fatal for the stream.
func (d *Decoder) Decode(data []byte, ev *outbox.Event) (Message, error) {
	if len(data) == 0 {
		return Message{}, errors.New("pgoutput message is empty")
	}
	r := reader{data: data[1:]}
	switch data[0] {
	case 'B':
		r.msg = "Begin"
		return decodeBegin(&r)
	case 'C':
		r.msg = "Commit"
		return decodeCommit(&r)
	case 'I':
		r.msg = "Insert"
		return d.decodeInsert(&r, ev)
	case 'R':
		r.msg = "Relation"
		return d.decodeRelation(&r)
	case 'M':
		r.msg = "Message"
		return decodeLogicalMessage(&r)
	default:
		// Origin, Type, Truncate, Update, Delete: publish = 'insert' and a
		// single-table publication make them irrelevant to the outbox.
		return Message{Kind: KindOther}, nil
	}
}

// postgresEpochMicros is 2000-01-01 00:00:00 UTC in Unix microseconds, the
// epoch of Postgres timestamps.
const postgresEpochMicros = 946_684_800_000_000

// unixNanos converts a Postgres timestamp (microseconds since 2000-01-01)
// to Unix nanoseconds.
func unixNanos(pgMicros uint64) int64 {
	return (int64(pgMicros) + postgresEpochMicros) * 1000
}

// decodeBegin parses Begin: Int64 final LSN, Int64 commit timestamp, Int32 xid.
func decodeBegin(r *reader) (Message, error) {
	finalLSN := r.uint64("final LSN")
	commitTime := r.uint64("commit timestamp")
	xid := r.uint32("xid")
	if err := r.done(); err != nil {
		return Message{}, err
	}
	return Message{
		Kind:       KindBegin,
		FinalLSN:   outbox.LSN(finalLSN),
		CommitTime: unixNanos(commitTime),
		Xid:        xid,
	}, nil
}

// decodeCommit parses Commit: Int8 flags (unused), Int64 commit LSN,
// Int64 end LSN, Int64 commit timestamp.
func decodeCommit(r *reader) (Message, error) {
	r.uint8("flags")
	commitLSN := r.uint64("commit LSN")
	endLSN := r.uint64("end LSN")
	commitTime := r.uint64("commit timestamp")
	if err := r.done(); err != nil {
		return Message{}, err
	}
	return Message{
		Kind:       KindCommit,
		CommitLSN:  outbox.LSN(commitLSN),
		EndLSN:     outbox.LSN(endLSN),
		CommitTime: unixNanos(commitTime),
	}, nil
}

// decodeLogicalMessage parses Message: Int8 flags (1 = transactional),
// Int64 LSN, String prefix, Int32 content length, Byte(n) content.
func decodeLogicalMessage(r *reader) (Message, error) {
	flags := r.uint8("flags")
	lsn := r.uint64("LSN")
	prefix := r.cstring("prefix")
	content := r.lengthPrefixed("content")
	if err := r.done(); err != nil {
		return Message{}, err
	}
	return Message{
		Kind:          KindMessage,
		MessageLSN:    outbox.LSN(lsn),
		Transactional: flags&1 != 0,
		Prefix:        prefix,
		Content:       content,
	}, nil
}
