package publisher

import (
	"context"
	"fmt"
	"strconv"

	"github.com/segmentio/kafka-go"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// PublishDeadLetters writes the dead-letter records of dead to topic with the
// same retry and failure rules as Publish; the failures index dead.
func (p *Publisher) PublishDeadLetters(ctx context.Context, topic string, dead []outbox.DeadLetter) ([]outbox.Failure, error) {
	msgs := make([]kafka.Message, len(dead))
	for i := range dead {
		msgs[i] = deadLetterMessage(topic, &dead[i], p.records.cloudEvents)
	}
	return p.PublishRaw(ctx, msgs)
}

// deadLetterMessage builds the dead-letter record: the original key, value
// and headers (the CloudEvents ones too when cloudEvents, the ce_source, is
// set, so that a replay restores the whole record), plus the outbox.dlq.*
// headers saying why.
func deadLetterMessage(topic string, d *outbox.DeadLetter, cloudEvents []byte) kafka.Message {
	ev := d.Event
	value := ev.Payload
	if d.StubValue() {
		value = fmt.Appendf(nil, `{"outbox_dlq_stub":true,"id":%s,"size":%d}`, strconv.Quote(string(ev.ID)), len(ev.Payload))
	}
	errText := d.Error
	rowHeaders := ev.HeadersSize()
	headers := make([]kafka.Header, 0, len(ev.Headers)+6)
	if rowHeaders <= outbox.MaxDeadLetterHeaders {
		headers = appendEventHeaders(headers, ev)
	} else {
		headers = appendEventHeaders(headers, &outbox.Event{ID: ev.ID, Type: ev.Type})
		errText += fmt.Sprintf(" (the row's %d headers, %d bytes, were left out of this dead letter)", len(ev.Headers), rowHeaders)
	}
	if cloudEvents != nil {
		headers, _ = appendCloudEvents(headers, nil, cloudEvents, ev)
	}
	key := ev.AggregateID
	if len(key) > outbox.MaxDeadLetterKey {
		errText += fmt.Sprintf(" (the key, %d bytes, was cut to %d)", len(key), outbox.MaxDeadLetterKey)
		key = key[:outbox.MaxDeadLetterKey]
	}
	lsn := ""
	if ev.LSN != 0 {
		lsn = ev.LSN.String()
	}
	headers = append(headers,
		kafka.Header{Key: outbox.HeaderDLQReason, Value: []byte(d.Reason)},
		kafka.Header{Key: outbox.HeaderDLQError, Value: []byte(errText)},
		kafka.Header{Key: outbox.HeaderDLQOriginalTopic, Value: []byte(d.OriginalTopic)},
		kafka.Header{Key: outbox.HeaderDLQLSN, Value: []byte(lsn)})
	return kafka.Message{Topic: topic, Key: key, Value: value, Headers: headers, Time: recordTime(ev)}
}
