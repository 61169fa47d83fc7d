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

// maxDeadLetterExtras bounds the row's own headers and the key in a dead
// letter: a record too large because of them would be refused by the
// dead-letter topic as well, and the relay would stop on it for good.
const (
	maxDeadLetterHeaders = 256 << 10
	maxDeadLetterKey     = 16 << 10
)

// deadLetterMessage builds the dead-letter record: the original key, value
// and headers, plus the outbox.dlq.* headers saying why.
func deadLetterMessage(topic string, d deadLetter) kafka.Message {
	ev := d.ev
	value := ev.Payload
	if len(value) > maxDeadLetterValue || d.reason == outbox.ReasonMessageTooLarge {
		value = fmt.Appendf(nil, `{"outbox_dlq_stub":true,"id":%s,"size":%d}`, strconv.Quote(string(ev.ID)), len(ev.Payload))
	}
	errText := d.errText
	headers := make([]kafka.Header, 0, len(ev.Headers)+6)
	headers = append(headers,
		kafka.Header{Key: outbox.HeaderID, Value: ev.ID},
		kafka.Header{Key: outbox.HeaderType, Value: ev.Type})
	rowHeaders := 0
	for _, h := range ev.Headers {
		rowHeaders += len(h.Key) + len(h.Value)
	}
	if rowHeaders <= maxDeadLetterHeaders {
		for _, h := range ev.Headers {
			headers = append(headers, kafka.Header{Key: h.Key, Value: h.Value})
		}
	} else {
		errText += fmt.Sprintf(" (the row's %d headers, %d bytes, were left out of this dead letter)", len(ev.Headers), rowHeaders)
	}
	key := ev.AggregateID
	if len(key) > maxDeadLetterKey {
		errText += fmt.Sprintf(" (the key, %d bytes, was cut to %d)", len(key), maxDeadLetterKey)
		key = key[:maxDeadLetterKey]
	}
	lsn := ""
	if ev.LSN != 0 {
		lsn = ev.LSN.String()
	}
	headers = append(headers,
		kafka.Header{Key: outbox.HeaderDLQReason, Value: []byte(d.reason)},
		kafka.Header{Key: outbox.HeaderDLQError, Value: []byte(errText)},
		kafka.Header{Key: outbox.HeaderDLQOriginalTopic, Value: []byte(d.originalTopic)},
		kafka.Header{Key: outbox.HeaderDLQLSN, Value: []byte(lsn)})
	return kafka.Message{Topic: topic, Key: key, Value: value, Headers: headers}
}
