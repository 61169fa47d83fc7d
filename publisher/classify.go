package publisher

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/segmentio/kafka-go"
)

// Failure reasons: stable machine words for metrics and dead-letter headers.
const (
	// ReasonMessageTooLarge: the record is larger than BatchBytes, or the
	// broker found it larger than the topic's max.message.bytes.
	ReasonMessageTooLarge = "message_too_large"
	// ReasonInvalidTopic: the topic name is not one Kafka accepts.
	ReasonInvalidTopic = "invalid_topic"
	// ReasonTopicAuthorizationFailed: the relay may not write to the topic.
	ReasonTopicAuthorizationFailed = "topic_authorization_failed"
	// ReasonInvalidRecord: the broker refused the record's contents (a null
	// key on a compacted topic, a timestamp out of range, ...).
	ReasonInvalidRecord = "invalid_record"
	// ReasonRejected: the broker refused the record for another permanent
	// reason (a topic policy, an unsupported message format).
	ReasonRejected = "rejected"
)

// Failure is an event the broker or the publisher rejected permanently.
type Failure struct {
	Index  int    // index into the events passed to Publish
	Reason string // stable machine word: message_too_large, invalid_topic, topic_authorization_failed, invalid_record, rejected
	Err    error
}

// classification says what to do with a failed write.
type classification struct {
	reason string // "" when the error is retriable
	// topicWide is true when the error applies to every record of its topic,
	// so a rejected batch needs no culprit search.
	topicWide bool
}

func (c classification) permanent() bool { return c.reason != "" }

// classify sorts a write error into permanent (with a reason) or retriable.
// Only the Kafka error codes below are permanent; everything else, including
// network errors, timeouts, unknown errors and codes Kafka calls retriable,
// is retried: a broker that comes back delivers it, and giving up would send
// a good record to the dead-letter topic.
func classify(err error) classification {
	var code kafka.Error
	if !errors.As(err, &code) {
		return classification{}
	}
	switch code {
	case kafka.MessageSizeTooLarge, kafka.RecordListTooLarge:
		return classification{reason: ReasonMessageTooLarge}
	case kafka.InvalidTopic:
		return classification{reason: ReasonInvalidTopic, topicWide: true}
	case kafka.TopicAuthorizationFailed:
		return classification{reason: ReasonTopicAuthorizationFailed, topicWide: true}
	case kafka.InvalidRecord, kafka.InvalidTimestamp, kafka.InvalidMessageSize:
		return classification{reason: ReasonInvalidRecord}
	case kafka.PolicyViolation, kafka.UnsupportedForMessageFormat:
		return classification{reason: ReasonRejected}
	}
	return classification{}
}

// ErrorKind names an error for a metric label: the Kafka error code's name
// in snake case (not_enough_replicas, leader_not_available, ...), "timeout",
// "network" or "other". The set is bounded by Kafka's error codes.
func ErrorKind(err error) string {
	var code kafka.Error
	if errors.As(err, &code) {
		return strings.ReplaceAll(strings.ToLower(code.Title()), " ", "_")
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return "timeout"
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return "network"
	}
	return "other"
}
