package decoder

import (
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestDecodePartitionKey: with WithPartitionKey the text of the named column
// lands in Event.PartitionKey; a row without a text value there (NULL,
// binary, no such column) is decoded as before with no key, never failed.
func TestDecodePartitionKey(t *testing.T) {
	tests := []struct {
		name    string
		key     string // WithPartitionKey's column; "" for none
		columns []testColumn
		values  []testValue
		want    []byte
	}{
		{name: "text value", key: "created_at", values: fullRow(), want: []byte("2024-05-06 07:08:09.123456+00")},
		{name: "a mapped column", key: "aggregatetype", values: fullRow(), want: []byte("order")},
		{name: "not asked for", values: fullRow()},
		{name: "null", key: "created_at", values: row(map[string]testValue{"created_at": null()})},
		{name: "binary", key: "created_at", values: row(map[string]testValue{"created_at": binaryValue([]byte{0, 1, 2, 3, 4, 5, 6, 7})})},
		{name: "no such column", key: "bucket", values: fullRow()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := New(testTable, outbox.DefaultMapping())
			if tt.key != "" {
				d = d.WithPartitionKey(tt.key)
			}
			if _, err := d.Decode(encodeRelation(testOID, "public", "outbox", outboxColumns), nil); err != nil {
				t.Fatalf("Decode(Relation): %v", err)
			}
			ev := outbox.Event{PartitionKey: []byte("left over from the previous row")}
			if _, err := d.Decode(encodeInsert(testOID, tt.values), &ev); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if string(ev.PartitionKey) != string(tt.want) || (ev.PartitionKey == nil) != (tt.want == nil) {
				t.Errorf("PartitionKey = %q, want %q", ev.PartitionKey, tt.want)
			}
			if string(ev.ID) != testID || string(ev.AggregateType) != "order" {
				t.Errorf("id, aggregatetype = %q, %q, want %q, order", ev.ID, ev.AggregateType, testID)
			}
		})
	}
}
