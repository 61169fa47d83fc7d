package decoder

import (
	"fmt"
	"slices"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Type OIDs (pg_type.oid) an outbox column may have.
const (
	oidBytea   = 17
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidText    = 25
	oidJSON    = 114
	oidBpchar  = 1042
	oidVarchar = 1043
	oidUUID    = 2950
	oidJSONB   = 3802
)

// field is an Event field filled from a mapped column.
type field uint8

const (
	fieldID field = iota
	fieldAggregateType
	fieldAggregateID
	fieldType
	fieldPayload
	fieldHeaders
	fieldTopic
	// fieldTime is the timestamp column: it becomes Event.Time, not bytes.
	fieldTime
	// fieldPartitionKey is the column a partitioned outbox is partitioned
	// by, when the relay names one (Decoder.WithPartitionKey).
	fieldPartitionKey
	numFields
)

// fieldSet is a set of fields, one bit each: a column the mapping names for
// two fields (aggregateid = id, say) fills both.
type fieldSet uint16

// A fieldSet must hold a bit for every field: this fails to compile when
// numFields outgrows it.
var _ [16 - numFields]struct{}

// fieldRule says what a field's column must look like.
type fieldRule struct {
	mapping  string   // the outbox.Mapping field, for errors
	required bool     // the column must exist
	nullable bool     // SQL NULL is a valid value
	types    []uint32 // nil: any type
	want     string   // types, for errors
}

var textTypes = []uint32{oidText, oidVarchar, oidBpchar, oidUUID}

const textWant = "text, varchar, bpchar or uuid"

var fieldRules = [numFields]fieldRule{
	fieldID: {
		mapping: "ID", required: true,
		types: []uint32{oidUUID, oidText, oidVarchar, oidBpchar, oidInt2, oidInt4, oidInt8},
		want:  "uuid, text, varchar, bpchar, int2, int4 or int8",
	},
	fieldAggregateType: {mapping: "AggregateType", required: true, types: textTypes, want: textWant},
	fieldAggregateID:   {mapping: "AggregateID", required: true, types: textTypes, want: textWant},
	fieldType:          {mapping: "Type", required: true, types: textTypes, want: textWant},
	fieldPayload: {
		mapping: "Payload", required: true, nullable: true,
		types: []uint32{oidJSONB, oidJSON, oidText, oidVarchar, oidBytea},
		want:  "jsonb, json, text, varchar or bytea",
	},
	fieldHeaders: {mapping: "Headers", nullable: true, types: []uint32{oidJSONB, oidJSON}, want: "jsonb or json"},
	fieldTopic:   {mapping: "Topic", nullable: true, types: textTypes, want: textWant},
	// Any type: only a timestamptz gives the record its time (a timestamp
	// without time zone means nothing to Kafka without a zone), but the
	// column's other uses (the reconciler's age) are not the decoder's.
	fieldTime: {mapping: "CreatedAt", nullable: true},
	// The partition key only narrows the ack's statement: a row that does
	// not carry it is acked by id alone, never failed for it. Any type:
	// only the value's text form is kept.
	fieldPartitionKey: {mapping: "partition key", nullable: true},
}

// mappedColumn is the column that fills a field.
type mappedColumn struct {
	index   int // position in the tuple; -1 when the table has no such column
	name    string
	typeOID uint32
}

// relation is what a Relation message said about a table, with the column
// positions of the outbox fields worked out once so an Insert is decoded in a
// single pass over its tuple.
type relation struct {
	name     string // schema.name
	isOutbox bool
	ncolumns int
	// Set only for the outbox table:
	columnFields []fieldSet              // per tuple column, the fields it fills
	fields       [numFields]mappedColumn // per field, its column
	// columnHeader is, per tuple column, 1 + the index of the header
	// column (Mapping.HeaderColumns) it fills; 0 for none.
	columnHeader []uint8
	headers      [outbox.MaxHeaderColumns]mappedColumn // per header column, its column
}

// decodeRelation parses Relation: Int32 relation OID, String namespace,
// String relation name, Int8 replica identity, Int16 number of columns, and
// per column Int8 flags, String name, Int32 type OID, Int32 type modifier.
func (d *Decoder) decodeRelation(r *reader) (Message, error) {
	oid := r.uint32("relation oid")
	namespace := r.cstring("namespace")
	name := r.cstring("relation name")
	r.uint8("replica identity")
	ncolumns := int(r.uint16("number of columns"))
	if r.err != nil {
		return Message{}, r.err
	}
	// A Relation message replaces what an earlier one said about the OID
	// (the table may have been altered); if this one is rejected, nothing
	// stale must be left to decode Inserts with.
	delete(d.relations, oid)

	schema := string(namespace)
	if schema == "" {
		schema = "pg_catalog" // the docs: empty string for pg_catalog
	}
	rel := &relation{
		name:     schema + "." + string(name),
		isOutbox: string(namespace) == d.table.Schema && string(name) == d.table.Name,
		ncolumns: ncolumns,
	}
	if rel.isOutbox {
		rel.prepare()
	}
	for i := range ncolumns {
		r.uint8("column flags")
		columnName := r.cstring("column name")
		typeOID := r.uint32("column type oid")
		r.uint32("column type modifier")
		if r.err != nil {
			return Message{}, fmt.Errorf("%w (column %d of %d)", r.err, i+1, ncolumns)
		}
		if rel.isOutbox {
			d.mapColumn(rel, i, columnName, typeOID)
		}
	}
	if err := r.done(); err != nil {
		return Message{}, err
	}
	if rel.isOutbox {
		if err := d.checkMapping(rel); err != nil {
			return Message{}, err
		}
	}
	d.relations[oid] = rel
	return Message{Kind: KindRelation, Relation: rel.name}, nil
}

// prepare sizes the outbox relation's per-column maps and marks every
// field and header column as not found yet.
func (rel *relation) prepare() {
	rel.columnFields = make([]fieldSet, rel.ncolumns)
	rel.columnHeader = make([]uint8, rel.ncolumns)
	for f := range rel.fields {
		rel.fields[f].index = -1
	}
	for h := range rel.headers {
		rel.headers[h].index = -1
	}
}

// mapColumn records which fields and header columns column i fills.
func (d *Decoder) mapColumn(rel *relation, i int, columnName []byte, typeOID uint32) {
	for f, want := range d.columnNames {
		if want != "" && string(columnName) == want && rel.fields[f].index < 0 {
			rel.fields[f] = mappedColumn{index: i, name: want, typeOID: typeOID}
			rel.columnFields[i] |= 1 << f
		}
	}
	for h, hc := range d.headerColumns {
		if string(columnName) == hc.Column {
			rel.headers[h] = mappedColumn{index: i, name: hc.Column, typeOID: typeOID}
			rel.columnHeader[i] = uint8(h + 1)
		}
	}
}

// Column is a table column as the catalog describes it: its name and the
// OID of its type (pg_attribute.attname, atttypid).
type Column struct {
	Name    string
	TypeOID uint32
}

// CheckColumns checks the mapping against the outbox table's columns, as
// the Relation message of the table will be checked, so that a caller can
// refuse a table that does not fit before it streams. The error is a
// *MappingError.
func (d *Decoder) CheckColumns(columns []Column) error {
	rel := &relation{name: d.tableName, isOutbox: true, ncolumns: len(columns)}
	rel.prepare()
	for i, c := range columns {
		d.mapColumn(rel, i, []byte(c.Name), c.TypeOID)
	}
	return d.checkMapping(rel)
}

// MappingError says that a Relation message of the outbox table does not fit
// the column mapping (a mapped column renamed, dropped or retyped): no row
// of the table can be decoded until the table or the mapping changes.
type MappingError struct {
	Table  string // schema.name
	Column string // the mapped column; "" when the mapping names none
	Field  string // what the mapping uses the column for
	msg    string
}

func (e *MappingError) Error() string { return e.msg }

// checkMapping reports the first mapped column of the outbox table that is
// missing though required, or whose type the decoder cannot turn into bytes.
func (d *Decoder) checkMapping(rel *relation) error {
	for f, rule := range fieldRules {
		col := rel.fields[f]
		if col.index < 0 {
			if !rule.required {
				continue
			}
			e := &MappingError{Table: rel.name, Column: d.columnNames[f], Field: rule.mapping}
			if e.Column == "" {
				e.msg = fmt.Sprintf("table %s: the column mapping names no column for %s, which is required", rel.name, rule.mapping)
			} else {
				e.msg = fmt.Sprintf("table %s has no column %q, which the column mapping requires for %s", rel.name, e.Column, rule.mapping)
			}
			return e
		}
		if rule.types != nil && !slices.Contains(rule.types, col.typeOID) {
			return &MappingError{Table: rel.name, Column: col.name, Field: rule.mapping,
				msg: fmt.Sprintf("table %s column %s: type oid %d is not supported (want %s)", rel.name, col.name, col.typeOID, rule.want)}
		}
	}
	for h, hc := range d.headerColumns {
		if rel.headers[h].index < 0 {
			return &MappingError{Table: rel.name, Column: hc.Column, Field: "HeaderColumns",
				msg: fmt.Sprintf("table %s has no column %q, which the column mapping copies into header %q", rel.name, hc.Column, hc.Header)}
		}
	}
	return nil
}
