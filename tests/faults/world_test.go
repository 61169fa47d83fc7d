package faults

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outbox-relay/outbox-relay/internal/relaytest"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// world is one scenario's setting: its own database (whose name is also
// the slot's and the publication's), its own Kafka cluster, the relays it
// started, what it committed (ledger), the slot positions sampled while it
// ran and the records read back.
type world struct {
	t     *testing.T
	name  string
	db    *pgx.Conn // the scenario goroutine's connection
	kafka *kfake.Cluster

	ledger   *ledger
	sampler  *sampler
	consumer *consumer
	startLSN outbox.LSN // where the audit starts reading commit records
	res      result     // the scenario's line of the table, filled by audit

	mu     sync.Mutex
	relays []*relaytest.Process
}

// seededTopics exist in every scenario's cluster, as an operator creates
// them; whether anything else is auto-created is the scenario's choice.
var seededTopics = []string{"outbox.event.order", "outbox.event.bad", "outbox.dlq"}

// newWorld creates the scenario's database, table and broker and starts
// the consumer and the slot sampler; they stop, and the database is
// dropped, when the scenario ends.
func newWorld(t *testing.T, kafkaOpts ...kfake.Opt) *world {
	t.Helper()
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w := &world{t: t, name: objectName(t.Name()), ledger: newLedger()}
	// First registered, so last to run: the scenario's verdict is final.
	t.Cleanup(func() {
		w.res.scenario, w.res.failed = strings.TrimPrefix(t.Name(), "TestFaults/"), t.Failed()
		resultsMu.Lock()
		results = append(results, w.res)
		resultsMu.Unlock()
	})
	if err := pg.CreateDatabase(ctx, w.name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dropDatabase(t, w.name) })
	var err error
	if w.db, err = pgx.Connect(ctx, pg.URL(w.name)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.db.Close(context.Background()) })
	w.exec("CREATE EXTENSION pg_walinspect")
	w.exec(`CREATE TABLE public.outbox (
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
	w.startLSN = w.lsn("SELECT pg_current_wal_insert_lsn()")

	// Topic auto-creation stays off, as on production brokers, unless
	// the scenario passes kfake.AllowAutoTopicCreation().
	kafkaOpts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.DefaultNumPartitions(3),
		kfake.SeedTopics(3, seededTopics...)}, kafkaOpts...)
	if w.kafka, err = kfake.NewCluster(kafkaOpts...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.kafka.Close)
	if w.consumer, err = startConsumer(w.brokers()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.consumer.stop)
	w.sampler = startSampler(w.name, w.brokers())
	t.Cleanup(func() { w.sampler.stop() })
	t.Cleanup(func() {
		if t.Failed() {
			w.logRelays()
			t.Logf("postgres log, last 30 lines:\n%s", pg.LogTail(30))
		}
	})
	return w
}

// objectName turns a scenario name into a database, slot and publication
// name: lower case letters, digits and underscores, at most 63 bytes.
func objectName(testName string) string {
	name := "f_" + strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(testName, "_"))
	if len(name) > 63 {
		sum := sha1.Sum([]byte(testName))
		name = name[:54] + "_" + hex.EncodeToString(sum[:4])
	}
	return name
}

// dropDatabase drops a scenario's database and its slots.
func dropDatabase(t *testing.T, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Errorf("drop database %s: %v", name, err)
		return
	}
	defer conn.Close(ctx)
	for ctx.Err() == nil {
		conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
			WHERE database = $1 AND active_pid IS NOT NULL`, name)
		conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
			WHERE database = $1 AND NOT active`, name)
		var n int
		if conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE database = $1", name).Scan(&n) == nil && n == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond) // a killed relay's walsender lingers a moment
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Errorf("drop database %s: %v", name, err)
	}
}

func (w *world) brokers() []string { return w.kafka.ListenAddrs() }

// relayEnv is the relay's environment for this scenario plus extra (later
// entries win).
func (w *world) relayEnv(extra ...string) []string {
	return append([]string{
		"OUTBOX_RELAY_PG_URL=" + pg.URL(w.name),
		"OUTBOX_RELAY_KAFKA_BROKERS=" + strings.Join(w.brokers(), ","),
		"OUTBOX_RELAY_SLOT=" + w.name,
		"OUTBOX_RELAY_PUBLICATION=" + w.name,
		"OUTBOX_RELAY_STATUS_INTERVAL=100ms",
		"OUTBOX_RELAY_LOG_LEVEL=info",
		"OUTBOX_RELAY_HTTP_ADDR=127.0.0.1:0",
	}, extra...)
}

// spawn starts `outbox-relay args…` without waiting for anything.
func (w *world) spawn(env []string, args ...string) *relaytest.Process {
	w.t.Helper()
	w.mu.Lock()
	name := fmt.Sprintf("relay %s #%d", strings.Join(args, " "), len(w.relays)+1)
	w.mu.Unlock()
	p, err := relaytest.Start(name, relayBin, env, args...)
	if err != nil {
		w.t.Fatal(err)
	}
	w.mu.Lock()
	w.relays = append(w.relays, p)
	w.mu.Unlock()
	w.t.Cleanup(p.Kill)
	return p
}

// startRelay starts `outbox-relay run` and waits until a walsender streams
// from the slot.
func (w *world) startRelay(extra ...string) *relaytest.Process {
	w.t.Helper()
	p := w.spawn(w.relayEnv(extra...), "run")
	w.waitFor(30*time.Second, p.Name+" to stream", func() (bool, string) {
		if p.Exited() {
			w.t.Fatalf("%s exited while starting:\n%s", p.Name, p.Tail(30))
		}
		s := w.slot()
		return s.active, fmt.Sprintf("slot %+v", s)
	})
	return p
}

// runCommand runs `outbox-relay args…` to its end and returns its exit
// code and output; it fails the scenario if the command outlives timeout.
func (w *world) runCommand(env []string, timeout time.Duration, args ...string) (int, string) {
	w.t.Helper()
	code, out, exited := w.tryCommand(env, timeout, args...)
	if !exited {
		w.t.Fatalf("relay %s still runs after %v:\n%s", strings.Join(args, " "), timeout, out)
	}
	return code, out
}

// tryCommand runs `outbox-relay args…` for at most timeout (then kills it)
// and returns its exit code, output and whether it exited by itself.
func (w *world) tryCommand(env []string, timeout time.Duration, args ...string) (code int, out string, exited bool) {
	w.t.Helper()
	p := w.spawn(env, args...)
	code, exited = p.Wait(timeout)
	if !exited {
		p.Kill()
	}
	return code, p.Output(), exited
}

// terminate stops a relay with SIGTERM and returns its exit code.
func (w *world) terminate(p *relaytest.Process) int {
	w.t.Helper()
	p.Signal(syscall.SIGTERM)
	code, ok := p.Wait(time.Minute)
	if !ok {
		w.t.Fatalf("%s still runs a minute after SIGTERM:\n%s", p.Name, p.Tail(30))
	}
	return code
}

func (w *world) logRelays() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.relays {
		w.t.Logf("%s output, last 60 lines:\n%s", p.Name, p.Tail(60))
	}
}

// slotState is the slot as pg_replication_slots shows it.
type slotState struct {
	exists, active bool
	activePID      int
	confirmed      outbox.LSN
}

func (w *world) slot() slotState {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var s slotState
	var pid *int32
	var confirmed *string
	err := w.db.QueryRow(ctx, `SELECT active, active_pid, confirmed_flush_lsn::text FROM pg_replication_slots
		WHERE slot_name = $1`, w.name).Scan(&s.active, &pid, &confirmed)
	if err == pgx.ErrNoRows {
		return s
	}
	if err != nil {
		w.t.Fatalf("read slot %s: %v", w.name, err)
	}
	s.exists = true
	if pid != nil {
		s.activePID = int(*pid)
	}
	if confirmed != nil {
		s.confirmed, _ = outbox.ParseLSN(*confirmed)
	}
	return s
}

func (w *world) exec(sql string, args ...any) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := w.db.Exec(ctx, sql, args...); err != nil {
		w.t.Fatalf("%s: %v", sql, err)
	}
}

func (w *world) lsn(sql string, args ...any) outbox.LSN {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var s string
	if err := w.db.QueryRow(ctx, sql+"::text", args...).Scan(&s); err != nil {
		w.t.Fatalf("%s: %v", sql, err)
	}
	l, err := outbox.ParseLSN(s)
	if err != nil {
		w.t.Fatal(err)
	}
	return l
}

// reconnect replaces the scenario's connection after a server restart.
func (w *world) reconnect() {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w.db.Close(ctx)
	var err error
	if w.db, err = pgx.Connect(ctx, pg.URL(w.name)); err != nil {
		w.t.Fatalf("reconnect: %v", err)
	}
}

// waitFor polls cond until it holds and fails the scenario after timeout.
func (w *world) waitFor(timeout time.Duration, what string, cond func() (bool, string)) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out after %v waiting for %s; last seen: %s", timeout, what, seen)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
}
