package tests

import (
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// TestApacheTLSAndSCRAM delivers through a SASL_SSL listener, configured
// only by the relay's OUTBOX_RELAY_KAFKA_TLS* and _SASL* variables, and
// checks that a wrong password ends `run` with a non-zero exit and an error
// that says what is wrong (and never the password).
func TestApacheTLSAndSCRAM(t *testing.T) {
	user := &devenv.SCRAMUser{Mechanism: "SCRAM-SHA-256", User: "relay", Password: "scram-canary-pw"}
	k := startApache(t, devenv.ApacheOptions{TLS: true, SASLSCRAM: user})
	e := newApacheEnv(t, k, 3, 1, "outbox.event.order")
	e.createTable()
	secured := []string{
		"OUTBOX_RELAY_KAFKA_BROKERS=" + strings.Join(k.Addrs(), ","),
		"OUTBOX_RELAY_KAFKA_TLS=true",
		"OUTBOX_RELAY_KAFKA_TLS_CA_FILE=" + k.CAFile(),
		"OUTBOX_RELAY_KAFKA_SASL_MECHANISM=SCRAM-SHA-256",
		"OUTBOX_RELAY_KAFKA_SASL_USER=" + user.User,
		"OUTBOX_RELAY_KAFKA_SASL_PASSWORD=" + user.Password,
	}
	r := e.startRelay(secured...)
	events := orderEvents(0, 30)
	last := e.insertInTransactions(events)
	e.readEvents(time.Minute, exactTopic("outbox.event.order"), idSet(events))
	e.waitConfirmed(30*time.Second, last)
	r.terminate(t)
	if strings.Contains(r.stderr.String(), user.Password) {
		t.Errorf("the relay logged the SASL password")
	}

	// A row waits, so that the relay has to reach the broker.
	e.insert(orderEvents(30, 1)...)
	wrong := append(secured, "OUTBOX_RELAY_KAFKA_SASL_PASSWORD=wrong-canary-pw")
	code, _, stderr := runRelay(t, e.relayEnv(wrong...), 90*time.Second, "run")
	if code == 0 {
		t.Errorf("outbox-relay run with a wrong SASL password exited 0, want non-zero")
	}
	if low := strings.ToLower(stderr); !strings.Contains(low, "sasl") || !strings.Contains(low, "authentication") {
		t.Errorf("outbox-relay run with a wrong SASL password: want an error naming SASL authentication; stderr:\n%s", lastLinesOf(stderr, 15))
	}
	if strings.Contains(stderr, "wrong-canary-pw") {
		t.Errorf("the relay logged the SASL password")
	}
}

func lastLinesOf(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
