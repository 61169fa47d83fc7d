package decoder

import (
	"errors"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

func TestDecodeRelation(t *testing.T) {
	tests := []struct {
		name      string
		namespace string
		relname   string
		columns   []testColumn
		mapping   func(*outbox.Mapping)
		want      string // Message.Relation
		wantErr   string
	}{
		{name: "outbox table", namespace: "public", relname: "outbox", columns: outboxColumns, want: "public.outbox"},
		{name: "other table is cached unchecked", namespace: "public", relname: "other", columns: []testColumn{{"x", 1700}}, want: "public.other"},
		{name: "pg_catalog", namespace: "", relname: "pg_class", want: "pg_catalog.pg_class"},
		{name: "same name in another schema", namespace: "audit", relname: "outbox", columns: []testColumn{{"payload", 1700}}, want: "audit.outbox"},
		{
			name: "optional columns absent", namespace: "public", relname: "outbox",
			columns: withColumn("topic", testColumn{})[:5], want: "public.outbox",
		},
		{
			name: "supported alternative types", namespace: "public", relname: "outbox",
			columns: []testColumn{{"id", oidInt8}, {"aggregatetype", oidVarchar}, {"aggregateid", oidUUID}, {"type", oidBpchar}, {"payload", oidBytea}, {"headers", oidJSON}, {"topic", oidVarchar}},
			want:    "public.outbox",
		},
		{
			name: "unsupported payload type", namespace: "public", relname: "outbox",
			columns: withColumn("payload", testColumn{"payload", 1700}),
			wantErr: "table public.outbox column payload: type oid 1700 is not supported (want jsonb, json, text, varchar or bytea)",
		},
		{
			name: "unsupported id type", namespace: "public", relname: "outbox",
			columns: withColumn("id", testColumn{"id", oidJSONB}),
			wantErr: "table public.outbox column id: type oid 3802 is not supported (want uuid, text, varchar, bpchar, int2, int4 or int8)",
		},
		{
			name: "unsupported headers type", namespace: "public", relname: "outbox",
			columns: withColumn("headers", testColumn{"headers", oidText}),
			wantErr: "table public.outbox column headers: type oid 25 is not supported (want jsonb or json)",
		},
		{
			name: "unsupported optional topic type", namespace: "public", relname: "outbox",
			columns: withColumn("topic", testColumn{"topic", oidInt4}),
			wantErr: "table public.outbox column topic: type oid 23 is not supported (want text, varchar, bpchar or uuid)",
		},
		{
			name: "missing header column", namespace: "public", relname: "outbox",
			columns: outboxColumns,
			mapping: func(m *outbox.Mapping) {
				m.HeaderColumns = []outbox.HeaderColumn{{Column: "trace", Header: "traceparent"}}
			},
			wantErr: `table public.outbox has no column "trace", which the column mapping copies into header "traceparent"`,
		},
		{
			name: "missing required column", namespace: "public", relname: "outbox",
			columns: withColumn("aggregateid", testColumn{}),
			wantErr: `table public.outbox has no column "aggregateid", which the column mapping requires for AggregateID`,
		},
		{
			name: "mapping renames a column the table lacks", namespace: "public", relname: "outbox",
			columns: outboxColumns,
			mapping: func(m *outbox.Mapping) { m.Payload = "body" },
			wantErr: `table public.outbox has no column "body", which the column mapping requires for Payload`,
		},
		{
			name: "mapping leaves a required field empty", namespace: "public", relname: "outbox",
			columns: outboxColumns,
			mapping: func(m *outbox.Mapping) { m.Type = "" },
			wantErr: "table public.outbox: the column mapping names no column for Type, which is required",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := outbox.DefaultMapping()
			if tt.mapping != nil {
				tt.mapping(&m)
			}
			d := New(testTable, m)
			got, err := d.Decode(encodeRelation(testOID, tt.namespace, tt.relname, tt.columns), nil)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Decode error = %v, want %q", err, tt.wantErr)
				}
				if d.relations[testOID] != nil {
					t.Errorf("rejected relation was cached")
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got.Kind != KindRelation || got.Relation != tt.want {
				t.Errorf("Decode = %v %q, want %v %q", got.Kind, got.Relation, KindRelation, tt.want)
			}
		})
	}
}

// TestDecodeRelationReplaced checks that a later Relation message for the
// same OID replaces the cached one: columns may move after ALTER TABLE, and a
// rejected description must not leave the old one in use.
func TestDecodeRelationReplaced(t *testing.T) {
	d := newOutboxDecoder(t)
	reordered := []testColumn{{"payload", oidText}, {"type", oidText}, {"aggregateid", oidText}, {"aggregatetype", oidText}, {"id", oidText}}
	if _, err := d.Decode(encodeRelation(testOID, "public", "outbox", reordered), nil); err != nil {
		t.Fatalf("Decode(Relation): %v", err)
	}
	var ev outbox.Event
	if _, err := d.Decode(encodeInsert(testOID, []testValue{text("p"), text("t"), text("aid"), text("at"), text("7")}), &ev); err != nil {
		t.Fatalf("Decode(Insert): %v", err)
	}
	if string(ev.ID) != "7" || string(ev.Payload) != "p" || string(ev.AggregateType) != "at" {
		t.Errorf("event = id %q payload %q aggregatetype %q, want 7, p, at", ev.ID, ev.Payload, ev.AggregateType)
	}

	bad := withColumn("payload", testColumn{"payload", 1700})
	if _, err := d.Decode(encodeRelation(testOID, "public", "outbox", bad), nil); err == nil {
		t.Fatal("Decode(Relation with numeric payload) succeeded, want an error")
	}
	_, err := d.Decode(encodeInsert(testOID, fullRow()), &ev)
	want := "insert for unknown relation oid 16384 (no Relation message seen)"
	if err == nil || err.Error() != want {
		t.Errorf("Decode(Insert) error = %v, want %q", err, want)
	}
}

// TestCheckColumns: the catalog's columns are judged as the Relation
// message will be.
func TestCheckColumns(t *testing.T) {
	d := New(testTable, outbox.DefaultMapping())
	var columns []Column
	for _, c := range outboxColumns {
		columns = append(columns, Column{Name: c.name, TypeOID: c.typeOID})
	}
	if err := d.CheckColumns(columns); err != nil {
		t.Errorf("CheckColumns(the default table) = %v, want nil", err)
	}
	columns[4].TypeOID = oidInt4 // payload
	var e *MappingError
	if err := d.CheckColumns(columns); !errors.As(err, &e) || e.Field != "Payload" || e.Column != "payload" {
		t.Errorf("CheckColumns(an int4 payload) = %v, want a MappingError for Payload, column payload", err)
	}
}
