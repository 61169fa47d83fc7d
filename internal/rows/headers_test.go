package rows

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"unicode/utf8"
)

// FuzzAppendHeaders checks the headers parser against encoding/json: both
// must accept the same documents (JSON null, or an object of string values
// and nothing after it) and give the same entries in document order.
func FuzzAppendHeaders(f *testing.F) {
	for _, doc := range []string{
		`null`, ` null `, `{}`, ` { "a" : "b" , "c":"" } `, `{"a": "1", "a": "2"}`,
		`{"k\"ey": "line\nbreak \u00e9 \ud83d\ude00 \ud800x \udc00 \/ \b\f\r\t"}`,
		`{"a": "\ud800\u0041"}`, `{"a": "\u0000"}`,
		`[]`, `"a"`, `1`, `{"a": 1}`, `{"a": null}`, `{"a": {"b": "c"}}`, `{"a": "b",}`, `{"a" "b"}`,
		`{"a": "b"} x`, `null null`, `{"a": "\x"}`, "{\"a\": \"\x01\"}", `{"a": "\u12"}`, `{"a": "b`, ``, `{`,
	} {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		if !utf8.Valid(doc) {
			return // Postgres text is valid UTF-8; encoding/json would replace bad bytes
		}
		want, wantOK := referenceHeaders(doc)
		buf, spans, ok := appendHeaders([]byte("prefix"), nil, doc)
		if ok != wantOK {
			t.Fatalf("appendHeaders(%q) ok = %v, encoding/json says %v", doc, ok, wantOK)
		}
		if !ok {
			return
		}
		if len(spans) != len(want) {
			t.Fatalf("appendHeaders(%q) = %d headers, want %d", doc, len(spans), len(want))
		}
		for i, s := range spans {
			if s.key != want[i][0] || string(buf[s.start:s.end]) != want[i][1] {
				t.Errorf("header %d = %q: %q, want %q: %q", i, s.key, buf[s.start:s.end], want[i][0], want[i][1])
			}
		}
	})
}

// referenceHeaders parses doc with encoding/json's tokenizer.
func referenceHeaders(doc []byte) ([][2]string, bool) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	tok, err := dec.Token()
	if err != nil {
		return nil, false
	}
	var out [][2]string
	switch tok {
	case nil: // JSON null
	case json.Delim('{'):
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return nil, false
			}
			v, err := dec.Token()
			if err != nil {
				return nil, false
			}
			value, ok := v.(string)
			if !ok {
				return nil, false
			}
			out = append(out, [2]string{k.(string), value})
		}
		if end, err := dec.Token(); err != nil || end != json.Delim('}') {
			return nil, false
		}
	default:
		return nil, false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, false
	}
	return out, true
}
