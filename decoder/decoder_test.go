package decoder

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
)

var testCommitTime = time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)

func TestDecodeTransactionMessages(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want Message
	}{
		{
			name: "begin",
			data: encodeBegin(0x16_B374D848, testCommitTime, 4242),
			want: Message{Kind: KindBegin, FinalLSN: 0x16_B374D848, CommitTime: testCommitTime.UnixNano(), Xid: 4242},
		},
		{
			name: "commit",
			data: encodeCommit(0x16_B374D848, 0x16_B374D880, testCommitTime),
			want: Message{Kind: KindCommit, CommitLSN: 0x16_B374D848, EndLSN: 0x16_B374D880, CommitTime: testCommitTime.UnixNano()},
		},
		{
			name: "begin before the postgres epoch",
			data: wire{'B'}.uint64(1).uint64(^uint64(0)).uint32(1), // -1 µs
			want: Message{Kind: KindBegin, FinalLSN: 1, CommitTime: time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.UTC).UnixNano(), Xid: 1},
		},
		{name: "origin", data: wire{'O'}.uint64(7).cstring("upstream"), want: Message{Kind: KindOther}},
		{name: "type", data: wire{'Y'}.uint32(16400).cstring("public").cstring("mood"), want: Message{Kind: KindOther}},
		{name: "truncate", data: wire{'T'}.uint32(1).uint8(0).uint32(16384), want: Message{Kind: KindOther}},
		{name: "update", data: []byte{'U', 0, 0}, want: Message{Kind: KindOther}},
		{name: "delete", data: []byte{'D'}, want: Message{Kind: KindOther}},
		{name: "unknown type", data: []byte{'Z', 1, 2, 3}, want: Message{Kind: KindOther}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := New(testTable, outbox.DefaultMapping()).Decode(tt.data, nil)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got.Kind != tt.want.Kind || got.FinalLSN != tt.want.FinalLSN || got.CommitTime != tt.want.CommitTime ||
				got.Xid != tt.want.Xid || got.CommitLSN != tt.want.CommitLSN || got.EndLSN != tt.want.EndLSN {
				t.Errorf("Decode = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDecodeLogicalMessage(t *testing.T) {
	tests := []struct {
		name          string
		transactional bool
		prefix        string
		content       []byte
	}{
		{name: "heartbeat", prefix: "outbox-relay.heartbeat", content: []byte("2024-05-06T07:08:09Z")},
		{name: "transactional", transactional: true, prefix: "app", content: []byte{0, 1, 2}},
		{name: "empty", prefix: "", content: []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := encodeMessage(tt.transactional, 0x1_00000010, tt.prefix, tt.content)
			got, err := New(testTable, outbox.DefaultMapping()).Decode(data, nil)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got.Kind != KindMessage {
				t.Errorf("Kind = %v, want %v", got.Kind, KindMessage)
			}
			if got.MessageLSN != 0x1_00000010 {
				t.Errorf("MessageLSN = %v, want 1/10", got.MessageLSN)
			}
			if got.Transactional != tt.transactional {
				t.Errorf("Transactional = %v, want %v", got.Transactional, tt.transactional)
			}
			if string(got.Prefix) != tt.prefix {
				t.Errorf("Prefix = %q, want %q", got.Prefix, tt.prefix)
			}
			if !bytes.Equal(got.Content, tt.content) {
				t.Errorf("Content = %q, want %q", got.Content, tt.content)
			}
		})
	}
}

func TestDecodeMalformed(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{name: "empty", data: nil, wantErr: "pgoutput message is empty"},
		{name: "begin short", data: encodeBegin(1, testCommitTime, 1)[:17], wantErr: "pgoutput Begin message is short: xid needs 4 bytes, 0 left"},
		{name: "begin trailing", data: append(encodeBegin(1, testCommitTime, 1), 0), wantErr: "pgoutput Begin message has 1 unexpected trailing bytes"},
		{name: "commit short", data: []byte{'C', 0, 1}, wantErr: "pgoutput Commit message is short: commit LSN needs 8 bytes, 1 left"},
		{name: "message prefix unterminated", data: wire{'M'}.uint8(0).uint64(1).append("pre"), wantErr: "pgoutput Message message is short: prefix is not NUL-terminated"},
		{name: "message content short", data: wire{'M'}.uint8(0).uint64(1).cstring("p").uint32(10).append("abc"), wantErr: "pgoutput Message message is short: content needs 10 bytes, 3 left"},
		{name: "message content negative", data: wire{'M'}.uint8(0).uint64(1).cstring("p").uint32(0xFFFFFFFF), wantErr: "pgoutput Message message: content has negative length -1"},
		{name: "relation short", data: wire{'R'}.uint32(1).cstring("public"), wantErr: "pgoutput Relation message is short: relation name is not NUL-terminated"},
		{name: "relation columns short", data: wire{'R'}.uint32(1).cstring("public").cstring("outbox").uint8('d').uint16(3).uint8(0).cstring("id").uint32(oidUUID).uint32(0), wantErr: "pgoutput Relation message is short: column flags needs 1 bytes, 0 left (column 2 of 3)"},
		{name: "insert short", data: []byte{'I', 0, 0}, wantErr: "pgoutput Insert message is short: relation oid needs 4 bytes, 2 left"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(testTable, outbox.DefaultMapping()).Decode(tt.data, &outbox.Event{})
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("Decode error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestDecodeTruncated cuts every valid message short at every length: each
// cut must be an error naming the message, never a panic or a success.
func TestDecodeTruncated(t *testing.T) {
	messages := map[string][]byte{
		"Begin":    encodeBegin(1, testCommitTime, 2),
		"Commit":   encodeCommit(1, 2, testCommitTime),
		"Message":  encodeMessage(true, 3, "prefix", []byte("content")),
		"Relation": encodeRelation(testOID, "public", "outbox", outboxColumns),
		"Insert":   encodeInsert(testOID, fullRow()),
	}
	for name, data := range messages {
		for n := 1; n < len(data); n++ {
			d := newOutboxDecoder(t)
			_, err := d.Decode(data[:n], &outbox.Event{})
			if err == nil {
				t.Errorf("%s cut to %d of %d bytes: Decode succeeded, want an error", name, n, len(data))
				continue
			}
			if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(name)) {
				t.Errorf("%s cut to %d bytes: error %q does not name the message", name, n, err)
			}
		}
	}
}

func (w wire) append(s string) wire { return append(w, s...) }
