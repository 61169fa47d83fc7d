package decoder

import (
	"bytes"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// The outbox table and rows the tests decode.

const (
	testOID            = 16384
	otherOID           = 16390
	oidTimestamptzTest = 1184 // timestamptz
)

var testTable = outbox.Table{Schema: "public", Name: "outbox"}

// outboxColumns is the default outbox table (sql/outbox.sql), as a Relation
// message describes it.
var outboxColumns = []testColumn{
	{"id", oidUUID},
	{"aggregatetype", oidText},
	{"aggregateid", oidText},
	{"type", oidText},
	{"payload", oidJSONB},
	{"headers", oidJSONB},
	{"topic", oidText},
	{"created_at", oidTimestamptzTest},
	{"published_at", oidTimestamptzTest},
}

// withColumn returns outboxColumns with the column name changed to c, or
// removed when c.name is empty.
func withColumn(name string, c testColumn) []testColumn {
	var cols []testColumn
	for _, col := range outboxColumns {
		if col.name != name {
			cols = append(cols, col)
		} else if c.name != "" {
			cols = append(cols, c)
		}
	}
	return cols
}

// newOutboxDecoder returns a Decoder that has seen the Relation message of
// the default outbox table as relation testOID.
func newOutboxDecoder(t testing.TB) *Decoder {
	t.Helper()
	d := New(testTable, outbox.DefaultMapping())
	if _, err := d.Decode(encodeRelation(testOID, "public", "outbox", outboxColumns), nil); err != nil {
		t.Fatalf("Decode(Relation): %v", err)
	}
	return d
}

const (
	testID      = "0d7f5c3e-8a4b-4f1e-9c2d-6b1a0e9f8d7c"
	testPayload = `{"orderId": 42, "total": "9.99"}`
)

var testUUIDBytes = []byte{0x0d, 0x7f, 0x5c, 0x3e, 0x8a, 0x4b, 0x4f, 0x1e, 0x9c, 0x2d, 0x6b, 0x1a, 0x0e, 0x9f, 0x8d, 0x7c}

// row returns the tuple of a row of outboxColumns: the full row, with the
// columns named in changes replaced.
func row(changes map[string]testValue) []testValue {
	values := []testValue{
		text(testID),
		text("order"),
		text("42"),
		text("OrderCreated"),
		text(testPayload),
		text(`{"traceparent": "00-abc-01", "tenant": "acme"}`),
		text("orders.v2"),
		text("2024-05-06 07:08:09.123456+00"),
		null(),
	}
	for i, c := range outboxColumns {
		if v, ok := changes[c.name]; ok {
			values[i] = v
		}
	}
	return values
}

func fullRow() []testValue { return row(nil) }

// fullEvent is the Event fullRow becomes.
func fullEvent() outbox.Event {
	return outbox.Event{
		ID:            []byte(testID),
		AggregateType: []byte("order"),
		AggregateID:   []byte("42"),
		Type:          []byte("OrderCreated"),
		Payload:       []byte(testPayload),
		Topic:         []byte("orders.v2"),
		Headers: []outbox.Header{
			{Key: "traceparent", Value: []byte("00-abc-01")},
			{Key: "tenant", Value: []byte("acme")},
		},
		Time: testTime,
	}
}

// testTime is fullRow's created_at, 2024-05-06 07:08:09.123456+00, in Unix
// nanoseconds.
const testTime = 1714979289_123456000

// withEvent returns fullEvent changed by change.
func withEvent(change func(*outbox.Event)) outbox.Event {
	ev := fullEvent()
	change(&ev)
	return ev
}

// checkEvent compares the fields the decoder fills, telling nil (NULL or
// absent) from empty.
func checkEvent(t *testing.T, got, want *outbox.Event) {
	t.Helper()
	fields := []struct {
		name      string
		got, want []byte
	}{
		{"ID", got.ID, want.ID},
		{"AggregateType", got.AggregateType, want.AggregateType},
		{"AggregateID", got.AggregateID, want.AggregateID},
		{"Type", got.Type, want.Type},
		{"Payload", got.Payload, want.Payload},
		{"Topic", got.Topic, want.Topic},
	}
	for _, f := range fields {
		if (f.got == nil) != (f.want == nil) || !bytes.Equal(f.got, f.want) {
			t.Errorf("%s = %s, want %s", f.name, show(f.got), show(f.want))
		}
	}
	if got.Time != want.Time {
		t.Errorf("Time = %d, want %d", got.Time, want.Time)
	}
	if len(got.Headers) != len(want.Headers) {
		t.Errorf("Headers = %s, want %s", showHeaders(got.Headers), showHeaders(want.Headers))
		return
	}
	for i := range got.Headers {
		if got.Headers[i].Key != want.Headers[i].Key || !bytes.Equal(got.Headers[i].Value, want.Headers[i].Value) {
			t.Errorf("Headers = %s, want %s", showHeaders(got.Headers), showHeaders(want.Headers))
			return
		}
	}
}

func show(b []byte) string {
	if b == nil {
		return "nil"
	}
	return strings.ReplaceAll(string(b), "\n", `\n`)
}

func showHeaders(hs []outbox.Header) string {
	var s []string
	for _, h := range hs {
		s = append(s, h.Key+"="+show(h.Value))
	}
	return "[" + strings.Join(s, " ") + "]"
}
