package rows

import (
	"encoding/hex"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// headersReason is the Problem reason for a headers value of the wrong
// shape, worded as the decoder words it.
const headersReason = "headers must be a JSON object of string values"

// Problem says why a row cannot become a record as it is: the column at
// fault and what is wrong with it, never the value itself, so it is safe to
// log. The zero Problem means the row is fine.
//
// The faults are the decoder's: NULL in the id, aggregatetype, aggregateid
// or type column, or headers that are not JSON null or an object of string
// values. A caller dead-letters such a row with reason
// outbox.ReasonDecodeError, as the stream does.
type Problem struct {
	Column string // the column at fault
	Reason string // what is wrong with it
}

// IsZero reports whether p is the zero Problem: the row is fine.
func (p Problem) IsZero() bool { return p == Problem{} }

// String describes the problem as "column <name>: <reason>", or "" when
// there is none.
func (p Problem) String() string {
	if p.IsZero() {
		return ""
	}
	return fmt.Sprintf("column %s: %s", p.Column, p.Reason)
}

// Row is what Scan reports about a row beyond its Event.
type Row struct {
	// CreatedAt is the row's created_at; zero when it is NULL or the table
	// has no such column.
	CreatedAt time.Time
	// Problem says why the row cannot become a record as it is; zero when
	// it can. The Event is filled as far as possible all the same.
	Problem Problem
}

// Scan converts the current row of r, selected with SelectList, into ev,
// reusing ev's buffer and Headers capacity. Like the decoder, it assigns
// every field it owns whatever fails, so nothing of a recycled Event's
// previous row survives; it sets LSN, CommitTime and Txn to zero, since a
// row read with SQL has no WAL position.
//
// A row that cannot become a record is not an error: it comes back with a
// Problem, and ev.Problem holds the text the stream gives such a row (the
// decoder's RowError: "row id=… of schema.table: column …: …"); ev.Problem
// is empty for a sound row. The error is for a result that does not match
// SelectList.
func (c *Columns) Scan(r pgx.Rows, ev *outbox.Event) (Row, error) {
	vals := r.RawValues()
	if len(vals) < NumColumns {
		return Row{}, fmt.Errorf("scan row of %s: %d columns, want at least %d (select rows.SelectList)", c.table, len(vals), NumColumns)
	}

	need := 0
	for _, v := range vals[:colCreatedAt] {
		need += len(v) // hex decoding and JSON unescaping only shrink
	}
	buf := ev.Buffer()
	if cap(buf) < need {
		buf = make([]byte, 0, need)
	}

	// Fields are located by offset, not pointer, until buf is final.
	type span struct {
		start, end int
		set        bool
	}
	var spans [colCreatedAt]span
	var problem Problem
	fail := func(col int, reason string) {
		if problem.IsZero() {
			problem = Problem{Column: c.columnName(col), Reason: reason}
		}
	}
	var scratch [8]headerSpan
	headers := scratch[:0]
	for col, v := range vals[:colCreatedAt] {
		if v == nil {
			switch col {
			case colID, colAggregateType, colAggregateID, colType:
				fail(col, "is null")
			}
			continue
		}
		start := len(buf)
		switch {
		case col == colPayload && c.payloadHex:
			buf = append(buf, make([]byte, hex.DecodedLen(len(v)))...)
			if _, err := hex.Decode(buf[start:], v); err != nil {
				buf = buf[:start]
				fail(col, "invalid hex from encode()")
				continue
			}
		case col == colHeaders:
			var ok bool
			if buf, headers, ok = appendHeaders(buf, headers, v); !ok {
				buf, headers = buf[:start], nil // drop a partly parsed object
				fail(col, headersReason)
				continue
			}
		default:
			buf = append(buf, v...)
		}
		spans[col] = span{start: start, end: len(buf), set: true}
	}

	slice := func(col int) []byte {
		s := spans[col]
		if !s.set {
			return nil
		}
		return buf[s.start:s.end:s.end]
	}
	ev.ID = slice(colID)
	ev.AggregateType = slice(colAggregateType)
	ev.AggregateID = slice(colAggregateID)
	ev.Type = slice(colType)
	ev.Payload = slice(colPayload)
	ev.Topic = slice(colTopic)
	ev.Headers = ev.Headers[:0]
	for _, h := range headers {
		ev.Headers = append(ev.Headers, outbox.Header{Key: h.key, Value: buf[h.start:h.end:h.end]})
	}
	ev.LSN, ev.CommitTime, ev.Txn = 0, 0, 0
	ev.Problem = ""
	if !problem.IsZero() {
		ev.Problem = c.problemText(ev.ID, problem)
	}
	ev.SetBuffer(buf)

	row := Row{Problem: problem}
	if v := vals[colCreatedAt]; v != nil {
		fd := r.FieldDescriptions()[colCreatedAt]
		if err := r.TypeMap().Scan(fd.DataTypeOID, fd.Format, v, &row.CreatedAt); err != nil {
			return row, fmt.Errorf("scan %s of row id=%s of %s: %w", c.columnName(colCreatedAt), ev.ID, c.table, err)
		}
	}
	return row, nil
}

// problemText words a problem as the decoder's RowError does, so that a row
// dead-lettered by the stream, the backfill or the reconciler carries the
// same error text.
func (c *Columns) problemText(id []byte, p Problem) string {
	if len(id) == 0 {
		return fmt.Sprintf("row of %s: %s", c.table, p)
	}
	return fmt.Sprintf("row id=%s of %s: %s", id, c.table, p)
}

// columnName names the table column a selected column comes from.
func (c *Columns) columnName(col int) string {
	m := c.mapping
	return [NumColumns]string{
		colID: m.ID, colAggregateType: m.AggregateType, colAggregateID: m.AggregateID, colType: m.Type,
		colPayload: m.Payload, colHeaders: m.Headers, colTopic: m.Topic, colCreatedAt: m.CreatedAt,
	}[col]
}
