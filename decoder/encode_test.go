package decoder

import (
	"encoding/binary"
	"time"
)

// This file builds pgoutput messages byte by byte, following "Logical
// Replication Message Formats" (protocol version 1), for the tests to decode.

type wire []byte

func (w wire) uint8(v uint8) wire   { return append(w, v) }
func (w wire) uint16(v uint16) wire { return binary.BigEndian.AppendUint16(w, v) }
func (w wire) uint32(v uint32) wire { return binary.BigEndian.AppendUint32(w, v) }
func (w wire) uint64(v uint64) wire { return binary.BigEndian.AppendUint64(w, v) }
func (w wire) cstring(s string) wire {
	return append(append(w, s...), 0)
}

// pgTime converts t to a Postgres timestamp: microseconds since 2000-01-01.
func pgTime(t time.Time) uint64 {
	return uint64(t.Sub(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).Microseconds())
}

func encodeBegin(finalLSN uint64, commit time.Time, xid uint32) []byte {
	return wire{'B'}.uint64(finalLSN).uint64(pgTime(commit)).uint32(xid)
}

func encodeCommit(commitLSN, endLSN uint64, commit time.Time) []byte {
	return wire{'C'}.uint8(0).uint64(commitLSN).uint64(endLSN).uint64(pgTime(commit))
}

func encodeMessage(transactional bool, lsn uint64, prefix string, content []byte) []byte {
	var flags uint8
	if transactional {
		flags = 1
	}
	w := wire{'M'}.uint8(flags).uint64(lsn).cstring(prefix).uint32(uint32(len(content)))
	return append(w, content...)
}

// testColumn is one column of a Relation message.
type testColumn struct {
	name    string
	typeOID uint32
}

func encodeRelation(oid uint32, namespace, name string, columns []testColumn) []byte {
	w := wire{'R'}.uint32(oid).cstring(namespace).cstring(name).uint8('d').uint16(uint16(len(columns)))
	for i, c := range columns {
		var flags uint8
		if i == 0 {
			flags = 1 // part of the key
		}
		w = w.uint8(flags).cstring(c.name).uint32(c.typeOID).uint32(0xFFFFFFFF)
	}
	return w
}

// testValue is one column of a TupleData.
type testValue struct {
	kind byte
	data []byte
}

func text(s string) testValue        { return testValue{kind: 't', data: []byte(s)} }
func binaryValue(b []byte) testValue { return testValue{kind: 'b', data: b} }
func null() testValue                { return testValue{kind: 'n'} }
func unchangedToast() testValue      { return testValue{kind: 'u'} }
func jsonbBinary(s string) testValue {
	return binaryValue(append([]byte{1}, s...))
}

func encodeInsert(oid uint32, values []testValue) []byte {
	w := wire{'I'}.uint32(oid).uint8('N').uint16(uint16(len(values)))
	for _, v := range values {
		w = w.uint8(v.kind)
		if v.kind == 't' || v.kind == 'b' {
			w = append(w.uint32(uint32(len(v.data))), v.data...)
		}
	}
	return w
}
