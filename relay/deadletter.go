package relay

import (
	"fmt"
	"strconv"

	"github.com/segmentio/kafka-go"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// deadLetter is an event on its way to the dead-letter topic.
type deadLetter struct {
	ev            *outbox.Event
	originalTopic string
	reason        string
	errText       string
}

// maxDeadLetterValue is the largest original value a dead-letter record
// carries; a larger one (the usual cause being message_too_large) is replaced
// by a small JSON stub naming the row and its size.
const maxDeadLetterValue = 512 << 10

// deadLetterMessage builds the dead-letter record: the original key, value
// and headers, plus the outbox.dlq.* headers saying why.
func deadLetterMessage(topic string, d deadLetter) kafka.Message {
	ev := d.ev
	value := ev.Payload
	if len(value) > maxDeadLetterValue || d.reason == outbox.ReasonMessageTooLarge {
		value = fmt.Appendf(nil, `{"outbox_dlq_stub":true,"id":%s,"size":%d}`, strconv.Quote(string(ev.ID)), len(ev.Payload))
	}
	headers := make([]kafka.Header, 0, len(ev.Headers)+6)
	headers = append(headers,
		kafka.Header{Key: outbox.HeaderID, Value: ev.ID},
		kafka.Header{Key: outbox.HeaderType, Value: ev.Type})
	for _, h := range ev.Headers {
		headers = append(headers, kafka.Header{Key: h.Key, Value: h.Value})
	}
	lsn := ""
	if ev.LSN != 0 {
		lsn = ev.LSN.String()
	}
	headers = append(headers,
		kafka.Header{Key: outbox.HeaderDLQReason, Value: []byte(d.reason)},
		kafka.Header{Key: outbox.HeaderDLQError, Value: []byte(d.errText)},
		kafka.Header{Key: outbox.HeaderDLQOriginalTopic, Value: []byte(d.originalTopic)},
		kafka.Header{Key: outbox.HeaderDLQLSN, Value: []byte(lsn)})
	return kafka.Message{Topic: topic, Key: ev.AggregateID, Value: value, Headers: headers}
}
