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
