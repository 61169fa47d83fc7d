package decoder

import (
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// benchmarkPayload is a typical ~400-byte event body.
var benchmarkPayload = `{"orderId": "ord_8f14e45fceea167a5a36dedd4bea2543", "customerId": "cus_1679091c5a880faf6fb5e6087eb1b2dc", ` +
	`"status": "created", "currency": "EUR", "total": "129.90", "items": [{"sku": "SKU-000123", "qty": 2, "price": "39.95"}, ` +
	`{"sku": "SKU-004711", "qty": 1, "price": "50.00"}], "shipping": {"method": "standard", "country": "DE", "postcode": "10115"}, ` +
	`"createdAt": "2024-05-06T07:08:09.123456Z"}`

// benchmarkRow is a typical outbox row: uuid id, short strings, a jsonb
// payload and NULL headers and topic.
func benchmarkRow() []testValue {
	return row(map[string]testValue{"payload": text(benchmarkPayload), "headers": null(), "topic": null()})
}

func BenchmarkDecodeInsert(b *testing.B) {
	benchmarkDecode(b, encodeInsert(testOID, benchmarkRow()))
}

func BenchmarkDecodeInsertHeaders(b *testing.B) {
	headers := `{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tenant": "acme", "source": "orders-service"}`
	benchmarkDecode(b, encodeInsert(testOID, row(map[string]testValue{"payload": text(benchmarkPayload), "headers": text(headers)})))
}

func benchmarkDecode(b *testing.B, msg []byte) {
	benchmarkDecoder(b, newOutboxDecoder(b), msg)
}

func benchmarkDecoder(b *testing.B, d *Decoder, msg []byte) {
	var ev outbox.Event
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := d.Decode(msg, &ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeInsertHeaderColumns decodes the typical row with two of
// its columns also copied into headers (OUTBOX_RELAY_HEADER_COLUMNS).
func BenchmarkDecodeInsertHeaderColumns(b *testing.B) {
	m := outbox.DefaultMapping()
	m.HeaderColumns = []outbox.HeaderColumn{{Column: "aggregatetype", Header: "route"}, {Column: "created_at", Header: "created"}}
	d := New(testTable, m)
	if _, err := d.Decode(encodeRelation(testOID, "public", "outbox", outboxColumns), nil); err != nil {
		b.Fatal(err)
	}
	benchmarkDecoder(b, d, encodeInsert(testOID, benchmarkRow()))
}
