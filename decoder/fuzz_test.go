package decoder

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"unicode/utf8"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// FuzzDecode feeds two messages to a Decoder that already knows the outbox
// table, so the fuzzer can both describe relations and insert into them.
// Decode must never panic, and what it returns must hold together.
func FuzzDecode(f *testing.F) {
	relation := encodeRelation(testOID, "public", "outbox", outboxColumns)
	binaryTypes := encodeRelation(testOID, "public", "outbox", []testColumn{
		{"id", oidInt8}, {"aggregatetype", oidVarchar}, {"aggregateid", oidUUID}, {"type", oidBpchar},
		{"payload", oidBytea}, {"headers", oidJSON}, {"topic", oidVarchar},
	})
	seeds := [][2][]byte{
		{encodeBegin(1, testCommitTime, 2), encodeCommit(1, 2, testCommitTime)},
		{encodeMessage(true, 3, "outbox-relay.heartbeat", []byte("hi")), encodeMessage(false, 4, "", nil)},
		{relation, encodeInsert(testOID, fullRow())},
		{encodeInsert(testOID, row(map[string]testValue{"payload": null(), "headers": null(), "topic": null()})), nil},
		{encodeInsert(testOID, row(map[string]testValue{"id": binaryValue(testUUIDBytes), "payload": jsonbBinary(testPayload), "headers": jsonbBinary(`{"a":"\u00e9"}`)})), nil},
		{encodeInsert(testOID, row(map[string]testValue{"headers": text(`{"k\"":"\ud83d\ude00\n"}`), "type": null()})), nil},
		{binaryTypes, encodeInsert(testOID, []testValue{
			binaryValue([]byte{0, 0, 0, 0, 0, 0, 0, 7}), text("order"), binaryValue(testUUIDBytes), text("T  "),
			text(`\x0102`), text(`{"a":"b"}`), null(),
		})},
		{binaryTypes, encodeInsert(testOID, []testValue{text("7"), text("o"), text(testID), text("T"), text(`a\\b\001`), null(), text("t")})},
		{encodeRelation(otherOID, "public", "other", []testColumn{{"x", oidText}}), encodeInsert(otherOID, []testValue{text("x")})},
		{wire{'O'}.uint64(7).cstring("origin"), wire{'T'}.uint32(1).uint8(0).uint32(testOID)},
		{wire{'Y'}.uint32(16400).cstring("public").cstring("mood"), []byte{'U'}},
		{[]byte{'D'}, nil},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, first, second []byte) {
		d := New(testTable, outbox.DefaultMapping())
		if _, err := d.Decode(relation, nil); err != nil {
			t.Fatalf("Decode(Relation): %v", err)
		}
		ev := outbox.Event{LSN: 1, CommitTime: 2, Txn: 3}
		for _, data := range [][]byte{first, second} {
			m, err := d.Decode(data, &ev)
			var rowErr *RowError
			switch {
			case errors.As(err, &rowErr):
				if m.Kind != KindInsert {
					t.Errorf("RowError with Kind %v, want %v", m.Kind, KindInsert)
				}
				_ = rowErr.Error()
			case err != nil:
				if m.Kind != KindOther {
					t.Errorf("fatal error %v with Kind %v, want %v", err, m.Kind, KindOther)
				}
			case m.Kind == KindInsert:
				if ev.ID == nil || ev.AggregateType == nil || ev.AggregateID == nil || ev.Type == nil {
					t.Errorf("Insert decoded with a required field nil: %+v", ev)
				}
			case m.Kind == KindMessage:
				if !within(data, m.Prefix) || !within(data, m.Content) {
					t.Errorf("Message prefix or content does not point into the input")
				}
			}
			if ev.LSN != 1 || ev.CommitTime != 2 || ev.Txn != 3 {
				t.Errorf("Decode changed LSN, CommitTime or Txn")
			}
		}
	})
}

func within(outer, inner []byte) bool {
	if len(inner) == 0 {
		return true
	}
	return len(outer) >= len(inner) && bytes.Contains(outer, inner)
}

// FuzzHeaders checks the headers parser against encoding/json: both must
// accept the same documents and agree on every key and value.
func FuzzHeaders(f *testing.F) {
	for _, doc := range []string{
		`null`, `{}`, ` { "a" : "b" , "c":"" } `, `{"k\"ey": "line\nbreak \u00e9 \ud83d\ude00 \ud800x \udc00 \/"}`,
		`{"a":1}`, `{"a":"b",}`, `[]`, `{"a":"b"}x`, `{"a":{"b":"c"}}`, `"s"`, `{"a":"\u0000"}`, `{"a":"\ud83d\u0041"}`,
	} {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		if !utf8.Valid(doc) {
			t.Skip("encoding/json replaces invalid UTF-8; Postgres never stores it")
		}
		d := New(testTable, outbox.DefaultMapping())
		buf, ok := d.parseHeaders(nil, doc)
		want, wantOK := referenceHeaders(doc)
		if ok != wantOK {
			t.Fatalf("parseHeaders(%q) ok = %v, encoding/json says %v", doc, ok, wantOK)
		}
		if !ok {
			return
		}
		if len(d.headerScratch) != len(want) {
			t.Fatalf("parseHeaders(%q) = %d headers, want %d", doc, len(d.headerScratch), len(want))
		}
		for i, h := range d.headerScratch {
			if h.key != want[i].Key || string(buf[h.start:h.end]) != string(want[i].Value) {
				t.Errorf("header %d = %q: %q, want %q: %q", i, h.key, buf[h.start:h.end], want[i].Key, want[i].Value)
			}
		}
	})
}

// referenceHeaders parses doc with encoding/json's tokenizer.
func referenceHeaders(doc []byte) ([]outbox.Header, bool) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	tok, err := dec.Token()
	if err != nil {
		return nil, false
	}
	var headers []outbox.Header
	switch tok {
	case nil:
	case json.Delim('{'):
		for dec.More() {
			key, err := dec.Token()
			if err != nil {
				return nil, false
			}
			value, err := dec.Token()
			s, isString := value.(string)
			if err != nil || !isString {
				return nil, false
			}
			headers = append(headers, outbox.Header{Key: key.(string), Value: []byte(s)})
		}
		if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
			return nil, false
		}
	default:
		return nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false
	}
	return headers, true
}
