package tests

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestRejectedTopicReplayRoundTrip has the broker refuse one topic
// (TOPIC_AUTHORIZATION_FAILED on every produce to it): its rows must be
// dead-lettered with reason topic_authorization_failed while the other
// topics flow and the slot advances. `dlq ls` must count them by reason
// without printing payloads or header values. Once the broker takes the
// topic again, `dlq replay --reason topic_authorization_failed` must deliver
// them to their original topic, in order, as the relay would have (key,
// partition, value, id/type/row headers) plus outbox.replayed_from and no
// outbox.dlq.* header, leaving the other reason's dead letter alone; a
// second replay must send nothing.
func TestRejectedTopicReplayRoundTrip(t *testing.T) {
	const (
		dlqTopic = "dead.letters"
		rejected = "outbox.event.customer"
	)
	e := newEnv(t)
	e.createTable()
	e.startRelay("OUTBOX_RELAY_DLQ_TOPIC=" + dlqTopic)
	dlqEnv := []string{"OUTBOX_RELAY_DLQ_TOPIC=" + dlqTopic}

	refusal := e.kafka.Cluster().Fault(kfake.Fault{
		Keys: []kmsg.Key{kmsg.Produce}, Topic: rejected, Err: kerr.TopicAuthorizationFailed, Count: -1,
	})
	t.Cleanup(refusal.Remove)

	var all []*event
	next := func(typ, key string) *event {
		seq := len(all)
		ev := &event{aggregateType: typ, aggregateID: key, typ: typ + "Changed", seq: seq,
			payload: jsonText(fmt.Sprintf(`{"seq": %d, "note": "payload-canary-%d"}`, seq, seq)),
			headers: map[string]string{"trace-id": fmt.Sprintf("header-canary-%d", seq)}}
		all = append(all, ev)
		return ev
	}
	e.insert(next("customer", "c-1"), next("order", "o-1"), next("customer", "c-2"), next("order", "o-2"))
	e.insert(next("order", "o-1"), next("customer", "c-1"), next("customer", "c-1"))
	// A dead letter of another reason, which a filtered replay must skip.
	undecodable := next("order", "o-9")
	undecodable.headers = nil // replaced by the raw {"a": 1}
	e.insertWithRawHeaders([]*event{undecodable}, map[*event]string{undecodable: `{"a": 1}`})
	lastCommit := e.insert(next("order", "o-2"))

	// Orders reach their topic; customers and the undecodable order are
	// dead-lettered.
	var delivered, deadCustomers []*event
	for _, ev := range all {
		switch {
		case ev == undecodable:
		case ev.aggregateType == "customer":
			deadCustomers = append(deadCustomers, ev)
		default:
			delivered = append(delivered, ev)
		}
	}

	dlq := exactTopic(dlqTopic)
	e.readEvents(time.Minute, outboxTopics, idSet(delivered))
	dead := e.readEvents(30*time.Second, dlq, idSet(append(append([]*event{}, deadCustomers...), undecodable)))
	e.waitConfirmed(30*time.Second, lastCommit)
	if n := e.queryInt("SELECT count(*) FROM public.outbox"); n != 0 {
		t.Errorf("%d rows left after the slot confirmed past them, want 0; %s", n, e.describeRows(all))
	}
	if n := e.endOffsetsTotal(exactTopic(rejected)); n != 0 {
		t.Fatalf("%d records in the refused topic %s", n, rejected)
	}
	if refusal.Hits() == 0 {
		t.Fatalf("the broker refused no produce request to %s: the test proves nothing", rejected)
	}
	byID := eventsByID(all)
	for _, r := range dead {
		id, _ := header(r, "id")
		ev := byID[id]
		if ev == nil {
			t.Errorf("unexpected dead letter %s", describeRecord(r))
			continue
		}
		reason := reasonTopicAuthFailed
		if ev == undecodable {
			reason = reasonDecodeError
		}
		checkDeadLetter(t, r, ev, reason, true)
		if string(r.Value) != *ev.storedPayload {
			t.Errorf("dead letter of event %d: value %q, want the payload %q", ev.seq, r.Value, *ev.storedPayload)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// dlq ls: counts by reason and the newest records, no payloads.
	code, stdout, stderr := e.runDLQ(dlqEnv, "ls", "--limit", "50")
	if code != 0 {
		t.Fatalf("dlq ls exited %d; stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for reason, n := range map[string]int{reasonTopicAuthFailed: len(deadCustomers), reasonDecodeError: 1} {
		if !regexp.MustCompile(`(?m)^` + reason + `\s+` + fmt.Sprint(n) + `\s*$`).MatchString(stdout) {
			t.Errorf("dlq ls does not count %d records of reason %s; output:\n%s", n, reason, stdout)
		}
	}
	for _, ev := range append(append([]*event{}, deadCustomers...), undecodable) {
		if !strings.Contains(stdout, ev.id) {
			t.Errorf("dlq ls does not list the dead letter of row %s; output:\n%s", ev.id, stdout)
		}
	}
	for _, secret := range []string{"payload-canary-", "header-canary-"} {
		if strings.Contains(stdout+stderr, secret) {
			t.Errorf("dlq ls printed a payload or header value (%q); output:\n%s%s", secret, stdout, stderr)
		}
	}

	// A dry run (while the topic is still refused) commits nothing: the
	// replays below must still find every record.
	replay := []string{"replay", "--reason", reasonTopicAuthFailed}
	code, stdout, stderr = e.runDLQ(dlqEnv, append(replay, "--dry-run")...)
	if code != 0 {
		t.Fatalf("dlq replay --dry-run exited %d; stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if got := len(regexp.MustCompile(`(?m)^would replay `).FindAllString(stdout, -1)); got != len(deadCustomers) {
		t.Errorf("dlq replay --dry-run announced %d records, want %d; output:\n%s", got, len(deadCustomers), stdout)
	}

	refusal.Remove()
	// A replay stopped by --limit resumes where it stopped.
	first := e.replayJSON(dlqEnv, append(replay, "--limit", "2")...)
	if first.Replayed != 2 || !first.LimitReached {
		t.Errorf("dlq replay --limit 2: replayed %d, limit reached %v; want 2 and true", first.Replayed, first.LimitReached)
	}
	rest := e.replayJSON(dlqEnv, replay...)
	if got := first.Replayed + rest.Replayed; got != len(deadCustomers) || rest.LimitReached {
		t.Errorf("dlq replay --limit 2, then without: replayed %d+%d, want %d in all", first.Replayed, rest.Replayed, len(deadCustomers))
	}
	if skipped := mergeCounts(first.Skipped, rest.Skipped); !maps.Equal(skipped, map[string]int{reasonDecodeError: 1}) {
		t.Errorf("dlq replay skipped %v, want the decode_error record skipped once", skipped)
	}

	replayed := e.readEvents(30*time.Second, exactTopic(rejected), idSet(deadCustomers))
	deadByID := make(map[string]*kgo.Record)
	for _, r := range dead {
		id, _ := header(r, "id")
		deadByID[id] = r
	}
	if len(replayed) != len(deadCustomers) {
		t.Errorf("%d records in %s after the replay, want %d", len(replayed), rejected, len(deadCustomers))
	}
	for _, r := range replayed {
		id, _ := header(r, "id")
		ev, src := byID[id], deadByID[id]
		if ev == nil || src == nil {
			t.Errorf("replayed record for no dead letter: %s", describeRecord(r))
			continue
		}
		from, ok := header(r, hdrReplayedFrom)
		if want := fmt.Sprintf("%s/%d/%d", dlqTopic, src.Partition, src.Offset); !ok || from != want {
			t.Errorf("event %d replayed with %s = %q (present %v), want %q", ev.seq, hdrReplayedFrom, from, ok, want)
		}
		plain := *r
		plain.Headers = nil
		for _, h := range r.Headers {
			if strings.HasPrefix(h.Key, dlqHeaderPrefix) {
				t.Errorf("event %d replayed with header %s=%q, want no outbox.dlq.* header", ev.seq, h.Key, h.Value)
			}
			if h.Key != hdrReplayedFrom {
				plain.Headers = append(plain.Headers, h)
			}
		}
		for _, p := range recordProblems(&plain, ev) {
			t.Errorf("event %d replayed: %s", ev.seq, p)
		}
	}
	checkKeyOrder(t, replayed, seqByID(deadCustomers))

	// The group committed its progress: another replay sends nothing.
	if again := e.replayJSON(dlqEnv, replay...); again.Replayed != 0 {
		t.Errorf("a replay after everything was replayed sent %d records, want 0", again.Replayed)
	}
	if n := e.endOffsetsTotal(exactTopic(rejected)); n != int64(len(deadCustomers)) {
		t.Errorf("%d records in %s after another replay, want still %d", n, rejected, len(deadCustomers))
	}
}

// replayResult is the JSON summary of `dlq replay --json`.
type replayResult struct {
	Replayed      int            `json:"replayed"`
	Skipped       map[string]int `json:"skipped"`
	NotReplayable map[string]int `json:"not_replayable"`
	LimitReached  bool           `json:"limit_reached"`
	Table         *struct {
		Replayed int            `json:"replayed"`
		Failed   map[string]int `json:"failed"`
	} `json:"table"`
}

func sumCounts(counts map[string]int) int {
	n := 0
	for _, c := range counts {
		n += c
	}
	return n
}

// replayJSON runs `dlq replay --json args…`, requires success and returns
// its summary.
func (e *testEnv) replayJSON(extra []string, args ...string) replayResult {
	e.t.Helper()
	code, stdout, stderr := e.runDLQ(extra, append(args, "--json")...)
	if code != 0 {
		e.t.Fatalf("dlq %s exited %d; stdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	var r replayResult
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		e.t.Fatalf("dlq %s --json printed %q: %v", strings.Join(args, " "), stdout, err)
	}
	return r
}

func mergeCounts(a, b map[string]int) map[string]int {
	m := maps.Clone(a)
	if m == nil {
		m = map[string]int{}
	}
	for k, v := range b {
		m[k] += v
	}
	return m
}
