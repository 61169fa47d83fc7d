package decoder

import (
	"fmt"
	"math/bits"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// RowError is returned by Decode for a well-formed Insert whose row cannot
// become a record: NULL in a required column, headers that are not a JSON
// object of string values, invalid bytea text. The Event is still filled as
// far as possible (at least ID when the id column is non-null), so the caller
// can dead-letter the row and go on.
type RowError struct {
	Table  string // schema.name of the outbox table
	Column string // the column at fault
	ID     string // the row's id in text form; empty when it is NULL
	Reason string // what is wrong, never the value itself
}

// Error names the row, table and column; it never includes payload or header
// values, so it is safe to log.
func (e *RowError) Error() string {
	if e.ID == "" {
		return fmt.Sprintf("row of %s: column %s: %s", e.Table, e.Column, e.Reason)
	}
	return fmt.Sprintf("row id=%s of %s: column %s: %s", e.ID, e.Table, e.Column, e.Reason)
}

// tupleValue is one column of a TupleData: its kind byte ('n' null,
// 'u' unchanged TOAST, 't' text, 'b' binary) and, for 't' and 'b', its bytes,
// which point into the message. A zero kind means the table has no such column.
type tupleValue struct {
	kind byte
	data []byte
}

// decodeInsert parses Insert: Int32 relation OID, Byte1 'N', TupleData.
func (d *Decoder) decodeInsert(r *reader, ev *outbox.Event) (Message, error) {
	oid := r.uint32("relation oid")
	if r.err != nil {
		return Message{}, r.err
	}
	rel := d.relations[oid]
	if rel == nil {
		return Message{}, fmt.Errorf("insert for unknown relation oid %d (no Relation message seen)", oid)
	}
	if !rel.isOutbox {
		return Message{}, fmt.Errorf("insert into %s, which is not the outbox table %s: the publication must contain only the outbox table (a partitioned outbox: publish_via_partition_root = true, so that its partitions' rows arrive under its name)", rel.name, d.tableName)
	}
	if ev == nil {
		return Message{}, fmt.Errorf("insert into %s: no event to decode into", rel.name)
	}
	if tag := r.uint8("new tuple tag"); r.err == nil && tag != 'N' {
		return Message{}, fmt.Errorf("pgoutput Insert message: tuple tag %q, want 'N'", tag)
	}
	var vals tupleValues
	vals.headers = d.headerValues[:len(d.headerColumns)]
	if err := readTuple(r, rel, &vals); err != nil {
		return Message{}, err
	}
	return Message{Kind: KindInsert}, d.fillEvent(rel, &vals, ev)
}

// tupleValues are the values of an Insert's mapped columns.
type tupleValues struct {
	fields [numFields]tupleValue
	// headers, per Mapping.HeaderColumns entry, point into the decoder's
	// scratch array: every one is set by each tuple (the Relation check
	// makes sure the columns exist), so nothing needs clearing per row.
	headers []tupleValue
}

// readTuple parses TupleData (Int16 number of columns, then per column a kind
// byte and, for 't' and 'b', an Int32 length and the value) and keeps the
// values of the mapped columns in vals.
func readTuple(r *reader, rel *relation, vals *tupleValues) error {
	ncolumns := int(r.uint16("number of columns"))
	if r.err != nil {
		return r.err
	}
	if ncolumns != rel.ncolumns {
		return fmt.Errorf("insert into %s has %d columns, its Relation message described %d", rel.name, ncolumns, rel.ncolumns)
	}
	for i := range ncolumns {
		v := tupleValue{kind: r.uint8("column kind")}
		switch v.kind {
		case 'n', 'u':
		case 't', 'b':
			v.data = r.lengthPrefixed("column value")
		default:
			if r.err == nil {
				return fmt.Errorf("pgoutput Insert message: column %d of %d has unknown kind %q", i+1, ncolumns, v.kind)
			}
		}
		if r.err != nil {
			return fmt.Errorf("%w (column %d of %d)", r.err, i+1, ncolumns)
		}
		for set := rel.columnFields[i]; set != 0; set &= set - 1 {
			vals.fields[bits.TrailingZeros16(uint16(set))] = v
		}
		if h := rel.columnHeader[i]; h != 0 {
			vals.headers[h-1] = v
		}
	}
	return r.done()
}

// span locates a field's bytes in the event buffer while the buffer is being
// filled (it may still move); set is false for SQL NULL and absent columns.
type span struct {
	start, end int
	set        bool
}

func (s span) slice(buf []byte) []byte {
	if !s.set {
		return nil
	}
	return buf[s.start:s.end:s.end]
}

// maxGrowth bounds how much longer a value gets when it is converted to the
// bytes the Event holds (a binary uuid: 16 bytes in, 36 out), so the buffer
// is sized once per row. Fields are located by offset, not pointer, so a
// wrong bound would cost an allocation, never a wrong event.
const maxGrowth = 40

// fillEvent converts the tuple values into ev, copying every byte it keeps
// into ev's one buffer. It assigns every field it owns, whatever fails, so
// nothing of a recycled Event's previous row survives.
func (d *Decoder) fillEvent(rel *relation, vals *tupleValues, ev *outbox.Event) error {
	ev.Headers = ev.Headers[:0]
	ev.Time = 0

	need := 0
	for f, v := range vals.fields {
		if f != int(fieldTime) { // a number, not bytes of the buffer
			need += len(v.data) + maxGrowth
		}
	}
	for _, v := range vals.headers {
		need += len(v.data) + maxGrowth
	}
	buf := ev.Buffer()
	if cap(buf) < need {
		buf = make([]byte, 0, need)
	}

	var spans [numFields]span
	failedColumn, reason := "", ""
	failColumn := func(column, why string) {
		if reason == "" {
			failedColumn, reason = column, why
		}
	}
	fail := func(f field, why string) { failColumn(rel.fields[f].name, why) }
	d.headerScratch = d.headerScratch[:0]
	// The header columns come first, in the order of the mapping; a NULL
	// adds no header.
	for h, hc := range d.headerColumns {
		v := vals.headers[h]
		if v.kind != 't' && v.kind != 'b' {
			continue
		}
		start := len(buf)
		var why string
		if buf, why = appendValue(buf, rel.headers[h].typeOID, v); why != "" {
			buf = buf[:start]
			failColumn(hc.Column, why)
			continue
		}
		d.headerScratch = append(d.headerScratch, headerSpan{key: hc.Header, start: start, end: len(buf)})
	}
	for f := range numFields {
		col := rel.fields[f]
		if col.index < 0 {
			continue
		}
		v := vals.fields[f]
		if f == fieldTime {
			if v.kind != 'n' && col.typeOID == oidTimestampTZ {
				if t, ok := timestampNanos(v); ok {
					ev.Time = t
				}
			}
			continue
		}
		if f == fieldPartitionKey && v.kind != 't' {
			continue // only a text value can be handed back to SQL as is
		}
		switch v.kind {
		case 'n':
			if !fieldRules[f].nullable {
				fail(f, "is null")
			}
			continue
		case 'u':
			fail(f, "is an unchanged TOAST value, which an insert cannot carry")
			continue
		}
		start, headers := len(buf), len(d.headerScratch)
		var why string
		if f == fieldHeaders {
			buf, why = d.appendHeaders(buf, col.typeOID, v)
		} else {
			buf, why = appendValue(buf, col.typeOID, v)
		}
		if why != "" {
			buf = buf[:start]
			if f == fieldHeaders {
				d.headerScratch = d.headerScratch[:headers] // drop a partly parsed object
			}
			fail(f, why)
			continue
		}
		spans[f] = span{start: start, end: len(buf), set: true}
	}

	ev.ID = spans[fieldID].slice(buf)
	ev.AggregateType = spans[fieldAggregateType].slice(buf)
	ev.AggregateID = spans[fieldAggregateID].slice(buf)
	ev.Type = spans[fieldType].slice(buf)
	ev.Payload = spans[fieldPayload].slice(buf)
	ev.Topic = spans[fieldTopic].slice(buf)
	ev.PartitionKey = spans[fieldPartitionKey].slice(buf)
	for _, h := range d.headerScratch {
		ev.Headers = append(ev.Headers, outbox.Header{Key: h.key, Value: buf[h.start:h.end:h.end]})
	}
	ev.SetBuffer(buf)

	if reason == "" {
		return nil
	}
	return &RowError{Table: rel.name, Column: failedColumn, ID: string(ev.ID), Reason: reason}
}
