package tests

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// testEnv is one test's world: its own database on the shared cluster (whose
// name is also the slot's and the publication's, since slot names are
// cluster-wide), its own Kafka cluster, and the relays it started.
type testEnv struct {
	t     *testing.T
	name  string
	db    *pgx.Conn     // for the test goroutine only
	kafka *devenv.Kafka // nil when the test runs against Apache Kafka
	// brokers are the addresses the relay and the readers use.
	brokers []string
	// topics are the patterns the delivery checks read; nil is outboxTopics.
	topics []string

	mu     sync.Mutex
	relays []*relayProcess
}

// seededTopics are created with 3 partitions in every test's Kafka cluster.
var seededTopics = []string{"outbox.event.order", "outbox.event.customer", "custom.shipments"}

// newEnv creates the test's database and Kafka cluster and removes them
// (slots included, so they pin no WAL) when the test ends.
func newEnv(t *testing.T, kafkaOpts ...kfake.Opt) *testEnv {
	t.Helper()
	e := newDatabaseEnv(t)
	// The topics the tests use exist up front, as an operator would create
	// them; auto-creation stays on for anything else.
	kafkaOpts = append([]kfake.Opt{kfake.SeedTopics(3, seededTopics...)}, kafkaOpts...)
	var err error
	if e.kafka, err = devenv.StartKafka(kafkaOpts...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.kafka.Close)
	e.brokers = e.kafka.Addrs()
	return e
}

// newDatabaseEnv creates the test's database, and removes it (slots
// included, so they pin no WAL) when the test ends; the caller provides
// the brokers.
func newDatabaseEnv(t *testing.T) *testEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := &testEnv{t: t, name: objectName(t.Name())}
	if err := pg.CreateDatabase(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("postgres log, last 40 lines:\n%s", pg.LogTail(40))
		}
		dropDatabase(t, e.name)
	})
	var err error
	if e.db, err = pgx.Connect(ctx, pg.URL(e.name)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close(context.Background()) })
	// pg_walinspect gives the exact end LSN of a commit record (commitTx).
	if _, err := e.db.Exec(ctx, "CREATE EXTENSION pg_walinspect"); err != nil {
		t.Fatalf("create extension pg_walinspect (from the server's contrib modules): %v", err)
	}
	return e
}

// objectName turns a test name into a database, slot and publication name:
// lower case letters, digits and underscores, at most 63 bytes.
func objectName(testName string) string {
	name := "t_" + strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(testName, "_"))
	if len(name) > 63 {
		sum := sha1.Sum([]byte(testName))
		name = name[:54] + "_" + hex.EncodeToString(sum[:4])
	}
	return name
}

// dropDatabase drops a test database and the slots that live in it.
func dropDatabase(t *testing.T, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Errorf("drop database %s: %v", name, err)
		return
	}
	defer conn.Close(ctx)
	// A killed relay's walsender may linger a moment holding its slot.
	for {
		_, err = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
			WHERE database = $1 AND active_pid IS NOT NULL`, name)
		if err == nil {
			_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
				WHERE database = $1 AND NOT active`, name)
		}
		var n int
		if err == nil {
			err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE database = $1", name).Scan(&n)
		}
		if err == nil && n == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Errorf("drop slots of %s: %v (%d left)", name, err, n)
			return
		}
		time.Sleep(50 * time.Millisecond) // polling the server, not synchronising
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Errorf("drop database %s: %v", name, err)
	}
}

// relayEnv is the relay's environment for this test: its database, slot,
// publication and brokers, and a 100ms status interval so that positions
// move quickly. extra entries ("OUTBOX_RELAY_ACK_MODE=none") override; an
// entry without "=" removes the variable.
func (e *testEnv) relayEnv(extra ...string) []string {
	return append([]string{
		"OUTBOX_RELAY_PG_URL=" + pg.URL(e.name),
		"OUTBOX_RELAY_KAFKA_BROKERS=" + strings.Join(e.brokers, ","),
		"OUTBOX_RELAY_SLOT=" + e.name,
		"OUTBOX_RELAY_PUBLICATION=" + e.name,
		"OUTBOX_RELAY_STATUS_INTERVAL=100ms",
		"OUTBOX_RELAY_LOG_LEVEL=info",
		// Not part of the README contract, but a relay that serves
		// metrics must not fight over a fixed port with the other
		// relays a test runs.
		"OUTBOX_RELAY_HTTP_ADDR=127.0.0.1:0",
	}, extra...)
}

// startRelay starts `outbox-relay run` and waits until it streams from its
// slot, so that rows inserted afterwards are certain to be delivered.
func (e *testEnv) startRelay(extra ...string) *relayProcess {
	e.t.Helper()
	return e.startRelayBinary(relayBin, extra...)
}

// startRelayBinary is startRelay with the relay binary bin.
func (e *testEnv) startRelayBinary(bin string, extra ...string) *relayProcess {
	e.t.Helper()
	r := startRelayProcess(e.t, bin, e.relayEnv(extra...), "run")
	e.mu.Lock()
	e.relays = append(e.relays, r)
	e.mu.Unlock()
	e.waitFor(30*time.Second, "the relay to stream from its slot", func() (bool, string) {
		s := e.slot()
		return s.exists && s.active, fmt.Sprintf("slot %+v", s)
	})
	return r
}

// setup runs `outbox-relay setup` and requires success.
func (e *testEnv) setup(extra ...string) (output string) {
	e.t.Helper()
	code, stdout, stderr := runRelay(e.t, e.relayEnv(extra...), time.Minute, "setup")
	if code != 0 {
		e.t.Fatalf("outbox-relay setup exited with %d; stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	return stdout + stderr
}

// createTable creates public.outbox exactly as the README specifies it, the
// way an application that did not run `setup` would.
func (e *testEnv) createTable() {
	e.t.Helper()
	e.exec(`CREATE TABLE public.outbox (
		id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
		aggregatetype text NOT NULL,
		aggregateid text NOT NULL,
		type text NOT NULL,
		payload jsonb,
		headers jsonb,
		topic text,
		created_at timestamptz NOT NULL DEFAULT now(),
		published_at timestamptz
	)`)
}

// reconnect replaces the test's connection, after a server restart.
func (e *testEnv) reconnect() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.db.Close(ctx)
	conn, err := pgx.Connect(ctx, pg.URL(e.name))
	if err != nil {
		e.t.Fatalf("reconnect: %v", err)
	}
	e.db = conn
}

func (e *testEnv) exec(sql string, args ...any) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.db.Exec(ctx, sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func (e *testEnv) queryInt(sql string, args ...any) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var n int
	if err := e.db.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// unexpectedExit returns a relay that exited although the test did not stop
// it, or nil.
func (e *testEnv) unexpectedExit() *relayProcess {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.relays {
		if r.exited() && !r.signalled.Load() {
			return r
		}
	}
	return nil
}

// waitFor polls cond until it holds, failing the test after timeout or as
// soon as a relay dies unexpectedly. cond returns whether it holds and a
// description of what it saw, for the failure message.
func (e *testEnv) waitFor(timeout time.Duration, what string, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if r := e.unexpectedExit(); r != nil {
			e.t.Fatalf("%s exited (%s) while waiting for %s; last seen: %s", r.name, r.describeExit(), what, seen)
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %v waiting for %s; last seen: %s", timeout, what, seen)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
}

// context returns a context that ends after timeout, or as soon as a relay
// dies unexpectedly (with that as its cause).
func (e *testEnv) context(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancelCause := context.WithCancelCause(context.Background())
	ctx, cancelTimeout := context.WithTimeout(ctx, timeout)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if r := e.unexpectedExit(); r != nil {
					cancelCause(fmt.Errorf("%s exited (%s)", r.name, r.describeExit()))
					return
				}
			}
		}
	}()
	return ctx, func() { cancelTimeout(); cancelCause(nil) }
}
