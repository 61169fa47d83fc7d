package publisher

import (
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/segmentio/kafka-go"
)

// recordSize is the size kafka-go accounts for msg when it fills a batch and
// when it rejects a message larger than BatchBytes (Message.totalSize in
// kafka-go's message.go: the v1 message size plus the v2 header sizes).
func recordSize(msg *kafka.Message) int64 {
	n := 4 + 1 + 1 + 4 + len(msg.Key) + 4 + len(msg.Value) + 8 // crc, magic, attributes, key, value, timestamp
	n += varintLen(len(msg.Headers))
	for i := range msg.Headers {
		h := &msg.Headers[i]
		n += varintLen(len(h.Key)) + len(h.Key) + varintLen(len(h.Value)) + len(h.Value)
	}
	return int64(n)
}

// varintLen is the length of n as a zig-zag varint.
func varintLen(n int) int {
	u := uint64(n) << 1 // n is never negative, so zig-zag is a shift
	l := 1
	for u >= 0x80 {
		u >>= 7
		l++
	}
	return l
}

// recordBuilder turns events into kafka.Messages in reusable slices. kafka-go
// copies the Message values into its batches but not the byte slices nor the
// header arrays, so these are reused only after the records they backed were
// written (see Publisher.drain).
type recordBuilder struct {
	msgs    []kafka.Message
	headers []kafka.Header
	indexes []int // indexes[i] is the caller's index of msgs[i]
	// cloudEvents, when set, is the ce_source of the CloudEvents headers
	// every record gets; times holds their ce_time values.
	cloudEvents []byte
	times       []byte
}

// The CloudEvents binary-mode headers (the Kafka protocol binding of
// CloudEvents 1.0: attribute names prefixed with ce_).
const (
	HeaderCloudEventsID          = "ce_id"
	HeaderCloudEventsType        = "ce_type"
	HeaderCloudEventsSource      = "ce_source"
	HeaderCloudEventsSpecVersion = "ce_specversion"
	HeaderCloudEventsTime        = "ce_time"
)

// cloudEventsHeaders is how many headers CloudEvents adds to a record.
const cloudEventsHeaders = 5

var specVersion = []byte("1.0")

// maxTimeLen is the longest RFC 3339 time ce_time carries (nanoseconds, Z).
const maxTimeLen = len("2006-01-02T15:04:05.999999999Z")

func (b *recordBuilder) reset(n, headers int) {
	if cap(b.msgs) < n {
		b.msgs = make([]kafka.Message, 0, n)
		b.indexes = make([]int, 0, n)
	}
	if b.cloudEvents != nil {
		headers += cloudEventsHeaders * n
		if cap(b.times) < n*maxTimeLen {
			b.times = make([]byte, 0, n*maxTimeLen)
		}
		b.times = b.times[:0]
	}
	// Size the header array once: a reallocation would leave the earlier
	// messages pointing at the old array, which is harmless but wasteful.
	if cap(b.headers) < headers {
		b.headers = make([]kafka.Header, 0, headers)
	}
	clear(b.msgs) // drop references to the previous call's records
	clear(b.headers)
	b.msgs, b.headers, b.indexes = b.msgs[:0], b.headers[:0], b.indexes[:0]
}

// add appends the record of ev, routed to topic.
func (b *recordBuilder) add(index int, topic string, ev *outbox.Event) *kafka.Message {
	start := len(b.headers)
	b.headers = appendEventHeaders(b.headers, ev)
	if b.cloudEvents != nil {
		b.headers, b.times = appendCloudEvents(b.headers, b.times, b.cloudEvents, ev)
	}
	b.msgs = append(b.msgs, kafka.Message{
		Topic:   topic,
		Key:     ev.AggregateID,
		Value:   ev.Payload,
		Headers: b.headers[start:len(b.headers):len(b.headers)],
		Time:    recordTime(ev),
	})
	b.indexes = append(b.indexes, index)
	return &b.msgs[len(b.msgs)-1]
}

// drop removes the last added record (it failed before being sent).
func (b *recordBuilder) drop() {
	last := len(b.msgs) - 1
	b.headers = b.headers[:len(b.headers)-len(b.msgs[last].Headers)]
	b.msgs[last] = kafka.Message{}
	b.msgs, b.indexes = b.msgs[:last], b.indexes[:last]
}

// appendEventHeaders appends the headers of ev's record: id and type, then
// the row's own. Every record, normal or dead letter, starts with these.
func appendEventHeaders(headers []kafka.Header, ev *outbox.Event) []kafka.Header {
	headers = append(headers,
		kafka.Header{Key: outbox.HeaderID, Value: ev.ID},
		kafka.Header{Key: outbox.HeaderType, Value: ev.Type},
	)
	for _, h := range ev.Headers {
		headers = append(headers, kafka.Header{Key: h.Key, Value: h.Value})
	}
	return headers
}

// appendCloudEvents appends the CloudEvents binary-mode headers of ev's
// record: ce_id and ce_type from the id and type columns, source as
// ce_source, ce_specversion 1.0 and, when the record has a time, ce_time,
// whose text it appends to times (returned for reuse).
func appendCloudEvents(headers []kafka.Header, times, source []byte, ev *outbox.Event) ([]kafka.Header, []byte) {
	headers = append(headers,
		kafka.Header{Key: HeaderCloudEventsSpecVersion, Value: specVersion},
		kafka.Header{Key: HeaderCloudEventsID, Value: ev.ID},
		kafka.Header{Key: HeaderCloudEventsSource, Value: source},
		kafka.Header{Key: HeaderCloudEventsType, Value: ev.Type},
	)
	if t := ev.RecordTime(); t != 0 {
		start := len(times)
		times = time.Unix(0, t).UTC().AppendFormat(times, time.RFC3339Nano)
		headers = append(headers, kafka.Header{Key: HeaderCloudEventsTime, Value: times[start:len(times):len(times)]})
	}
	return headers, times
}

// recordTime is the timestamp of ev's record: the row's timestamp column,
// else its commit time (outbox.Event.RecordTime); zero when neither is
// known, and the producer stamps the send time.
func recordTime(ev *outbox.Event) time.Time {
	if t := ev.RecordTime(); t != 0 {
		return time.Unix(0, t)
	}
	return time.Time{}
}

// countHeaders is the number of headers the records of events carry.
func countHeaders(events []outbox.Event) int {
	n := 2 * len(events)
	for i := range events {
		n += len(events[i].Headers)
	}
	return n
}
