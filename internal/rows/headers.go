package rows

import "github.com/outbox-relay/outbox-relay/internal/jsonheaders"

// headerSpan is one header while the event buffer is being filled.
type headerSpan struct {
	key        string
	start, end int // the value in the event buffer
}

// appendHeaders parses the text of a json or jsonb headers value, which must
// be JSON null or an object whose values are all strings, appends the
// unescaped values to buf and the entries to headers in document order.
//
// It accepts and rejects exactly what the decoder does, byte for byte the
// same results: the two must agree, or a row would turn into a different
// record depending on whether the stream or a SQL read found it.
func appendHeaders(buf []byte, headers []headerSpan, doc []byte) ([]byte, []headerSpan, bool) {
	buf, _, ok := jsonheaders.Parse(buf, nil, doc, func(key []byte, start, end int) {
		headers = append(headers, headerSpan{key: string(key), start: start, end: end})
	})
	return buf, headers, ok
}
