package tests

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// TestApacheBrokerFailover runs the relay against three brokers
// (replication factor 3, min.insync.replicas=2, acks=all) while a writer
// commits. Killing the leader of a partition loses nothing and the relay
// catches up by itself. With two brokers down the broker refuses writes
// (NOT_ENOUGH_REPLICAS): the relay must not confirm past the rows it could
// not deliver, must keep retrying rather than exit, and must deliver them
// once the brokers are back. Every row arrives at least once, each key in
// commit order.
func TestApacheBrokerFailover(t *testing.T) {
	k := startApache(t, devenv.ApacheOptions{Brokers: 3})
	const topic = "outbox.event.order"
	e := newApacheEnv(t, k, 3, 3, topic, "probe")
	e.createTable()
	e.startRelay()
	w := startWriter(t, e.name, 1_000_000)
	progress := func(what string) {
		t.Helper()
		n := w.count()
		e.waitFor(time.Minute, "the writer to commit more "+what, func() (bool, string) {
			return w.count() > n+200, fmt.Sprintf("%d events committed", w.count())
		})
		e.waitConfirmed(time.Minute, e.currentLSN())
	}
	ctx, cancel := e.context(5 * time.Minute)
	defer cancel()
	progress("before any kill")

	leader, err := k.LeaderOf(ctx, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.KillBroker(leader); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed broker %d, leader of %s[0], after %d events", leader, topic, w.count())
	progress("with the leader killed")
	if err := k.StartBroker(ctx, leader); err != nil {
		t.Fatal(err)
	}
	progress("with the leader back")

	survivor := (leader + 1) % 3
	for i := range 3 {
		if i != survivor {
			if err := k.KillBroker(i); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitNotEnoughReplicas(t, ctx, k, "probe")
	marker := orderEvents(1_000_000, 1)
	held := e.insert(marker...)
	t.Logf("two brokers down after %d events; marker committed at %s", w.count(), held)
	// The relay must hold its position behind the undeliverable marker
	// and keep running (retrying) for as long as the outage lasts.
	for deadline := time.Now().Add(8 * time.Second); time.Now().Before(deadline); {
		if s := e.slot(); s.confirmed >= held {
			t.Fatalf("confirmed_flush_lsn = %s with two of three brokers down, want before %s (the commit of a row no broker accepted)", s.confirmed, held)
		}
		if r := e.unexpectedExit(); r != nil {
			t.Fatalf("%s exited (%s) during the outage, want it to retry", r.name, r.describeExit())
		}
		time.Sleep(200 * time.Millisecond) // poll interval
	}
	for i := range 3 {
		if i != survivor {
			if err := k.StartBroker(ctx, i); err != nil {
				t.Fatal(err)
			}
		}
	}
	events := append(w.finish(t), marker...)
	last := e.insert(orderEvents(2_000_000, 1)...)
	e.checkDeliveredAtLeastOnce(events, last)
}

// waitNotEnoughReplicas produces with acks=all to topic until the cluster
// answers NOT_ENOUGH_REPLICAS, so that the test knows the outage is the one
// it means (the ISR shrank below min.insync.replicas).
func waitNotEnoughReplicas(t *testing.T, ctx context.Context, k *devenv.ApacheKafka, topic string) {
	t.Helper()
	// kafka-go returns the broker's error code after one attempt; franz-go
	// would retry it until its delivery timeout.
	w := &kafka.Writer{Addr: kafka.TCP(k.InternalAddrs()...), Topic: topic, RequiredAcks: kafka.RequireAll,
		MaxAttempts: 1, WriteTimeout: 5 * time.Second, BatchTimeout: time.Millisecond}
	defer w.Close()
	var last error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && ctx.Err() == nil; {
		last = w.WriteMessages(ctx, kafka.Message{Value: []byte("probe")})
		var writeErrs kafka.WriteErrors
		if errors.Is(last, kafka.NotEnoughReplicas) || errors.As(last, &writeErrs) && errors.Is(writeErrs[0], kafka.NotEnoughReplicas) {
			return
		}
		time.Sleep(200 * time.Millisecond) // poll interval
	}
	t.Fatalf("produce with two of three brokers down: %v, want NOT_ENOUGH_REPLICAS", last)
}
