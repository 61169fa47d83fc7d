package dlq_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/outbox-relay/outbox-relay/dlq"
	"github.com/outbox-relay/outbox-relay/internal/devenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

const dlqTopic = "outbox.dlq"

// originals matches the topics the test's dead letters were meant for.
var originals = []string{`^orders$`, `^payments$`}

// deadLetter is a record as the relay dead-letters it.
type deadLetter struct {
	id, reason, topic, key, value string
	// replayedFrom, when set, is an outbox.replayed_from header left by an
	// earlier replay of the same row.
	replayedFrom string
}

// secretValue is in every payload and in a row header: nothing listed or
// printed may contain it.
const secretValue = "PAYLOAD-SECRET"

// sampleDeadLetters are seven dead letters: three invalid_record (two with
// the same key), a rejected one, a too-large one (stub value), an
// undecodable one that names no topic and one whose topic name is invalid.
func sampleDeadLetters() []deadLetter {
	return []deadLetter{
		{id: "r1", reason: outbox.ReasonInvalidRecord, topic: "orders", key: "k1", value: `{"n":1,"s":"` + secretValue + `"}`},
		{id: "r2", reason: outbox.ReasonRejected, topic: "orders", key: "k2", value: `{"n":2,"s":"` + secretValue + `"}`},
		{id: "r3", reason: outbox.ReasonInvalidRecord, topic: "payments", key: "k3", value: `{"n":3,"s":"` + secretValue + `"}`,
			replayedFrom: "outbox.dlq/9/99"},
		{id: "r4", reason: outbox.ReasonMessageTooLarge, topic: "orders", key: "k4", value: `{"outbox_dlq_stub":true,"id":"r4","size":2000000}`},
		{id: "r5", reason: outbox.ReasonDecodeError, topic: "", key: "k5", value: `{"n":5,"s":"` + secretValue + `"}`},
		{id: "r6", reason: outbox.ReasonInvalidRecord, topic: "orders", key: "k1", value: `{"n":6,"s":"` + secretValue + `"}`},
		{id: "r7", reason: outbox.ReasonInvalidTopic, topic: "bad topic!", key: "k7", value: `{"n":7,"s":"` + secretValue + `"}`},
	}
}

func startKafka(t *testing.T, opts ...kfake.Opt) *devenv.Kafka {
	t.Helper()
	k, err := devenv.StartKafka(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	return k
}

// produce writes the dead letters to the dead-letter topic as the relay
// would, one second apart, and returns them with their partitions and
// offsets.
func produce(t *testing.T, ctx context.Context, brokers []string, opts []kgo.Opt, dls ...deadLetter) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...), kgo.AllowAutoTopicCreation()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	var records []*kgo.Record
	for i, d := range dls {
		headers := []kgo.RecordHeader{
			{Key: outbox.HeaderID, Value: []byte(d.id)},
			{Key: outbox.HeaderType, Value: []byte("created")},
			{Key: "traceparent", Value: []byte("trace-" + d.id + "-" + secretValue)},
		}
		if d.replayedFrom != "" {
			headers = append(headers, kgo.RecordHeader{Key: outbox.HeaderReplayedFrom, Value: []byte(d.replayedFrom)})
		}
		headers = append(headers,
			kgo.RecordHeader{Key: outbox.HeaderDLQReason, Value: []byte(d.reason)},
			kgo.RecordHeader{Key: outbox.HeaderDLQError, Value: []byte("error of " + d.id + "\nsecond line")},
			kgo.RecordHeader{Key: outbox.HeaderDLQOriginalTopic, Value: []byte(d.topic)},
			kgo.RecordHeader{Key: outbox.HeaderDLQLSN, Value: []byte("0/16B3748")})
		records = append(records, &kgo.Record{
			Topic:     dlqTopic,
			Key:       []byte(d.key),
			Value:     []byte(d.value),
			Headers:   headers,
			Timestamp: base.Add(time.Duration(i) * time.Second),
		})
	}
	if err := cl.ProduceSync(ctx, records...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	return records
}

func config(k *devenv.Kafka) dlq.Config {
	return dlq.Config{Brokers: k.Addrs(), Topic: dlqTopic}
}

// countOriginals returns how many records the original topics hold.
func countOriginals(t *testing.T, ctx context.Context, brokers []string) int64 {
	t.Helper()
	ends, err := devenv.EndOffsets(ctx, brokers, originals)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, end := range ends {
		n += end
	}
	return n
}

// readOriginals reads the original topics until they hold n records.
func readOriginals(t *testing.T, ctx context.Context, brokers []string, n int) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	got, err := devenv.ReadRecords(ctx, brokers, originals, func(got []*kgo.Record) bool { return len(got) >= n })
	if err != nil {
		t.Fatalf("read %d records from the original topics: %v (read %d)", n, err, len(got))
	}
	return got
}

func headerValues(r *kgo.Record, key string) []string {
	var values []string
	for _, h := range r.Headers {
		if h.Key == key {
			values = append(values, string(h.Value))
		}
	}
	return values
}

func TestList(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := startKafka(t)

	listing, err := dlq.List(ctx, config(k), 20)
	if err != nil {
		t.Fatal(err)
	}
	if listing.Exists || listing.Total != 0 {
		t.Errorf("List of a missing topic: exists, total = %v, %d, want false, 0", listing.Exists, listing.Total)
	}
	if ends, err := devenv.EndOffsets(ctx, k.Addrs(), []string{`^outbox\.dlq$`}); err != nil || len(ends) != 0 {
		t.Errorf("after List of a missing topic: partitions %v (err %v), want the topic still missing", ends, err)
	}

	produce(t, ctx, k.Addrs(), nil, sampleDeadLetters()...)
	listing, err = dlq.List(ctx, config(k), 3)
	if err != nil {
		t.Fatal(err)
	}
	if !listing.Exists || listing.Total != 7 {
		t.Errorf("exists, total = %v, %d, want true, 7", listing.Exists, listing.Total)
	}
	wantCounts := map[string]int{
		outbox.ReasonInvalidRecord: 3, outbox.ReasonRejected: 1, outbox.ReasonMessageTooLarge: 1, outbox.ReasonDecodeError: 1,
		outbox.ReasonInvalidTopic: 1,
	}
	if fmt.Sprint(listing.ByReason) != fmt.Sprint(wantCounts) {
		t.Errorf("by reason = %v, want %v", listing.ByReason, wantCounts)
	}
	var ids []string
	for _, e := range listing.Newest {
		ids = append(ids, e.ID)
	}
	if want := []string{"r7", "r6", "r5"}; !slices.Equal(ids, want) {
		t.Errorf("newest ids = %v, want %v", ids, want)
	}
	if e := listing.Newest[1]; e.Reason != outbox.ReasonInvalidRecord || e.OriginalTopic != "orders" || e.Error != "error of r6\nsecond line" {
		t.Errorf("second newest entry = %+v, want reason, original topic and error of r6", e)
	}

	// Nothing but the id and the outbox.dlq.* headers may come out.
	asJSON, err := json.Marshal(listing)
	if err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{string(asJSON), fmt.Sprintf("%+v", listing)} {
		if strings.Contains(text, secretValue) || strings.Contains(text, `"n":`) {
			t.Errorf("listing shows a payload or a row header: %s", text)
		}
	}

	all, err := dlq.List(ctx, config(k), 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Newest) != 7 {
		t.Errorf("List with room for 100: %d entries, want all 7", len(all.Newest))
	}
}

func TestReplay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k := startKafka(t)
	cfg := config(k)
	dead := produce(t, ctx, k.Addrs(), nil, sampleDeadLetters()...)
	byID := map[string]*kgo.Record{}
	for _, r := range dead {
		byID[headerValues(r, outbox.HeaderID)[0]] = r
	}

	t.Run("dry run publishes and commits nothing", func(t *testing.T) {
		var decisions []dlq.Decision
		res, err := dlq.Replay(ctx, cfg, dlq.ReplayOptions{
			Reason: outbox.ReasonInvalidRecord, DryRun: true,
			OnRecord: func(d dlq.Decision) { decisions = append(decisions, d) },
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.Replayed != 3 || len(decisions) != 7 {
			t.Errorf("dry run: replayed %d, decisions %d, want 3 of 7", res.Replayed, len(decisions))
		}
		if n := countOriginals(t, ctx, k.Addrs()); n != 0 {
			t.Errorf("dry run wrote %d records to the original topics, want 0", n)
		}
	})

	t.Run("replay one reason", func(t *testing.T) {
		res, err := dlq.Replay(ctx, cfg, dlq.ReplayOptions{Reason: outbox.ReasonInvalidRecord})
		if err != nil {
			t.Fatal(err)
		}
		if res.Group != dlq.DefaultGroup+"."+outbox.ReasonInvalidRecord {
			t.Errorf("group = %q, want the reason's own", res.Group)
		}
		wantSkipped := map[string]int{outbox.ReasonRejected: 1, outbox.ReasonMessageTooLarge: 1, outbox.ReasonDecodeError: 1,
			outbox.ReasonInvalidTopic: 1}
		if res.Replayed != 3 || fmt.Sprint(res.Skipped) != fmt.Sprint(wantSkipped) || len(res.NotReplayable) != 0 {
			t.Errorf("replayed %d, skipped %v, not replayable %v, want 3 (all invalid_record, after a dry run that committed nothing), %v, none",
				res.Replayed, res.Skipped, res.NotReplayable, wantSkipped)
		}

		got := readOriginals(t, ctx, k.Addrs(), 3)
		partitioner := kgo.StickyKeyPartitioner(nil)
		var orderIDs []string
		for _, r := range got {
			ids := headerValues(r, outbox.HeaderID)
			if len(ids) != 1 {
				t.Fatalf("record in %s has id headers %v, want one", r.Topic, ids)
			}
			src := byID[ids[0]]
			if r.Topic != header(src, outbox.HeaderDLQOriginalTopic) || string(r.Key) != string(src.Key) || string(r.Value) != string(src.Value) {
				t.Errorf("%s: replayed to %s key %q value %q, want %s key %q value %q", ids[0],
					r.Topic, r.Key, r.Value, header(src, outbox.HeaderDLQOriginalTopic), src.Key, src.Value)
			}
			var keys []string
			for _, h := range r.Headers {
				keys = append(keys, h.Key)
				if strings.HasPrefix(h.Key, "outbox.dlq.") {
					t.Errorf("%s: replayed with header %s, want no outbox.dlq.* header", ids[0], h.Key)
				}
			}
			if want := []string{"id", "type", "traceparent", outbox.HeaderReplayedFrom}; !slices.Equal(keys, want) {
				t.Errorf("%s: header keys %v, want %v", ids[0], keys, want)
			}
			if got, want := headerValues(r, "traceparent"), "trace-"+ids[0]+"-"+secretValue; len(got) != 1 || got[0] != want {
				t.Errorf("%s: traceparent = %v, want %q", ids[0], got, want)
			}
			want := fmt.Sprintf("%s/%d/%d", dlqTopic, src.Partition, src.Offset)
			if from := headerValues(r, outbox.HeaderReplayedFrom); len(from) != 1 || from[0] != want {
				t.Errorf("%s: %s = %v, want [%s]", ids[0], outbox.HeaderReplayedFrom, from, want)
			}
			// The partition the relay would choose: murmur2 of the key.
			if p := partitioner.ForTopic(r.Topic).Partition(r, 3); p != int(r.Partition) {
				t.Errorf("%s: partition %d, want %d (murmur2 of key %q)", ids[0], r.Partition, p, r.Key)
			}
			if r.Topic == "orders" {
				orderIDs = append(orderIDs, ids[0])
			}
		}
		if want := []string{"r1", "r6"}; !slices.Equal(orderIDs, want) {
			t.Errorf("orders (one key) in order %v, want %v", orderIDs, want)
		}
	})

	t.Run("replay again replays nothing", func(t *testing.T) {
		before := countOriginals(t, ctx, k.Addrs())
		res, err := dlq.Replay(ctx, cfg, dlq.ReplayOptions{Reason: outbox.ReasonInvalidRecord})
		if err != nil {
			t.Fatal(err)
		}
		if res.Replayed != 0 || len(res.Skipped) != 0 {
			t.Errorf("second replay: replayed %d, skipped %v, want nothing (the group is at the end)", res.Replayed, res.Skipped)
		}
		if after := countOriginals(t, ctx, k.Addrs()); after != before {
			t.Errorf("original topics hold %d records after the second replay, want %d", after, before)
		}
	})

	t.Run("every reason, then only what came since", func(t *testing.T) {
		before := countOriginals(t, ctx, k.Addrs())
		res, err := dlq.Replay(ctx, cfg, dlq.ReplayOptions{})
		if err != nil {
			t.Fatal(err)
		}
		wantNot := map[string]int{dlq.NotReplayableStub: 1, dlq.NotReplayableNoTopic: 1, dlq.NotReplayableBadTopic: 1}
		if res.Group != dlq.DefaultGroup || res.Replayed != 4 || fmt.Sprint(res.NotReplayable) != fmt.Sprint(wantNot) {
			t.Errorf("group %q replayed %d, not replayable %v, want %q, 4, %v", res.Group, res.Replayed, res.NotReplayable, dlq.DefaultGroup, wantNot)
		}
		if after := countOriginals(t, ctx, k.Addrs()); after != before+4 {
			t.Errorf("original topics grew by %d, want 4", after-before)
		}

		produce(t, ctx, k.Addrs(), nil,
			deadLetter{id: "r8", reason: outbox.ReasonRejected, topic: "orders", key: "k8", value: "{}"},
			deadLetter{id: "r9", reason: outbox.ReasonRejected, topic: "payments", key: "k9", value: "{}"})
		res, err = dlq.Replay(ctx, cfg, dlq.ReplayOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Replayed != 2 || res.ReplayedByReason[outbox.ReasonRejected] != 2 {
			t.Errorf("replay after two new dead letters: replayed %d (%v), want the 2 new ones", res.Replayed, res.ReplayedByReason)
		}
	})
}

// TestReplayLimitResumes checks that replays cut by --limit together send
// every record exactly once.
func TestReplayLimitResumes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k := startKafka(t)
	cfg := config(k)
	var dls []deadLetter
	for i := range 25 {
		dls = append(dls, deadLetter{id: fmt.Sprintf("r%02d", i), reason: outbox.ReasonRejected,
			topic: []string{"orders", "payments"}[i%2], key: fmt.Sprintf("k%d", i%5), value: fmt.Sprint(i)})
	}
	produce(t, ctx, k.Addrs(), nil, dls...)

	total := 0
	for run := 1; ; run++ {
		res, err := dlq.Replay(ctx, cfg, dlq.ReplayOptions{Limit: 7})
		if err != nil {
			t.Fatal(err)
		}
		total += res.Replayed
		if res.Replayed > 7 {
			t.Fatalf("run %d replayed %d, want at most the limit of 7", run, res.Replayed)
		}
		if !res.LimitReached {
			break
		}
		if run > 10 {
			t.Fatalf("still not done after %d runs of 7", run)
		}
	}
	if total != 25 {
		t.Errorf("runs replayed %d in all, want 25", total)
	}
	got := readOriginals(t, ctx, k.Addrs(), 25)
	seen := map[string]int{}
	for _, r := range got {
		seen[headerValues(r, outbox.HeaderID)[0]]++
	}
	for _, d := range dls {
		if seen[d.id] != 1 {
			t.Errorf("%s reached its topic %d times, want once", d.id, seen[d.id])
		}
	}
	if n := countOriginals(t, ctx, k.Addrs()); n != 25 {
		t.Errorf("original topics hold %d records, want 25", n)
	}
}

// TestReplayCommitsOnlyAcked makes the broker refuse one original topic: the
// replay fails without committing, and once the broker takes it again a
// new replay delivers every record.
func TestReplayCommitsOnlyAcked(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k := startKafka(t)
	cfg := config(k)
	produce(t, ctx, k.Addrs(), nil, sampleDeadLetters()...)

	fault := k.Cluster().Fault(kfake.Fault{
		Keys:  []kmsg.Key{kmsg.Produce},
		Topic: "payments",
		Err:   kerr.TopicAuthorizationFailed,
		Count: -1,
	})
	res, err := dlq.Replay(ctx, cfg, dlq.ReplayOptions{Reason: outbox.ReasonInvalidRecord})
	if err == nil {
		t.Fatalf("replay while payments is refused: err = nil (replayed %d), want an error", res.Replayed)
	}
	if res.Replayed != 0 {
		t.Errorf("failed replay counts %d replayed, want 0 (nothing committed)", res.Replayed)
	}
	fault.Remove()

	res, err = dlq.Replay(ctx, cfg, dlq.ReplayOptions{Reason: outbox.ReasonInvalidRecord})
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 3 {
		t.Errorf("replay after the refusal: replayed %d, want all 3 again (the failed batch was not committed)", res.Replayed)
	}
	got := readOriginals(t, ctx, k.Addrs(), 3)
	seen := map[string]bool{}
	for _, r := range got {
		seen[headerValues(r, outbox.HeaderID)[0]] = true
	}
	for _, id := range []string{"r1", "r3", "r6"} {
		if !seen[id] {
			t.Errorf("%s never reached its topic", id)
		}
	}
}

// TestReplayRefusesBusyGroup checks that a replay does not share its group
// with a running consumer.
func TestReplayRefusesBusyGroup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := startKafka(t)
	produce(t, ctx, k.Addrs(), nil, sampleDeadLetters()...)

	member, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs()...), kgo.ConsumerGroup("busy"), kgo.ConsumeTopics(dlqTopic),
		kgo.DisableAutoCommit())
	if err != nil {
		t.Fatal(err)
	}
	defer member.Close()
	// Poll until the member has joined (it received records).
	for {
		fetches := member.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatal("the other member never joined")
		}
		if fetches.NumRecords() > 0 {
			break
		}
	}
	_, err = dlq.Replay(ctx, config(k), dlq.ReplayOptions{Group: "busy"})
	if !errors.Is(err, dlq.ErrGroupBusy) {
		t.Errorf("replay in a group with a member: err = %v, want ErrGroupBusy", err)
	}
}

// TestSASL runs List and Replay against a broker that requires
// SCRAM-SHA-256, which both clients (franz-go consuming, kafka-go
// producing) must pass.
func TestSASL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := startKafka(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "relay", "s3cret"))
	auth := []kgo.Opt{kgo.SASL(scramAuth("relay", "s3cret"))}
	produce(t, ctx, k.Addrs(), auth, sampleDeadLetters()...)

	cfg := config(k)
	cfg.SASLMechanism, cfg.SASLUser, cfg.SASLPassword = "SCRAM-SHA-256", "relay", "s3cret"
	listing, err := dlq.List(ctx, cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	if listing.Total != 7 {
		t.Errorf("total = %d, want 7", listing.Total)
	}
	res, err := dlq.Replay(ctx, cfg, dlq.ReplayOptions{Reason: outbox.ReasonInvalidRecord})
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 3 {
		t.Errorf("replayed %d, want 3", res.Replayed)
	}

	wrong := cfg
	wrong.SASLPassword = "wrong"
	// kfake drops the connection on a failed login, which the client
	// retries (a real broker answers SASL_AUTHENTICATION_FAILED): the error
	// comes when the context ends.
	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort()
	if _, err := dlq.List(short, wrong, 1); err == nil {
		t.Errorf("List with a wrong password: err = nil, want an error")
	} else {
		t.Logf("wrong password: %v", err)
	}
}

func header(r *kgo.Record, key string) string {
	values := headerValues(r, key)
	if len(values) == 0 {
		return ""
	}
	return values[len(values)-1]
}

func scramAuth(user, pass string) sasl.Mechanism {
	return scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()
}

// TestReplayStopsAtStartEnd dead-letters a record while a replay runs: the
// replay stops at the end the topic had when it started, and the next
// replay takes the new record.
func TestReplayStopsAtStartEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := startKafka(t)
	produce(t, ctx, k.Addrs(), nil, sampleDeadLetters()...)

	late := false
	res, err := dlq.Replay(ctx, config(k), dlq.ReplayOptions{OnRecord: func(dlq.Decision) {
		if !late {
			late = true
			for i := range 3 { // on every partition, most likely
				produce(t, ctx, k.Addrs(), nil, deadLetter{id: fmt.Sprintf("late%d", i), reason: outbox.ReasonRejected,
					topic: "orders", key: fmt.Sprintf("late%d", i), value: "{}"})
			}
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 4 {
		t.Errorf("replayed %d, want the 4 replayable records there were at the start", res.Replayed)
	}
	res, err = dlq.Replay(ctx, config(k), dlq.ReplayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 3 || res.ReplayedByReason[outbox.ReasonRejected] != 3 {
		t.Errorf("next replay: replayed %d (%v), want the 3 late records", res.Replayed, res.ReplayedByReason)
	}
}
