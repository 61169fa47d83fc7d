package dlq

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// NoReason stands for the reason of a record without an outbox.dlq.reason
// header (not written by the relay).
const NoReason = "(none)"

// dlqHeaderPrefix starts every header the relay adds to a dead letter.
const dlqHeaderPrefix = "outbox.dlq."

// Why a record that matched cannot be replayed.
const (
	// NotReplayableStub: the value is the stub that replaced a value too
	// large to keep; re-publishing it would hand consumers the stub.
	NotReplayableStub = "value_not_kept"
	// NotReplayableNoTopic: no outbox.dlq.original_topic header.
	NotReplayableNoTopic = "no_original_topic"
	// NotReplayableBadTopic: the original topic is not a name Kafka
	// accepts; publishing would fail the replay at this record every time.
	NotReplayableBadTopic = "invalid_topic_name"
)

// Entry is what may be shown of a dead-letter record: where it is, when it
// was dead-lettered, the row's id and the outbox.dlq.* headers except the
// LSN. Never the value or other headers.
type Entry struct {
	Partition     int32     `json:"partition"`
	Offset        int64     `json:"offset"`
	Time          time.Time `json:"time"`
	ID            string    `json:"id"`
	Reason        string    `json:"reason"`
	OriginalTopic string    `json:"original_topic"`
	Error         string    `json:"error"`
}

func entryOf(r *kgo.Record) Entry {
	reason := header(r, outbox.HeaderDLQReason)
	if reason == "" {
		reason = NoReason
	}
	return Entry{
		Partition:     r.Partition,
		Offset:        r.Offset,
		Time:          r.Timestamp,
		ID:            header(r, outbox.HeaderID),
		Reason:        reason,
		OriginalTopic: header(r, outbox.HeaderDLQOriginalTopic),
		Error:         header(r, outbox.HeaderDLQError),
	}
}

// header returns the last value of the header key ("" when absent).
func header(r *kgo.Record, key string) string {
	value := ""
	for _, h := range r.Headers {
		if h.Key == key {
			value = string(h.Value)
		}
	}
	return value
}

// replayable says why r cannot be replayed ("" when it can).
func replayable(r *kgo.Record) string {
	topic := header(r, outbox.HeaderDLQOriginalTopic)
	switch {
	case topic == "":
		return NotReplayableNoTopic
	case !outbox.ValidTopic(topic):
		return NotReplayableBadTopic
	case isStub(r.Value):
		return NotReplayableStub
	}
	return ""
}

// isStub reports whether value is the stub the relay writes in place of a
// value too large for the dead-letter topic:
// {"outbox_dlq_stub":true,"id":"…","size":N}.
func isStub(value []byte) bool {
	if len(value) > 4096 || !bytes.Contains(value, []byte(`"outbox_dlq_stub"`)) {
		return false
	}
	var stub struct {
		Stub bool `json:"outbox_dlq_stub"`
	}
	return json.Unmarshal(value, &stub) == nil && stub.Stub
}

// replayMessage is the record Replay publishes for the dead letter r read
// from dlqTopic: the original topic, key, value and headers, without the
// outbox.dlq.* headers, plus outbox.replayed_from (replacing the one a
// record replayed and dead-lettered again would carry).
func replayMessage(dlqTopic string, r *kgo.Record) kafka.Message {
	headers := make([]kafka.Header, 0, len(r.Headers)+1)
	for _, h := range r.Headers {
		if strings.HasPrefix(h.Key, dlqHeaderPrefix) || h.Key == outbox.HeaderReplayedFrom {
			continue
		}
		headers = append(headers, kafka.Header{Key: h.Key, Value: h.Value})
	}
	headers = append(headers, kafka.Header{
		Key:   outbox.HeaderReplayedFrom,
		Value: fmt.Appendf(nil, "%s/%d/%d", dlqTopic, r.Partition, r.Offset),
	})
	return kafka.Message{
		Topic:   header(r, outbox.HeaderDLQOriginalTopic),
		Key:     r.Key,
		Value:   r.Value,
		Headers: headers,
		Time:    r.Timestamp, // the dead letter keeps the record's own time
	}
}
