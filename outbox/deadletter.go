package outbox

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

// DeadLetter is an event on its way to the dead-letter topic and why. The
// producer builds its record: the original key, value and headers plus the
// outbox.dlq.* headers.
type DeadLetter struct {
	Event         *Event
	Reason        string
	Error         string
	OriginalTopic string
}
