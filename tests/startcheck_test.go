package tests

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestRunRefusesUnreachableBroker: `run` against brokers that do not answer
// exits non-zero with an error naming OUTBOX_RELAY_KAFKA_BROKERS, and
// creates nothing in Postgres on the way (no slot, no publication).
func TestRunRefusesUnreachableBroker(t *testing.T) {
	e := newDatabaseEnv(t)
	e.createTable()
	// A port that was free a moment ago: nothing listens on it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	e.brokers = []string{dead}

	started := time.Now()
	code, _, stderr := runRelay(t, e.relayEnv(), 90*time.Second, "run")
	took := time.Since(started)
	if code == 0 {
		t.Fatalf("outbox-relay run against an unreachable broker exited 0; stderr:\n%s", lastLinesOf(stderr, 15))
	}
	if !strings.Contains(stderr, "OUTBOX_RELAY_KAFKA_BROKERS") || !strings.Contains(stderr, dead) {
		t.Errorf("the error does not name OUTBOX_RELAY_KAFKA_BROKERS and %s; stderr:\n%s", dead, lastLinesOf(stderr, 15))
	}
	if n := e.queryInt("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", e.name); n != 0 {
		t.Errorf("the relay created its slot although it never reached Kafka")
	}
	if n := e.queryInt("SELECT count(*) FROM pg_publication WHERE pubname = $1", e.name); n != 0 {
		t.Errorf("the relay created its publication although it never reached Kafka")
	}
	t.Logf("exited %d after %v", code, took.Round(time.Millisecond))
}
