package outbox

import "errors"

// Headers of a dead-letter record, added to the original record's headers.
// They are a public interface: consumers and `outbox-relay dlq` read them.
const (
	// HeaderDLQReason is a stable machine word saying why the record was dead-lettered.
	HeaderDLQReason = "outbox.dlq.reason"
	// HeaderDLQError is the error text.
	HeaderDLQError = "outbox.dlq.error"
	// HeaderDLQOriginalTopic is the topic the record was meant for.
	HeaderDLQOriginalTopic = "outbox.dlq.original_topic"
	// HeaderDLQLSN is the WAL position of the row's INSERT (empty when the row
	// was found by the reconciler rather than the stream).
	HeaderDLQLSN = "outbox.dlq.lsn"
	// HeaderReplayedFrom is added by `outbox-relay dlq replay`: the
	// dead-letter topic, partition and offset the record was replayed from.
	HeaderReplayedFrom = "outbox.replayed_from"
	// HeaderID and HeaderType are the first two headers of every record.
	HeaderID   = "id"
	HeaderType = "type"
)

// Dead-letter reasons.
const (
	ReasonMessageTooLarge   = "message_too_large"
	ReasonInvalidTopic      = "invalid_topic"
	ReasonUnknownTopic      = "unknown_topic" // the brokers did not know the topic for the whole unknown-topic timeout
	ReasonTopicAuthFailed   = "topic_authorization_failed"
	ReasonInvalidRecord     = "invalid_record"
	ReasonRejected          = "rejected"
	ReasonDecodeError       = "decode_error"
	ReasonUnackedAfterGrace = "unacked_after_grace"
)

// Failure is an event the producer or the broker rejected permanently.
type Failure struct {
	Index  int    // index into the events (or dead letters) passed to the producer
	Reason string // one of the Reason* words above
	Err    error
}

// Bounds of what a dead-letter record carries of its row: a value, headers
// or key above them (the usual cause being message_too_large) would make the
// dead letter too large for the dead-letter topic as well, and the relay
// would stop on it for good. The value is then replaced by a small JSON stub
// naming the row, the headers are left out, the key is cut.
const (
	MaxDeadLetterValue   = 512 << 10
	MaxDeadLetterHeaders = 256 << 10
	MaxDeadLetterKey     = 16 << 10
)

// HeadersSize is the bytes of the event's headers, keys and values.
func (e *Event) HeadersSize() int {
	n := 0
	for _, h := range e.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// Partial reports whether the dead-letter record of d leaves part of the row
// out (a stub value, the headers, part of the key): such a row is kept whole
// in the dead-letter table, in the transaction that records its delivery.
func (d *DeadLetter) Partial() bool {
	return d.StubValue() || d.Event.HeadersSize() > MaxDeadLetterHeaders || len(d.Event.AggregateID) > MaxDeadLetterKey
}

// StubValue reports whether the dead-letter record's value is a stub
// instead of the row's payload.
func (d *DeadLetter) StubValue() bool {
	return len(d.Event.Payload) > MaxDeadLetterValue || d.Reason == ReasonMessageTooLarge
}

// Kept says why an event's row is copied into the dead-letter table.
type Kept struct {
	Reason string
	Error  string
}

// KeptRow is a row to copy (ACK_MODE mark) or move (delete) into the
// dead-letter table when its delivery is recorded.
type KeptRow struct {
	ID, Reason, Error string
	LSN               string // "" when unknown
}

// DeadLetterTable is the table next to the outbox that keeps the rows whose
// dead-letter record could not carry them whole: <outbox>_dead_letter in the
// outbox's schema.
func (t Table) DeadLetterTable() Table { return Table{Schema: t.Schema, Name: t.Name + "_dead_letter"} }

// DeadLetter is an event on its way to the dead-letter topic and why. The
// producer builds its record: the original key, value and headers plus the
// outbox.dlq.* headers.
type DeadLetter struct {
	Event         *Event
	Reason        string
	Error         string
	OriginalTopic string
}

// ErrAuthentication is returned by a producer whose SASL credentials the
// broker refused: a configuration error that no retry can fix, so the relay
// stops.
var ErrAuthentication = errors.New("kafka SASL authentication failed: check OUTBOX_RELAY_KAFKA_SASL_MECHANISM, OUTBOX_RELAY_KAFKA_SASL_USER and OUTBOX_RELAY_KAFKA_SASL_PASSWORD")
