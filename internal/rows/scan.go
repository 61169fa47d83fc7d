package rows

import (
	"encoding/hex"
	"errors"
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
	// CreatedAt is the row's age as Columns.Time gives it (its timestamp
	// column, or its commit time); zero when that is NULL or unknown.
	CreatedAt time.Time
	// Problem says why the row cannot become a record as it is; zero when
	// it can. The Event is filled as far as possible all the same.
	Problem Problem
}

// Scan converts the current row of r, selected with SelectList, into ev,
// reusing ev's buffer and Headers capacity. Like the decoder, it assigns
// every field it owns whatever fails, so nothing of a recycled Event's
// previous row survives; it sets LSN and Txn to zero, since a row read with
// SQL has no WAL position, and CommitTime to the commit time of the row's
// transaction when track_commit_timestamp knows it, else zero.
//
// A row that cannot become a record is not an error: it comes back with a
// Problem, and ev.Problem holds the text the stream gives such a row (the
// decoder's RowError: "row id=… of schema.table: column …: …"); ev.Problem
// is empty for a sound row. The error is for a result that does not match
// SelectList.
func (c *Columns) Scan(r pgx.Rows, ev *outbox.Event) (Row, error) {
	vals := r.RawValues()
	if len(vals) < c.Len() {
		return Row{}, fmt.Errorf("scan row of %s: %d columns, want at least %d (select rows.SelectList)", c.table, len(vals), c.Len())
	}
	headerColumns := vals[numFixed:c.Len()]

	need := 0
	for _, v := range vals[:colCreatedAt] {
		need += len(v) // hex decoding and JSON unescaping only shrink
	}
	for _, v := range headerColumns {
		need += len(v)
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
	// appendText appends a column's bytes as the decoder keeps them.
	appendText := func(col int, v []byte) bool {
		if !c.hex[col] {
			buf = append(buf, v...)
			return true
		}
		start := len(buf)
		buf = append(buf, make([]byte, hex.DecodedLen(len(v)))...)
		if _, err := hex.Decode(buf[start:], v); err != nil {
			buf = buf[:start]
			fail(col, "invalid hex from encode()")
			return false
		}
		return true
	}
	var scratch [8]headerSpan
	headers := scratch[:0]
	// The header columns first, as the decoder puts them; NULL adds none.
	for i, v := range headerColumns {
		if v == nil {
			continue
		}
		start := len(buf)
		if appendText(numFixed+i, v) {
			headers = append(headers, headerSpan{key: c.mapping.HeaderColumns[i].Header, start: start, end: len(buf)})
		}
	}
	for col, v := range vals[:colCreatedAt] {
		if v == nil {
			switch col {
			case colID, colAggregateType, colAggregateID, colType:
				fail(col, "is null")
			}
			continue
		}
		start := len(buf)
		if col == colHeaders {
			var ok bool
			n := len(headers)
			if buf, headers, ok = appendHeaders(buf, headers, v); !ok {
				buf, headers = buf[:start], headers[:n] // drop a partly parsed object
				fail(col, headersReason)
				continue
			}
		} else if !appendText(col, v) {
			continue
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
	ev.LSN, ev.Txn = 0, 0
	ev.Problem = ""
	if !problem.IsZero() {
		ev.Problem = c.problemText(ev.ID, problem)
	}
	ev.SetBuffer(buf)

	row := Row{Problem: problem}
	fds := r.FieldDescriptions()
	scan := func(col int, dst any) error {
		if vals[col] == nil {
			return nil
		}
		if err := r.TypeMap().Scan(fds[col].DataTypeOID, fds[col].Format, vals[col], dst); err != nil {
			return fmt.Errorf("scan %s of row id=%s of %s: %w", c.columnName(col), ev.ID, c.table, err)
		}
		return nil
	}
	var recordMicros, commitMicros int64
	err := errors.Join(scan(colCreatedAt, &row.CreatedAt), scan(colTime, &recordMicros), scan(colCommitTime, &commitMicros))
	ev.Time, ev.CommitTime = recordMicros*1000, commitMicros*1000
	return row, err
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
	if col >= numFixed {
		return m.HeaderColumns[col-numFixed].Column
	}
	return [numFixed]string{
		colID: m.ID, colAggregateType: m.AggregateType, colAggregateID: m.AggregateID, colType: m.Type,
		colPayload: m.Payload, colHeaders: m.Headers, colTopic: m.Topic, colCreatedAt: m.CreatedAt,
		colTime: m.CreatedAt, colCommitTime: "xmin",
	}[col]
}
