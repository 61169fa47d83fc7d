package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestTooLargeRecordDeadLettered commits a record too large to send between
// normal rows of the same key, in the same transaction and in the next one:
// a payload over the producer's 1 MiB limit, a payload over the topic's
// max.message.bytes (the broker refuses the whole batch holding it, so the
// relay must find the culprit), or headers over 1 MiB. It must go to the
// dead-letter topic (reason message_too_large, its value replaced by a stub
// naming the row and its size), the rows around it must arrive in commit
// order per key, the slot must confirm past both commits and the row must be
// deleted; `dlq replay` must count the stub as not replayable and send
// nothing.
func TestTooLargeRecordDeadLettered(t *testing.T) {
	tests := []struct {
		name          string
		aggregateType string
		pad           int // bytes of padding in the large payload
		// topicMaxBytes, when set, creates the topic with that
		// max.message.bytes.
		topicMaxBytes int
		headerPad     int // bytes of padding in a header of the large row
	}{
		{name: "over the producer limit", aggregateType: "order", pad: 1<<20 + 1000},
		{name: "over the topic limit", aggregateType: "invoice", pad: 30_000, topicMaxBytes: 20_000},
		// The stub replaces the value; it must not matter what made the
		// record too large.
		{name: "headers over the producer limit", aggregateType: "order", headerPad: 1<<20 + 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			topic := "outbox.event." + tt.aggregateType
			if tt.topicMaxBytes > 0 {
				err := e.kafka.Cluster().CreateTopic(topic, 3, map[string]string{"max.message.bytes": fmt.Sprint(tt.topicMaxBytes)})
				if err != nil {
					t.Fatal(err)
				}
			}
			e.createTable()
			e.startRelay()

			ev := func(seq int, key, payload string) *event {
				return &event{aggregateType: tt.aggregateType, aggregateID: key, typ: "Placed", payload: jsonText(payload), seq: seq}
			}
			small := func(seq int, key string) *event { return ev(seq, key, fmt.Sprintf(`{"seq": %d}`, seq)) }
			big := ev(2, "k-1", fmt.Sprintf(`{"seq": 2, "pad": %q}`, strings.Repeat("x", tt.pad)))
			big.headers = map[string]string{"trace-id": "big-trace"}
			if tt.headerPad > 0 {
				big.headers["pad"] = strings.Repeat("h", tt.headerPad)
			}
			first := []*event{small(0, "k-1"), small(1, "k-2"), big, small(3, "k-1"), small(4, "k-2")}
			second := []*event{small(5, "k-1"), small(6, "k-2")}
			e.insert(first...)
			lastCommit := e.insert(second...)

			var normal []*event
			for _, x := range append(append([]*event{}, first...), second...) {
				if x != big {
					normal = append(normal, x)
				}
			}
			records := e.readEvents(time.Minute, exactTopic(topic), idSet(normal))
			dead := e.readEvents(30*time.Second, exactTopic(defaultDLQTopic), idSet([]*event{big}))
			e.waitConfirmed(30*time.Second, lastCommit)
			if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
				t.Errorf("%d rows left after the slot confirmed past them, want 0 (the dead-lettered row counts as delivered); %s",
					n, e.describeRows(append(first, second...)))
			}

			// The stub's row is kept whole, moved in the ack's transaction.
			if n := e.queryInt(`SELECT count(*) FROM public.outbox_dead_letter
				WHERE id::text = $1 AND payload = $2::jsonb AND headers IS NOT DISTINCT FROM $3::jsonb
				AND reason = $4 AND error <> '' AND lsn IS NOT NULL AND dead_lettered_at IS NOT NULL`,
				big.id, *big.storedPayload, headersJSON(big.headers), reasonTooLarge); n != 1 {
				t.Errorf("dead-letter table: %d whole copies of row %s, want 1 (%d rows in it)", n, big.id,
					e.queryInt("SELECT count(*) FROM public.outbox_dead_letter"))
			}

			checkKeyOrder(t, records, seqByID(normal))
			for _, r := range records {
				if id, _ := header(r, "id"); id == big.id {
					t.Errorf("the too-large record reached its topic: %s", describeRecord(r))
				}
			}
			if len(dead) != 1 {
				t.Fatalf("%d dead letters, want 1", len(dead))
			}
			want := big
			if tt.headerPad > 0 {
				// Headers too large to send cannot be kept; the rest of
				// the dead-letter contract holds.
				stripped := *big
				stripped.headers = nil
				want = &stripped
			}
			checkDeadLetter(t, dead[0], want, reasonTooLarge, true)
			var stub struct {
				Stub *bool  `json:"outbox_dlq_stub"`
				ID   string `json:"id"`
				Size *int   `json:"size"`
			}
			if err := json.Unmarshal(dead[0].Value, &stub); err != nil || stub.Stub == nil || !*stub.Stub || stub.Size == nil {
				t.Fatalf("dead-letter value %.200q (%d bytes), want the stub {\"outbox_dlq_stub\":true,\"id\":…,\"size\":N} (%v)",
					dead[0].Value, len(dead[0].Value), err)
			}
			if stub.ID != big.id || *stub.Size != len(*big.storedPayload) {
				t.Errorf("stub names id %q size %d, want %q and the payload's %d bytes", stub.ID, *stub.Size, big.id, len(*big.storedPayload))
			}

			// A stub is counted, never replayed.
			replay := e.replayJSON(nil, "replay")
			if replay.Replayed != 0 || sumCounts(replay.NotReplayable) != 1 {
				t.Errorf("dlq replay: replayed %d, not replayable %v; want the stub counted as not replayable", replay.Replayed, replay.NotReplayable)
			}
			if n := e.endOffsetsTotal(exactTopic(topic)); n != int64(len(normal)) {
				t.Errorf("%d records in %s after the replay, want %d: a stub must not be replayed", n, topic, len(normal))
			}
			// The row in the table is tried and refused again: it stays.
			if replay.Table == nil || replay.Table.Replayed != 0 || sumCounts(replay.Table.Failed) != 1 {
				t.Fatalf("dlq replay of the table: %+v, want the row refused again", replay.Table)
			}
			if n := e.queryInt("SELECT count(*) FROM public.outbox_dead_letter"); n != 1 {
				t.Fatalf("%d rows in the dead-letter table after a refused replay, want 1", n)
			}
			if tt.topicMaxBytes == 0 {
				return
			}
			// Once the limit was raised, replay sends the whole row and
			// removes it from the table.
			raiseMaxMessageBytes(t, e.kafka.Cluster().ListenAddrs(), topic, 1<<20)
			replay = e.replayJSON(nil, "replay")
			if replay.Table == nil || replay.Table.Replayed != 1 {
				t.Fatalf("dlq replay after raising the limit: %+v, want the row replayed", replay.Table)
			}
			if n := e.queryInt("SELECT count(*) FROM public.outbox_dead_letter"); n != 0 {
				t.Errorf("%d rows in the dead-letter table after the replay, want 0", n)
			}
			all := e.readEvents(time.Minute, exactTopic(topic), idSet(append(normal, big)))
			for _, r := range all {
				if id, _ := header(r, "id"); id == big.id && string(r.Value) != *big.storedPayload {
					t.Errorf("replayed record value is %d bytes, want the row's payload of %d", len(r.Value), len(*big.storedPayload))
				}
			}
		})
	}
}

// TestUndecodableRowDeadLettered commits a row whose headers are not an
// object of strings ({"a": 1}) between good rows of the same key: it must
// be dead-lettered with reason decode_error, the original key, id header
// and payload, and the rows behind it delivered in order; the slot must
// confirm past it and the row must be deleted.
func TestUndecodableRowDeadLettered(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	e.startRelay()

	ev := func(seq int, key string) *event {
		return &event{aggregateType: "customer", aggregateID: key, typ: "CustomerChanged",
			payload: jsonText(fmt.Sprintf(`{"seq": %d}`, seq)), seq: seq}
	}
	bad := ev(1, "c-1")
	first := []*event{ev(0, "c-1"), bad, ev(2, "c-1"), ev(3, "c-2")}
	second := []*event{ev(4, "c-1"), ev(5, "c-2")}
	e.insertWithRawHeaders(first, map[*event]string{bad: `{"a": 1}`})
	lastCommit := e.insert(second...)

	good := []*event{first[0], first[2], first[3], second[0], second[1]}
	records := e.readEvents(time.Minute, outboxTopics, idSet(good))
	dead := e.readEvents(30*time.Second, exactTopic(defaultDLQTopic), idSet([]*event{bad}))
	e.waitConfirmed(30*time.Second, lastCommit)
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left after the slot confirmed past them, want 0; %s", n, e.describeRows(append(first, second...)))
	}
	checkKeyOrder(t, records, seqByID(good))
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dead))
	}
	checkDeadLetter(t, dead[0], bad, reasonDecodeError, true)
	if string(dead[0].Value) != *bad.storedPayload {
		t.Errorf("dead-letter value %q, want the row's payload %q", dead[0].Value, *bad.storedPayload)
	}
	if h, _ := header(dead[0], hdrDLQError); !strings.Contains(strings.ToLower(h), "header") {
		t.Errorf("%s = %q, want it to say the headers column is at fault", hdrDLQError, h)
	}
}

// TestDeadLetterRefusedStopsRelay has the broker refuse a row's topic and
// the dead-letter topic too: the relay must stop with an error naming the
// dead-letter topic rather than skip the row, leave the row in the table
// and the slot before its commit; once the dead-letter topic takes records
// again, the next run must dead-letter the row and deliver the rows behind
// it.
func TestDeadLetterRefusedStopsRelay(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	refuse := func(topic string) *kfake.FaultHandle {
		h := e.kafka.Cluster().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: kerr.TopicAuthorizationFailed, Count: -1})
		t.Cleanup(h.Remove)
		return h
	}
	refuse("outbox.event.customer")
	dlqRefusal := refuse(defaultDLQTopic)
	r := e.startRelay()

	before := &event{aggregateType: "order", aggregateID: "o-1", typ: "OrderPlaced", payload: jsonText(`{"seq": 0}`), seq: 0}
	poison := &event{aggregateType: "customer", aggregateID: "c-1", typ: "CustomerChanged", payload: jsonText(`{"seq": 1}`), seq: 1}
	behind := &event{aggregateType: "order", aggregateID: "o-1", typ: "OrderPlaced", payload: jsonText(`{"seq": 2}`), seq: 2}
	e.insert(before)
	e.readEvents(30*time.Second, outboxTopics, idSet([]*event{before}))
	poisonCommit := e.insert(poison)
	lastCommit := e.insert(behind)

	code, ok := r.wait(30 * time.Second)
	if !ok {
		t.Fatalf("the relay still runs 30s after the dead-letter topic refused a record, want it to stop with an error")
	}
	r.signalled.Store(true) // its exit is what this test expects
	if code == 0 {
		t.Errorf("the relay exited 0 after the dead-letter topic refused a record, want a failure")
	}
	if errs := errorLines(r.stderr.String()); !strings.Contains(errs, defaultDLQTopic) {
		t.Errorf("the relay's errors do not name the dead-letter topic %s:\n%s", defaultDLQTopic, errs)
	}
	if s := e.slot(); s.confirmed >= poisonCommit {
		t.Errorf("slot confirmed at %s, past the commit %s of the row that reached neither its topic nor the dead-letter topic", s.confirmed, poisonCommit)
	}
	if n := e.queryInt("SELECT count(*) FROM public.outbox WHERE id = $1::uuid", poison.id); n != 1 {
		t.Errorf("the row that reached no topic was deleted (%d left), want it kept", n)
	}
	if n := e.endOffsetsTotal(exactTopic(defaultDLQTopic)); n != 0 {
		t.Fatalf("%d records in the refusing dead-letter topic", n)
	}

	dlqRefusal.Remove()
	e.startRelay()
	dead := e.readEvents(30*time.Second, exactTopic(defaultDLQTopic), idSet([]*event{poison}))
	e.readEvents(30*time.Second, outboxTopics, idSet([]*event{behind}))
	e.waitConfirmed(30*time.Second, lastCommit)
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left, want 0; %s", n, e.describeRows([]*event{before, poison, behind}))
	}
	checkDeadLetter(t, dead[0], poison, reasonTopicAuthFailed, true)
}

// TestInvalidTopicDeadLettered commits rows whose topic is not a name Kafka
// accepts — from the row's topic column, or from the template with the
// row's aggregate type — between good rows of the same key: they must be
// dead-lettered with reason invalid_topic and the topic they were meant for
// in outbox.dlq.original_topic, and the rows behind them delivered.
func TestInvalidTopicDeadLettered(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	e.startRelay()

	ev := func(seq int, aggregateType, topic string) *event {
		return &event{aggregateType: aggregateType, aggregateID: "o-1", typ: "OrderPlaced", topic: topic,
			payload: jsonText(fmt.Sprintf(`{"seq": %d}`, seq)), seq: seq}
	}
	badColumn, badTemplate := ev(1, "order", "bad topic!"), ev(2, "bad type!", "")
	events := []*event{ev(0, "order", ""), badColumn, badTemplate, ev(3, "order", "")}
	lastCommit := e.insert(events...)

	good := []*event{events[0], events[3]}
	records := e.readEvents(time.Minute, outboxTopics, idSet(good))
	dead := e.readEvents(30*time.Second, exactTopic(defaultDLQTopic), idSet([]*event{badColumn, badTemplate}))
	e.waitConfirmed(30*time.Second, lastCommit)
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left after the slot confirmed past them, want 0; %s", n, e.describeRows(events))
	}
	checkKeyOrder(t, records, seqByID(good))
	byID := eventsByID(events)
	for _, r := range dead {
		id, _ := header(r, "id")
		if byID[id] == nil {
			t.Errorf("unexpected dead letter %s", describeRecord(r))
			continue
		}
		checkDeadLetter(t, r, byID[id], reasonInvalidTopic, true)
	}
}

// headersJSON is the headers column's value for h (nil for SQL NULL).
func headersJSON(h map[string]string) *string {
	if h == nil {
		return nil
	}
	b, _ := json.Marshal(h)
	s := string(b)
	return &s
}

// raiseMaxMessageBytes sets topic's max.message.bytes.
func raiseMaxMessageBytes(t *testing.T, brokers []string, topic string, n int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrIncrementalAlterConfigsRequest()
	res := kmsg.NewIncrementalAlterConfigsRequestResource()
	res.ResourceType = kmsg.ConfigResourceTypeTopic
	res.ResourceName = topic
	c := kmsg.NewIncrementalAlterConfigsRequestResourceConfig()
	c.Name, c.Value = "max.message.bytes", kmsg.StringPtr(fmt.Sprint(n))
	res.Configs = append(res.Configs, c)
	req.Resources = append(req.Resources, res)
	resp, err := req.RequestWith(context.Background(), cl)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Resources {
		if err := kerr.ErrorForCode(r.ErrorCode); err != nil {
			t.Fatalf("alter %s: %v", topic, err)
		}
	}
}
