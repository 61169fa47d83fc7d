package tests

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestApacheRecordsAndPartitioning runs the record contract against a real
// broker: topic, key, value bytes, headers and null payloads as written,
// read back with an independent client, exactly once and in key order; and
// each record in the partition the Java client's default partitioner
// computes for its key.
func TestApacheRecordsAndPartitioning(t *testing.T) {
	k := apacheBroker(t)
	e := newApacheEnv(t, k, 3, 1, seededTopics...)
	e.createTable()
	e.startRelay()

	events := mixedEvents(120)
	lastCommit := e.insertInTransactions(events)
	topics := []string{`^outbox\.event\.`, `^custom\.shipments$`}
	e.readEvents(time.Minute, topics, idSet(events))
	e.waitConfirmed(30*time.Second, lastCommit)

	records := e.readAll(topics)
	if len(records) != len(events) {
		t.Errorf("read %d records, want %d (one per row)", len(records), len(events))
	}
	byID := eventsByID(events)
	for _, r := range records {
		id, _ := header(r, "id")
		ev := byID[id]
		if ev == nil {
			t.Errorf("record with no or unknown id header: %s", describeRecord(r))
			continue
		}
		for _, p := range recordProblems(r, ev) {
			t.Errorf("event %d (%s): %s", ev.seq, ev.id, p)
		}
	}
	checkKeyOrder(t, records, seqByID(events))
	checkJavaPartitions(t, records, 3)
}

// TestApacheKillNineLosesNothing SIGKILLs the relay several times while a
// writer commits, against a real broker: every committed row reaches Kafka
// at least once, each key in commit order.
func TestApacheKillNineLosesNothing(t *testing.T) {
	k := apacheBroker(t)
	e := newApacheEnv(t, k, 3, 1, "kill9.order")
	e.topics = []string{`^kill9\.`}
	topicEnv := "OUTBOX_RELAY_TOPIC=kill9.${aggregatetype}"
	e.createTable()
	r := e.startRelay(topicEnv)
	w := startWriter(t, e.name, 40_000)

	const kills = 3
	for i := range kills {
		n := w.count()
		e.waitFor(30*time.Second, "the writer to commit more", func() (bool, string) {
			return w.count() > n+200, fmt.Sprintf("%d events committed", w.count())
		})
		e.waitConfirmed(30*time.Second, e.currentLSN())
		time.Sleep(rand.N(100 * time.Millisecond)) // vary the moment of the kill, not synchronisation
		r.kill(t)
		t.Logf("kill %d: SIGKILL after %d events committed", i+1, w.count())
		r = e.startRelay(topicEnv)
	}
	events := w.finish(t)
	last := e.insert(orderEvents(len(events), 1)...)
	e.checkDeliveredAtLeastOnce(events, last)
}
