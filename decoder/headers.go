package decoder

import (
	"unicode/utf16"
	"unicode/utf8"
)

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
	s := jsonScanner{doc: doc}
	s.skipSpace()
	if s.literal("null") {
		return buf, s.atEnd()
	}
	if !s.consume('{') {
		return buf, false
	}
	if s.consume('}') {
		return buf, s.atEnd()
	}
	for {
		var ok bool
		if d.keyScratch, ok = s.appendString(d.keyScratch[:0]); !ok {
			return buf, false
		}
		if !s.consume(':') {
			return buf, false
		}
		start := len(buf)
		if buf, ok = s.appendString(buf); !ok {
			return buf, false
		}
		d.headerScratch = append(d.headerScratch, headerSpan{key: d.headerKey(d.keyScratch), start: start, end: len(buf)})
		if s.consume(',') {
			continue
		}
		if s.consume('}') {
			return buf, s.atEnd()
		}
		return buf, false
	}
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

// jsonScanner reads the few JSON tokens a headers object is made of.
type jsonScanner struct {
	doc []byte
	off int
}

func (s *jsonScanner) skipSpace() {
	for s.off < len(s.doc) {
		switch s.doc[s.off] {
		case ' ', '\t', '\n', '\r':
			s.off++
		default:
			return
		}
	}
}

// consume skips c and the white space after it, if c is next.
func (s *jsonScanner) consume(c byte) bool {
	if s.off < len(s.doc) && s.doc[s.off] == c {
		s.off++
		s.skipSpace()
		return true
	}
	return false
}

// literal skips word and the white space after it, if word is next.
func (s *jsonScanner) literal(word string) bool {
	if len(s.doc)-s.off >= len(word) && string(s.doc[s.off:s.off+len(word)]) == word {
		s.off += len(word)
		s.skipSpace()
		return true
	}
	return false
}

func (s *jsonScanner) atEnd() bool { return s.off == len(s.doc) }

// appendString unescapes the JSON string that comes next into buf and skips
// the white space after it. Escapes of lone UTF-16 surrogates become U+FFFD,
// as encoding/json does; other bytes are copied as they are.
func (s *jsonScanner) appendString(buf []byte) ([]byte, bool) {
	if s.off >= len(s.doc) || s.doc[s.off] != '"' {
		return buf, false
	}
	s.off++
	for s.off < len(s.doc) {
		// Copy the run up to the next quote, backslash or control character.
		run := s.off
		for s.off < len(s.doc) {
			c := s.doc[s.off]
			if c == '"' || c == '\\' || c < 0x20 {
				break
			}
			s.off++
		}
		buf = append(buf, s.doc[run:s.off]...)
		if s.off >= len(s.doc) {
			break
		}
		switch c := s.doc[s.off]; {
		case c == '"':
			s.off++
			s.skipSpace()
			return buf, true
		case c < 0x20:
			return buf, false
		}
		// A backslash escape.
		if s.off+1 >= len(s.doc) {
			return buf, false
		}
		esc := s.doc[s.off+1]
		s.off += 2
		switch esc {
		case '"', '\\', '/':
			buf = append(buf, esc)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := s.hex4()
			if !ok {
				return buf, false
			}
			if utf16.IsSurrogate(r) {
				// A high surrogate may be followed by the escaped low one.
				low := utf8.RuneError
				if save := s.off; s.off+1 < len(s.doc) && s.doc[s.off] == '\\' && s.doc[s.off+1] == 'u' {
					s.off += 2
					if l, ok := s.hex4(); ok {
						low = l
					}
					s.off = save
				}
				if pair := utf16.DecodeRune(r, low); pair != utf8.RuneError {
					r = pair
					s.off += 6
				} else {
					r = utf8.RuneError
				}
			}
			buf = utf8.AppendRune(buf, r)
		default:
			return buf, false
		}
	}
	return buf, false // unterminated
}

// hex4 reads the four hex digits of a \u escape.
func (s *jsonScanner) hex4() (rune, bool) {
	if len(s.doc)-s.off < 4 {
		return 0, false
	}
	var r rune
	for _, c := range s.doc[s.off : s.off+4] {
		v, ok := unhex(c)
		if !ok {
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	s.off += 4
	return r, true
}
