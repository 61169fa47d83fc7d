// Package jsonheaders parses the outbox's headers column: JSON null or an
// object whose values are all strings. The stream's decoder and the SQL row
// reader both use it, so a row becomes the same record whichever finds it.
//
// It is pure: no I/O, no allocation of its own.
package jsonheaders

import (
	"unicode/utf16"
	"unicode/utf8"
)

// Parse parses doc, appends each unescaped value to buf and calls add with
// the entry's unescaped key (valid only during the call) and the value's
// position in the returned buffer, in document order. keyScratch is reused
// for keys and returned for the next call. ok is false when doc is not JSON
// null or an object of string values.
func Parse(buf, keyScratch, doc []byte, add func(key []byte, start, end int)) (newBuf, newKeyScratch []byte, ok bool) {
	s := scanner{doc: doc}
	s.skipSpace()
	if s.literal("null") {
		return buf, keyScratch, s.atEnd()
	}
	if !s.consume('{') {
		return buf, keyScratch, false
	}
	if s.consume('}') {
		return buf, keyScratch, s.atEnd()
	}
	for {
		if keyScratch, ok = s.appendString(keyScratch[:0]); !ok {
			return buf, keyScratch, false
		}
		if !s.consume(':') {
			return buf, keyScratch, false
		}
		start := len(buf)
		if buf, ok = s.appendString(buf); !ok {
			return buf, keyScratch, false
		}
		add(keyScratch, start, len(buf))
		if s.consume(',') {
			continue
		}
		if s.consume('}') {
			return buf, keyScratch, s.atEnd()
		}
		return buf, keyScratch, false
	}
}

// scanner reads the few JSON tokens a headers object is made of.
type scanner struct {
	doc []byte
	off int
}

func (s *scanner) skipSpace() {
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
func (s *scanner) consume(c byte) bool {
	if s.off < len(s.doc) && s.doc[s.off] == c {
		s.off++
		s.skipSpace()
		return true
	}
	return false
}

// literal skips word and the white space after it, if word is next.
func (s *scanner) literal(word string) bool {
	if len(s.doc)-s.off >= len(word) && string(s.doc[s.off:s.off+len(word)]) == word {
		s.off += len(word)
		s.skipSpace()
		return true
	}
	return false
}

func (s *scanner) atEnd() bool { return s.off == len(s.doc) }

// appendString unescapes the JSON string that comes next into buf and skips
// the white space after it. Escapes of lone UTF-16 surrogates become U+FFFD,
// as encoding/json (and the decoder) do; other bytes are copied as they are.
func (s *scanner) appendString(buf []byte) ([]byte, bool) {
	if s.off >= len(s.doc) || s.doc[s.off] != '"' {
		return buf, false
	}
	s.off++
	for s.off < len(s.doc) {
		// Copy the run up to the next quote, backslash or control character.
		run := s.off
		for s.off < len(s.doc) {
			if c := s.doc[s.off]; c == '"' || c == '\\' || c < 0x20 {
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
				r = s.lowSurrogate(r)
			}
			buf = utf8.AppendRune(buf, r)
		default:
			return buf, false
		}
	}
	return buf, false // unterminated
}

// lowSurrogate combines the high surrogate high with an escaped low
// surrogate that follows it, consuming that escape; without one, the result
// is U+FFFD and nothing is consumed.
func (s *scanner) lowSurrogate(high rune) rune {
	if len(s.doc)-s.off >= 6 && s.doc[s.off] == '\\' && s.doc[s.off+1] == 'u' {
		save := s.off
		s.off += 2
		if low, ok := s.hex4(); ok {
			if pair := utf16.DecodeRune(high, low); pair != utf8.RuneError {
				return pair
			}
		}
		s.off = save
	}
	return utf8.RuneError
}

// hex4 reads the four hex digits of a \u escape.
func (s *scanner) hex4() (rune, bool) {
	if len(s.doc)-s.off < 4 {
		return 0, false
	}
	var r rune
	for _, c := range s.doc[s.off : s.off+4] {
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	s.off += 4
	return r, true
}
