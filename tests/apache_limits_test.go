package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The broker-side limits against a real broker: what Apache Kafka answers
// (MESSAGE_TOO_LARGE for the whole batch that holds one record over the
// topic's max.message.bytes; UNKNOWN_TOPIC_OR_PARTITION, retried by the
// client, with auto-creation off) is what the dead-letter paths were built
// for with kfake.

// limitEvent is a row with an explicit topic, so that the test's topics are
// its own on the shared broker.
func limitEvent(topic, key string, seq int, payload string) *event {
	if payload == "" {
		payload = fmt.Sprintf(`{"seq": %d}`, seq)
	}
	return &event{aggregateType: "limit", aggregateID: key, typ: "Placed", topic: topic, payload: jsonText(payload), seq: seq}
}

// without is events minus drop.
func without(events []*event, drop *event) []*event {
	var out []*event
	for _, ev := range events {
		if ev != drop {
			out = append(out, ev)
		}
	}
	return out
}

// checkOnlyDeadLetter checks that dead holds exactly one dead letter, for
// ev with reason, and that no record of ev reached its topic.
func checkOnlyDeadLetter(t *testing.T, records, dead []*kgo.Record, ev *event, reason string) {
	t.Helper()
	for _, r := range records {
		if id, _ := header(r, "id"); id == ev.id {
			t.Errorf("the dead-lettered row reached a topic: %s", describeRecord(r))
		}
	}
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dead))
	}
	checkDeadLetter(t, dead[0], ev, reason, true)
}

// TestApacheRecordOverTopicLimit commits, between rows of the same key, a
// row whose record is over its topic's max.message.bytes on a real broker:
// the row goes to the dead-letter topic as message_too_large with its
// whole copy in the dead-letter table, the rows around it arrive in commit
// order, the slot confirms past them all; once the topic's limit is
// raised, `dlq replay` sends the whole row.
func TestApacheRecordOverTopicLimit(t *testing.T) {
	k := apacheBroker(t)
	const topic, dlq = "apache.limit.big", "apache.limit.dlq"
	e := newApacheEnv(t, k, 3, 1, dlq)
	if err := k.CreateTopic(t.Context(), topic, 3, 1, map[string]string{"max.message.bytes": "20000"}); err != nil {
		t.Fatal(err)
	}
	env := []string{"OUTBOX_RELAY_DLQ_TOPIC=" + dlq}
	e.createTable()
	e.startRelay(env...)

	big := limitEvent(topic, "k-1", 2, fmt.Sprintf(`{"seq": 2, "pad": %q}`, strings.Repeat("x", 30_000)))
	first := []*event{limitEvent(topic, "k-1", 0, ""), limitEvent(topic, "k-2", 1, ""), big,
		limitEvent(topic, "k-1", 3, ""), limitEvent(topic, "k-2", 4, "")}
	second := []*event{limitEvent(topic, "k-1", 5, ""), limitEvent(topic, "k-2", 6, "")}
	e.insert(first...)
	lastCommit := e.insert(second...)
	normal := without(append(append([]*event{}, first...), second...), big)

	records := e.readEvents(time.Minute, exactTopic(topic), idSet(normal))
	dead := e.readEvents(time.Minute, exactTopic(dlq), idSet([]*event{big}))
	e.waitConfirmed(30*time.Second, lastCommit)
	checkKeyOrder(t, records, seqByID(normal))
	checkOnlyDeadLetter(t, records, dead, big, reasonTooLarge)
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left after the slot confirmed past them, want 0", n)
	}
	if n := e.queryInt(`SELECT count(*) FROM public.outbox_dead_letter WHERE id::text = $1 AND payload = $2::jsonb AND reason = $3`,
		big.id, *big.storedPayload, reasonTooLarge); n != 1 {
		t.Fatalf("dead-letter table: %d whole copies of row %s, want 1", n, big.id)
	}

	raiseMaxMessageBytes(t, k.Addrs(), topic, 1<<20)
	replay := e.replayJSON(env, "replay")
	if replay.Table == nil || replay.Table.Replayed != 1 {
		t.Fatalf("dlq replay after raising the limit: %+v, want the row replayed", replay.Table)
	}
	for _, r := range e.readEvents(time.Minute, exactTopic(topic), idSet([]*event{big})) {
		if id, _ := header(r, "id"); id == big.id && string(r.Value) != *big.storedPayload {
			t.Errorf("replayed record value is %d bytes, want the row's payload of %d", len(r.Value), len(*big.storedPayload))
		}
	}
	if n := e.queryInt("SELECT count(*) FROM public.outbox_dead_letter"); n != 0 {
		t.Errorf("%d rows in the dead-letter table after the replay, want 0", n)
	}
}

// TestApacheUnknownTopicDeadLettered commits, between rows of the same key,
// a row for a topic that does not exist on a real broker with
// auto-creation off: after OUTBOX_RELAY_KAFKA_UNKNOWN_TOPIC_TIMEOUT it goes
// to the dead-letter topic as unknown_topic, the rows behind it (its own
// key's included) arrive in commit order, and the slot confirms past them.
func TestApacheUnknownTopicDeadLettered(t *testing.T) {
	k := apacheBroker(t)
	const topic, missing, dlq = "apache.unknown.ok", "apache.unknown.missing", "apache.unknown.dlq"
	e := newApacheEnv(t, k, 3, 1, topic, dlq)
	e.createTable()
	start := time.Now()
	e.startRelay("OUTBOX_RELAY_DLQ_TOPIC="+dlq, "OUTBOX_RELAY_KAFKA_UNKNOWN_TOPIC_TIMEOUT=3s")

	lost := limitEvent(missing, "k-1", 1, "")
	first := []*event{limitEvent(topic, "k-1", 0, ""), lost, limitEvent(topic, "k-1", 2, ""), limitEvent(topic, "k-2", 3, "")}
	second := []*event{limitEvent(topic, "k-1", 4, ""), limitEvent(topic, "k-2", 5, "")}
	e.insert(first...)
	lastCommit := e.insert(second...)
	normal := without(append(append([]*event{}, first...), second...), lost)

	records := e.readEvents(time.Minute, exactTopic(topic), idSet(normal))
	dead := e.readEvents(time.Minute, exactTopic(dlq), idSet([]*event{lost}))
	e.waitConfirmed(30*time.Second, lastCommit)
	t.Logf("all rows recorded %s after the relay started", time.Since(start).Round(time.Millisecond))
	checkKeyOrder(t, records, seqByID(normal))
	checkOnlyDeadLetter(t, records, dead, lost, "unknown_topic")
	if h, _ := headerValues(dead[0]); !strings.Contains(h[hdrDLQError], missing) {
		t.Errorf("dead letter error %q does not name the topic %s", h[hdrDLQError], missing)
	}
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left after the slot confirmed past them, want 0", n)
	}
}
