package rows_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/devenv/pgtest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// newDB creates a database for the test and returns a connection to it,
// closed when the test ends, and the database's name.
func newDB(t *testing.T) (*pgx.Conn, string) {
	t.Helper()
	ctx := testContext(t)
	name, url := pgtest.Database(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn, name
}

func testContext(t *testing.T) context.Context { return pgtest.Context(t) }

func mustExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(testContext(t), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// checkEvent compares the fields Scan fills, telling nil (SQL NULL) from
// empty.
func checkEvent(t *testing.T, got, want *outbox.Event) {
	t.Helper()
	fields := []struct {
		name      string
		got, want []byte
	}{
		{"ID", got.ID, want.ID},
		{"AggregateType", got.AggregateType, want.AggregateType},
		{"AggregateID", got.AggregateID, want.AggregateID},
		{"Type", got.Type, want.Type},
		{"Payload", got.Payload, want.Payload},
		{"Topic", got.Topic, want.Topic},
	}
	for _, f := range fields {
		if (f.got == nil) != (f.want == nil) || !bytes.Equal(f.got, f.want) {
			t.Errorf("%s = %s, want %s", f.name, show(f.got), show(f.want))
		}
	}
	if !sameHeaders(got.Headers, want.Headers) {
		t.Errorf("Headers = %s, want %s", showHeaders(got.Headers), showHeaders(want.Headers))
	}
	if got.Time != want.Time {
		t.Errorf("Time = %d, want %d", got.Time, want.Time)
	}
	if got.LSN != want.LSN || got.CommitTime != want.CommitTime || got.Txn != want.Txn {
		t.Errorf("LSN, CommitTime, Txn = %v, %d, %d, want %v, %d, %d",
			got.LSN, got.CommitTime, got.Txn, want.LSN, want.CommitTime, want.Txn)
	}
}

func sameHeaders(a, b []outbox.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Key != b[i].Key || !bytes.Equal(a[i].Value, b[i].Value) {
			return false
		}
	}
	return true
}

func show(b []byte) string {
	if b == nil {
		return "nil"
	}
	return fmt.Sprintf("%q", b)
}

func showHeaders(hs []outbox.Header) string {
	var parts []string
	for _, h := range hs {
		parts = append(parts, fmt.Sprintf("%q:%q", h.Key, h.Value))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func headers(kv ...string) []outbox.Header {
	var hs []outbox.Header
	for i := 0; i+1 < len(kv); i += 2 {
		hs = append(hs, outbox.Header{Key: kv[i], Value: []byte(kv[i+1])})
	}
	return hs
}

func b(s string) []byte { return []byte(s) }
