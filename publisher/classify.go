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

	"github.com/outbox-relay/outbox-relay/outbox"
)

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
		return classification{reason: outbox.ReasonMessageTooLarge}
	case kafka.InvalidTopic:
		return classification{reason: outbox.ReasonInvalidTopic, topicWide: true}
	case kafka.TopicAuthorizationFailed:
		return classification{reason: outbox.ReasonTopicAuthFailed, topicWide: true}
	case kafka.InvalidRecord, kafka.InvalidTimestamp, kafka.InvalidMessageSize:
		return classification{reason: outbox.ReasonInvalidRecord}
	case kafka.PolicyViolation, kafka.UnsupportedForMessageFormat:
		return classification{reason: outbox.ReasonRejected}
	}
	return classification{}
}

// errorKind names an error for a metric label: the Kafka error code's name
// in snake case (not_enough_replicas, leader_not_available, ...), "timeout",
// "network" or "other". The set is bounded by Kafka's error codes.
func errorKind(err error) string {
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
