package decoder

import "github.com/outbox-relay/outbox-relay/internal/jsonheaders"

// headersReason is the RowError reason for a headers value of the wrong shape.
const headersReason = "headers must be a JSON object of string values"

// headerSpan is one header while the event buffer is being filled.
type headerSpan struct {
	key        string
	start, end int // the value in the event buffer
}

// maxHeaderKeys bounds the interned header keys; keys come from rows, so
// without a bound a table with ever-new keys would grow the decoder forever.
const (
	maxHeaderKeys   = 256
	maxHeaderKeyLen = 128
)

// appendHeaders parses a json or jsonb headers value, which must be JSON null
// or an object whose values are all strings, appends the unescaped values to
// buf and records the entries in d.headerScratch in document order.
func (d *Decoder) appendHeaders(buf []byte, typeOID uint32, v tupleValue) ([]byte, string) {
	doc := v.data
	if v.kind == 'b' && typeOID == oidJSONB {
		var why string
		if doc, why = jsonbText(doc); why != "" {
			return buf, why
		}
	}
	buf, ok := d.parseHeaders(buf, doc)
	if !ok {
		return buf, headersReason
	}
	return buf, ""
}

func (d *Decoder) parseHeaders(buf, doc []byte) ([]byte, bool) {
	var ok bool
	buf, d.keyScratch, ok = jsonheaders.Parse(buf, d.keyScratch, doc, func(key []byte, start, end int) {
		d.headerScratch = append(d.headerScratch, headerSpan{key: d.headerKey(key), start: start, end: end})
	})
	return buf, ok
}

// headerKey returns key as a string, reusing an earlier string for a key seen
// before so that the same few keys row after row cost no allocation.
func (d *Decoder) headerKey(key []byte) string {
	if s, ok := d.headerKeys[string(key)]; ok {
		return s
	}
	s := string(key)
	if len(d.headerKeys) < maxHeaderKeys && len(s) <= maxHeaderKeyLen {
		d.headerKeys[s] = s
	}
	return s
}
