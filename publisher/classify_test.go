package publisher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestClassify checks which broker and network errors are a verdict on the
// record (a failure with a reason) and which are retried.
func TestClassify(t *testing.T) {
	tests := []struct {
		err       error
		reason    string // "" means retriable
		topicWide bool
	}{
		{kafka.MessageSizeTooLarge, outbox.ReasonMessageTooLarge, false},
		{kafka.RecordListTooLarge, outbox.ReasonMessageTooLarge, false},
		{kafka.MessageTooLargeError{}, outbox.ReasonMessageTooLarge, false},
		{fmt.Errorf("%w: broker says so", kafka.MessageSizeTooLarge), outbox.ReasonMessageTooLarge, false},
		{kafka.InvalidTopic, outbox.ReasonInvalidTopic, true},
		{kafka.TopicAuthorizationFailed, outbox.ReasonTopicAuthFailed, true},
		{kafka.InvalidRecord, outbox.ReasonInvalidRecord, false},
		{kafka.InvalidTimestamp, outbox.ReasonInvalidRecord, false},
		{kafka.InvalidMessageSize, outbox.ReasonInvalidRecord, false},
		{kafka.PolicyViolation, outbox.ReasonRejected, false},
		{kafka.UnsupportedForMessageFormat, outbox.ReasonRejected, false},
		// Retriable: Kafka's retriable codes, and everything that is not a
		// verdict on the record.
		{kafka.LeaderNotAvailable, "", false},
		{kafka.NotLeaderForPartition, "", false},
		{kafka.NotEnoughReplicas, "", false},
		{kafka.NotEnoughReplicasAfterAppend, "", false},
		{kafka.RequestTimedOut, "", false},
		{kafka.UnknownTopicOrPartition, "", false},
		{kafka.InvalidMessage, "", false}, // CORRUPT_MESSAGE: the bytes broke in transit
		{kafka.Unknown, "", false},
		{kafka.ClusterAuthorizationFailed, "", false},
		{kafka.KafkaStorageError, "", false},
		{kafka.ThrottlingQuotaExceeded, "", false},
		{syscall.ECONNREFUSED, "", false},
		{io.ErrUnexpectedEOF, "", false},
		{context.DeadlineExceeded, "", false},
		{errors.New("something odd"), "", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.err), func(t *testing.T) {
			got := classify(tt.err)
			if got.reason != tt.reason || got.topicWide != tt.topicWide {
				t.Errorf("classify(%v) = %+v, want reason %q topicWide %t", tt.err, got, tt.reason, tt.topicWide)
			}
		})
	}
}
