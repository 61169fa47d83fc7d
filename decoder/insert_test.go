package decoder

import (
	"errors"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

func TestDecodeInsert(t *testing.T) {
	tests := []struct {
		name    string
		columns []testColumn // default outboxColumns
		mapping func(*outbox.Mapping)
		values  []testValue
		want    outbox.Event
		wantErr *RowError
	}{
		{name: "full row", values: fullRow(), want: fullEvent()},
		{
			name:   "null payload",
			values: row(map[string]testValue{"payload": null()}),
			want:   withEvent(func(ev *outbox.Event) { ev.Payload = nil }),
		},
		{
			name:    "empty payload is not null",
			columns: withColumn("payload", testColumn{"payload", oidText}),
			values:  row(map[string]testValue{"payload": text("")}),
			want:    withEvent(func(ev *outbox.Event) { ev.Payload = []byte{} }),
		},
		{
			name:   "null headers and topic",
			values: row(map[string]testValue{"headers": null(), "topic": null()}),
			want:   withEvent(func(ev *outbox.Event) { ev.Headers, ev.Topic = nil, nil }),
		},
		{
			name:    "optional columns absent",
			columns: outboxColumns[:5],
			values:  fullRow()[:5],
			want:    withEvent(func(ev *outbox.Event) { ev.Headers, ev.Topic, ev.Time = nil, nil, 0 }),
		},
		{
			name:    "optional columns unmapped",
			mapping: func(m *outbox.Mapping) { m.Headers, m.Topic = "", "" },
			values:  fullRow(),
			want:    withEvent(func(ev *outbox.Event) { ev.Headers, ev.Topic = nil, nil }),
		},
		{
			name:   "headers json null",
			values: row(map[string]testValue{"headers": text(" null ")}),
			want:   withEvent(func(ev *outbox.Event) { ev.Headers = nil }),
		},
		{
			name:   "headers empty object",
			values: row(map[string]testValue{"headers": text("{}")}),
			want:   withEvent(func(ev *outbox.Event) { ev.Headers = nil }),
		},
		{
			name:   "headers with escapes",
			values: row(map[string]testValue{"headers": text(`{"k\"ey": "line\nbreak\ttab \\ \/ \u00e9 \ud83d\ude00 \ud800x", "": ""}`)}),
			want: withEvent(func(ev *outbox.Event) {
				ev.Headers = []outbox.Header{
					{Key: `k"ey`, Value: []byte("line\nbreak\ttab \\ / é 😀 \uFFFDx")},
					{Key: "", Value: []byte{}},
				}
			}),
		},
		{
			name:    "headers json keeps duplicates in document order",
			columns: withColumn("headers", testColumn{"headers", oidJSON}),
			values:  row(map[string]testValue{"headers": text(`{"b":"1","a":"2","b":"3"}`)}),
			want: withEvent(func(ev *outbox.Event) {
				ev.Headers = []outbox.Header{{Key: "b", Value: []byte("1")}, {Key: "a", Value: []byte("2")}, {Key: "b", Value: []byte("3")}}
			}),
		},
		{
			name: "binary values",
			values: row(map[string]testValue{
				"id":            binaryValue(testUUIDBytes),
				"aggregatetype": binaryValue([]byte("order")),
				"payload":       jsonbBinary(testPayload),
				"headers":       jsonbBinary(`{"traceparent": "00-abc-01", "tenant": "acme"}`),
			}),
			want: fullEvent(),
		},
		{
			name:    "uuid aggregate id in binary",
			columns: withColumn("aggregateid", testColumn{"aggregateid", oidUUID}),
			values:  row(map[string]testValue{"aggregateid": binaryValue(testUUIDBytes)}),
			want:    withEvent(func(ev *outbox.Event) { ev.AggregateID = []byte(testID) }),
		},
		{
			name:    "bigint id in binary",
			columns: withColumn("id", testColumn{"id", oidInt8}),
			values:  row(map[string]testValue{"id": binaryValue([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe})}),
			want:    withEvent(func(ev *outbox.Event) { ev.ID = []byte("-2") }),
		},
		{
			name:    "int4 id in binary",
			columns: withColumn("id", testColumn{"id", oidInt4}),
			values:  row(map[string]testValue{"id": binaryValue([]byte{0, 1, 0, 0})}),
			want:    withEvent(func(ev *outbox.Event) { ev.ID = []byte("65536") }),
		},
		{
			name:    "int2 id in text",
			columns: withColumn("id", testColumn{"id", oidInt2}),
			values:  row(map[string]testValue{"id": text("17")}),
			want:    withEvent(func(ev *outbox.Event) { ev.ID = []byte("17") }),
		},
		{
			name:    "bytea payload in hex text",
			columns: withColumn("payload", testColumn{"payload", oidBytea}),
			values:  row(map[string]testValue{"payload": text(`\x00ff68694A`)}),
			want:    withEvent(func(ev *outbox.Event) { ev.Payload = []byte{0, 0xff, 'h', 'i', 'J'} }),
		},
		{
			name:    "bytea payload in escape text",
			columns: withColumn("payload", testColumn{"payload", oidBytea}),
			values:  row(map[string]testValue{"payload": text(`a\\b\000\377`)}),
			want:    withEvent(func(ev *outbox.Event) { ev.Payload = []byte{'a', '\\', 'b', 0, 0xff} }),
		},
		{
			name:    "empty bytea payload",
			columns: withColumn("payload", testColumn{"payload", oidBytea}),
			values:  row(map[string]testValue{"payload": text(`\x`)}),
			want:    withEvent(func(ev *outbox.Event) { ev.Payload = []byte{} }),
		},
		{
			name:    "bytea payload in binary",
			columns: withColumn("payload", testColumn{"payload", oidBytea}),
			values:  row(map[string]testValue{"payload": binaryValue([]byte{0, 1, '\\'})}),
			want:    withEvent(func(ev *outbox.Event) { ev.Payload = []byte{0, 1, '\\'} }),
		},
		{
			name:    "one column mapped to two fields",
			mapping: func(m *outbox.Mapping) { m.AggregateID = "id" },
			values:  fullRow(),
			want:    withEvent(func(ev *outbox.Event) { ev.AggregateID = []byte(testID) }),
		},

		{
			name:   "timestamp with an offset and fewer digits",
			values: row(map[string]testValue{"created_at": text("2024-05-06 09:38:09.1234+02:30")}),
			want:   withEvent(func(ev *outbox.Event) { ev.Time = testTime - 56000 }),
		},
		{
			name:   "timestamp in binary",
			values: row(map[string]testValue{"created_at": binaryValue([]byte{0x00, 0x02, 0xba, 0xc2, 0x80, 0x1b, 0x6a, 0x80})}),
			want:   fullEvent(),
		},
		{
			name:   "null timestamp",
			values: row(map[string]testValue{"created_at": null()}),
			want:   withEvent(func(ev *outbox.Event) { ev.Time = 0 }),
		},
		{
			name:   "infinite timestamp: the commit time stands in",
			values: row(map[string]testValue{"created_at": text("infinity")}),
			want:   withEvent(func(ev *outbox.Event) { ev.Time = 0 }),
		},
		{
			name:    "timestamp without time zone gives no time",
			columns: withColumn("created_at", testColumn{"created_at", oidTimestamp}),
			values:  row(map[string]testValue{"created_at": text("2024-05-06 07:08:09.123456")}),
			want:    withEvent(func(ev *outbox.Event) { ev.Time = 0 }),
		},
		{
			name:    "timestamp column of another type is no fault",
			columns: withColumn("created_at", testColumn{"created_at", oidInt8}),
			values:  row(map[string]testValue{"created_at": text("1714979289123")}),
			want:    withEvent(func(ev *outbox.Event) { ev.Time = 0 }),
		},
		{
			name:    "timestamp unmapped",
			mapping: func(m *outbox.Mapping) { m.CreatedAt = "" },
			values:  fullRow(),
			want:    withEvent(func(ev *outbox.Event) { ev.Time = 0 }),
		},
		{
			name: "header columns come first, NULL adds none",
			mapping: func(m *outbox.Mapping) {
				m.HeaderColumns = []outbox.HeaderColumn{{Column: "aggregatetype", Header: "route"}, {Column: "published_at", Header: "p"},
					{Column: "created_at", Header: "created_at"}, {Column: "id", Header: "ce_id"}}
			},
			values: fullRow(),
			want: withEvent(func(ev *outbox.Event) {
				ev.Headers = append([]outbox.Header{{Key: "route", Value: []byte("order")},
					{Key: "created_at", Value: []byte("2024-05-06 07:08:09.123456+00")}, {Key: "ce_id", Value: []byte(testID)}}, ev.Headers...)
			}),
		},
		{
			name:    "header column in binary",
			mapping: func(m *outbox.Mapping) { m.HeaderColumns = []outbox.HeaderColumn{{Column: "id", Header: "event"}} },
			values:  row(map[string]testValue{"id": binaryValue(testUUIDBytes)}),
			want: withEvent(func(ev *outbox.Event) {
				ev.Headers = append([]outbox.Header{{Key: "event", Value: []byte(testID)}}, ev.Headers...)
			}),
		},

		// Rows that cannot become records: a RowError, the rest of the event filled.
		{
			name:    "null id",
			values:  row(map[string]testValue{"id": null()}),
			want:    withEvent(func(ev *outbox.Event) { ev.ID = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "id", Reason: "is null"},
		},
		{
			name:    "null aggregatetype",
			values:  row(map[string]testValue{"aggregatetype": null()}),
			want:    withEvent(func(ev *outbox.Event) { ev.AggregateType = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "aggregatetype", ID: testID, Reason: "is null"},
		},
		{
			name:    "null aggregateid",
			values:  row(map[string]testValue{"aggregateid": null()}),
			want:    withEvent(func(ev *outbox.Event) { ev.AggregateID = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "aggregateid", ID: testID, Reason: "is null"},
		},
		{
			name:    "null type",
			values:  row(map[string]testValue{"type": null()}),
			want:    withEvent(func(ev *outbox.Event) { ev.Type = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "type", ID: testID, Reason: "is null"},
		},
		{
			name:    "first of two faults is reported",
			values:  row(map[string]testValue{"type": null(), "headers": text("[]")}),
			want:    withEvent(func(ev *outbox.Event) { ev.Type, ev.Headers = nil, nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "type", ID: testID, Reason: "is null"},
		},
		{
			name:    "fault after the headers keeps the headers",
			columns: withColumn("topic", testColumn{"topic", oidUUID}),
			values:  row(map[string]testValue{"topic": binaryValue([]byte{1, 2})}),
			want:    withEvent(func(ev *outbox.Event) { ev.Topic = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "topic", ID: testID, Reason: "binary uuid has 2 bytes, want 16"},
		},
		{
			name:    "unchanged toast value",
			values:  row(map[string]testValue{"payload": unchangedToast()}),
			want:    withEvent(func(ev *outbox.Event) { ev.Payload = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "payload", ID: testID, Reason: "is an unchanged TOAST value, which an insert cannot carry"},
		},
		{
			name:    "binary uuid of the wrong length",
			values:  row(map[string]testValue{"id": binaryValue(testUUIDBytes[:15])}),
			want:    withEvent(func(ev *outbox.Event) { ev.ID = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "id", Reason: "binary uuid has 15 bytes, want 16"},
		},
		{
			name:    "binary int of the wrong length",
			columns: withColumn("id", testColumn{"id", oidInt8}),
			values:  row(map[string]testValue{"id": binaryValue([]byte{1, 2, 3, 4})}),
			want:    withEvent(func(ev *outbox.Event) { ev.ID = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "id", Reason: "binary integer has 4 bytes, want 8"},
		},
		{
			name:    "binary jsonb of an unknown version",
			values:  row(map[string]testValue{"payload": binaryValue([]byte("\x02{}"))}),
			want:    withEvent(func(ev *outbox.Event) { ev.Payload = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "payload", ID: testID, Reason: "binary jsonb version 2 is not supported"},
		},
		{
			name:    "invalid bytea hex",
			columns: withColumn("payload", testColumn{"payload", oidBytea}),
			values:  row(map[string]testValue{"payload": text(`\x0g`)}),
			want:    withEvent(func(ev *outbox.Event) { ev.Payload = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "payload", ID: testID, Reason: "invalid bytea text: not a hex digit"},
		},
		{
			name:    "odd bytea hex",
			columns: withColumn("payload", testColumn{"payload", oidBytea}),
			values:  row(map[string]testValue{"payload": text(`\x0`)}),
			want:    withEvent(func(ev *outbox.Event) { ev.Payload = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "payload", ID: testID, Reason: "invalid bytea text: odd number of hex digits"},
		},
		{
			name:    "fault in a header column",
			mapping: func(m *outbox.Mapping) { m.HeaderColumns = []outbox.HeaderColumn{{Column: "id", Header: "event"}} },
			values:  row(map[string]testValue{"id": binaryValue(testUUIDBytes[:3])}),
			want:    withEvent(func(ev *outbox.Event) { ev.ID = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "id", Reason: "binary uuid has 3 bytes, want 16"},
		},
		{
			name:    "invalid bytea escape",
			columns: withColumn("payload", testColumn{"payload", oidBytea}),
			values:  row(map[string]testValue{"payload": text(`ab\48`)}),
			want:    withEvent(func(ev *outbox.Event) { ev.Payload = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "payload", ID: testID, Reason: "invalid bytea text: bad escape sequence"},
		},
	}
	for _, doc := range []string{
		`[]`, `"s"`, `1`, `true`, ``, `{`, `{"a":1}`, `{"a":null}`, `{"a":{"b":"c"}}`, `{"a":["b"]}`,
		`{"a":"b",}`, `{"a" "b"}`, `{"a":"b"} x`, `{"a":"b"}{}`, `{a:"b"}`, `{"a":"\x"}`, `{"a":"\u12"}`, "{\"a\":\"\x01\"}", `{"a":"b`,
	} {
		tests = append(tests, struct {
			name    string
			columns []testColumn
			mapping func(*outbox.Mapping)
			values  []testValue
			want    outbox.Event
			wantErr *RowError
		}{
			name:    "headers " + doc,
			values:  row(map[string]testValue{"headers": text(doc)}),
			want:    withEvent(func(ev *outbox.Event) { ev.Headers = nil }),
			wantErr: &RowError{Table: "public.outbox", Column: "headers", ID: testID, Reason: "headers must be a JSON object of string values"},
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			columns := tt.columns
			if columns == nil {
				columns = outboxColumns
			}
			m := outbox.DefaultMapping()
			if tt.mapping != nil {
				tt.mapping(&m)
			}
			d := New(testTable, m)
			if _, err := d.Decode(encodeRelation(testOID, "public", "outbox", columns), nil); err != nil {
				t.Fatalf("Decode(Relation): %v", err)
			}
			ev := outbox.Event{LSN: 99, CommitTime: 98, Txn: 97}
			got, err := d.Decode(encodeInsert(testOID, tt.values), &ev)
			if got.Kind != KindInsert {
				t.Errorf("Kind = %v, want %v", got.Kind, KindInsert)
			}
			if tt.wantErr == nil && err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if tt.wantErr != nil {
				var rowErr *RowError
				if !errors.As(err, &rowErr) {
					t.Fatalf("Decode error = %v, want RowError %v", err, tt.wantErr)
				}
				if *rowErr != *tt.wantErr {
					t.Errorf("Decode error = %#v, want %#v", *rowErr, *tt.wantErr)
				}
			}
			checkEvent(t, &ev, &tt.want)
			if ev.LSN != 99 || ev.CommitTime != 98 || ev.Txn != 97 {
				t.Errorf("LSN, CommitTime, Txn = %v, %d, %d, want them untouched (99, 98, 97)", ev.LSN, ev.CommitTime, ev.Txn)
			}
		})
	}
}

func TestDecodeInsertFatal(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		ev      *outbox.Event
		wantErr string
	}{
		{
			name:    "unknown relation",
			data:    encodeInsert(777, fullRow()),
			wantErr: "insert for unknown relation oid 777 (no Relation message seen)",
		},
		{
			name:    "foreign relation",
			data:    encodeInsert(otherOID, []testValue{text("1")}),
			wantErr: "insert into public.other, which is not the outbox table public.outbox: the publication must contain only the outbox table (a partitioned outbox: publish_via_partition_root = true, so that its partitions' rows arrive under its name)",
		},
		{
			name:    "column count differs from the relation",
			data:    encodeInsert(testOID, fullRow()[:8]),
			wantErr: "insert into public.outbox has 8 columns, its Relation message described 9",
		},
		{
			name:    "unknown column kind",
			data:    encodeInsert(testOID, append(fullRow()[:8], testValue{kind: 'x'})),
			wantErr: "pgoutput Insert message: column 9 of 9 has unknown kind 'x'",
		},
		{
			name:    "value longer than the message",
			data:    encodeInsert(testOID, fullRow())[:40],
			wantErr: "pgoutput Insert message is short: column value needs 36 bytes, 27 left (column 1 of 9)",
		},
		{
			name:    "trailing bytes",
			data:    append(encodeInsert(testOID, fullRow()), 'n'),
			wantErr: "pgoutput Insert message has 1 unexpected trailing bytes",
		},
		{
			name:    "old tuple instead of new",
			data:    wire{'I'}.uint32(testOID).uint8('O').uint16(0),
			wantErr: "pgoutput Insert message: tuple tag 'O', want 'N'",
		},
		{
			name:    "no event",
			data:    encodeInsert(testOID, fullRow()),
			ev:      nil,
			wantErr: "insert into public.outbox: no event to decode into",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newOutboxDecoder(t)
			if _, err := d.Decode(encodeRelation(otherOID, "public", "other", []testColumn{{"x", oidText}}), nil); err != nil {
				t.Fatalf("Decode(Relation): %v", err)
			}
			ev := tt.ev
			if ev == nil && tt.name != "no event" {
				ev = &outbox.Event{}
			}
			_, err := d.Decode(tt.data, ev)
			var rowErr *RowError
			if errors.As(err, &rowErr) {
				t.Fatalf("Decode error = %v, a RowError, want a fatal error", err)
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("Decode error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestRowErrorMessage(t *testing.T) {
	tests := []struct {
		name string
		err  RowError
		want string
	}{
		{
			name: "with id",
			err:  RowError{Table: "public.outbox", Column: "aggregateid", ID: "17", Reason: "is null"},
			want: "row id=17 of public.outbox: column aggregateid: is null",
		},
		{
			name: "null id",
			err:  RowError{Table: "public.outbox", Column: "id", Reason: "is null"},
			want: "row of public.outbox: column id: is null",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestRowErrorHidesValues checks that no RowError quotes the values of the
// row, which may be personal data and end up in logs.
func TestRowErrorHidesValues(t *testing.T) {
	const secret = "s3cr3t-value"
	d := newOutboxDecoder(t)
	for _, headers := range []string{`{"token":"` + secret + `", "n": 1}`, `["` + secret + `"]`} {
		var ev outbox.Event
		_, err := d.Decode(encodeInsert(testOID, row(map[string]testValue{"headers": text(headers), "payload": text(secret)})), &ev)
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("Decode error = %v, want a RowError without the value", err)
		}
	}
}
