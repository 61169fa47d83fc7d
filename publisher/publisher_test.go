package publisher

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestRecordFormat(t *testing.T) {
	c := newCluster(t)
	p := newPublisher(t, testConfig(c), zerolog.Nop())

	events := []outbox.Event{
		{ // template topic, row headers after id and type, in row order
			ID: []byte("1"), AggregateType: []byte("order"), AggregateID: []byte("o-1"), Type: []byte("created"),
			Payload: []byte(`{"total":3}`),
			Headers: []outbox.Header{{Key: "z-first", Value: []byte("1")}, {Key: "a-second", Value: []byte("2")}, {Key: "id", Value: []byte("dup")}},
		},
		{ // NULL payload stays a null value
			ID: []byte("2"), AggregateType: []byte("order"), AggregateID: []byte("o-1"), Type: []byte("deleted"),
		},
		{ // empty payload stays empty, not null
			ID: []byte("3"), AggregateType: []byte("order"), AggregateID: []byte("o-2"), Type: []byte("touched"), Payload: []byte{},
		},
		{ // per-row topic override wins over the template
			ID: []byte("4"), AggregateType: []byte("order"), AggregateID: []byte("o-3"), Type: []byte("moved"),
			Payload: []byte("raw bytes \x00\xff"), Topic: []byte("custom.topic"),
		},
		{ // another aggregate type, another topic
			ID: []byte("5"), AggregateType: []byte("Customer_v2"), AggregateID: []byte("c-1"), Type: []byte("created"),
			Payload: []byte(`{}`),
		},
	}
	failures, err := p.Publish(context.Background(), events)
	if err != nil || len(failures) != 0 {
		t.Fatalf("Publish: failures at %v, err %v; want none, nil", failureIndexes(failures), err)
	}

	type hdr struct{ key, value string }
	type record struct {
		topic, key string
		value      []byte
		headers    []hdr
	}
	wantByID := map[string]record{
		"1": {"outbox.event.order", "o-1", []byte(`{"total":3}`), []hdr{{"id", "1"}, {"type", "created"}, {"z-first", "1"}, {"a-second", "2"}, {"id", "dup"}}},
		"2": {"outbox.event.order", "o-1", nil, []hdr{{"id", "2"}, {"type", "deleted"}}},
		"3": {"outbox.event.order", "o-2", []byte{}, []hdr{{"id", "3"}, {"type", "touched"}}},
		"4": {"custom.topic", "o-3", []byte("raw bytes \x00\xff"), []hdr{{"id", "4"}, {"type", "moved"}}},
		"5": {"outbox.event.Customer_v2", "c-1", []byte(`{}`), []hdr{{"id", "5"}, {"type", "created"}}},
	}
	var got []*kgo.Record
	for _, topic := range []string{"outbox.event.order", "custom.topic", "outbox.event.Customer_v2"} {
		got = append(got, readTopic(t, c, topic)...)
	}
	if len(got) != len(wantByID) {
		t.Fatalf("read %d records, want %d", len(got), len(wantByID))
	}
	for _, r := range got {
		id := header(r, "id")
		want, ok := wantByID[id]
		if !ok {
			t.Errorf("unexpected record with id %q", id)
			continue
		}
		if r.Topic != want.topic {
			t.Errorf("record %s: topic = %q, want %q", id, r.Topic, want.topic)
		}
		if string(r.Key) != want.key {
			t.Errorf("record %s: key = %q, want %q", id, r.Key, want.key)
		}
		if (r.Value == nil) != (want.value == nil) || string(r.Value) != string(want.value) {
			t.Errorf("record %s: value = %q (nil %t), want %q (nil %t)", id, r.Value, r.Value == nil, want.value, want.value == nil)
		}
		var headers []hdr
		for _, h := range r.Headers {
			headers = append(headers, hdr{h.Key, string(h.Value)})
		}
		if fmt.Sprint(headers) != fmt.Sprint(want.headers) {
			t.Errorf("record %s: headers = %v, want %v", id, headers, want.headers)
		}
	}
	// Same key, same topic: o-1's records in commit order.
	var o1 []string
	for _, r := range got {
		if string(r.Key) == "o-1" {
			o1 = append(o1, header(r, "id"))
		}
	}
	if fmt.Sprint(o1) != "[1 2]" {
		t.Errorf("records of key o-1 = %v, want [1 2]", o1)
	}
}

// TestPartitionIsJavaMurmur2 checks the partition of every record against
// franz-go's own implementation of the Java client's default partitioner.
func TestPartitionIsJavaMurmur2(t *testing.T) {
	c := newCluster(t)
	const topic, partitions = "outbox.event.murmur", 7
	createTopic(t, c, topic, partitions, nil)
	p := newPublisher(t, testConfig(c), zerolog.Nop())

	events := makeEvents(600, 600, 20, "murmur")
	for i := range events {
		// Keys of many lengths, so every tail case of murmur2 is hit.
		events[i].AggregateID = fmt.Appendf(nil, "%0*d", 1+i%23, i)
	}
	events[0].AggregateID = []byte{} // empty, non-null key: hashed like any other
	if failures, err := p.Publish(context.Background(), events); err != nil || len(failures) != 0 {
		t.Fatalf("Publish: failures at %v, err %v; want none, nil", failureIndexes(failures), err)
	}

	javaDefault := kgo.StickyKeyPartitioner(nil).ForTopic(topic)
	records := readTopic(t, c, topic)
	if len(records) != len(events) {
		t.Fatalf("read %d records, want %d", len(records), len(events))
	}
	used := map[int32]bool{}
	for _, r := range records {
		want := int32(javaDefault.Partition(&kgo.Record{Key: r.Key}, partitions))
		if r.Partition != want {
			t.Errorf("key %q: partition = %d, want %d (murmur2)", r.Key, r.Partition, want)
		}
		used[r.Partition] = true
	}
	if len(used) != partitions {
		t.Errorf("records on %d partitions, want all %d", len(used), partitions)
	}
}

// TestOrderPerKeyAcrossChunks publishes many batches, each cut into several
// produce calls, and checks every key's records arrive once and in order.
func TestOrderPerKeyAcrossChunks(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c)
	cfg.BatchSize = 64
	cfg.BatchBytes = 16 << 10 // a chunk ends on bytes before records, too
	p := newPublisher(t, cfg, zerolog.Nop())

	events := makeEvents(4000, 37, 300, "order")
	for start := 0; start < len(events); start += 500 {
		if failures, err := p.Publish(context.Background(), events[start:start+500]); err != nil || len(failures) != 0 {
			t.Fatalf("Publish: failures at %v, err %v; want none, nil", failureIndexes(failures), err)
		}
	}
	records := readTopic(t, c, "outbox.event.order")
	if len(records) != len(events) {
		t.Errorf("read %d records, want %d (no faults, no duplicates)", len(records), len(events))
	}
	checkDelivery(t, records, events, nil)
}

func TestPublishRaw(t *testing.T) {
	c := newCluster(t)
	p := newPublisher(t, testConfig(c), zerolog.Nop())

	msgs := makeRawMessages("dead.letters", 3)
	msgs[1].Topic = "bad topic"
	failures, err := p.PublishRaw(context.Background(), msgs)
	if err != nil {
		t.Fatalf("PublishRaw: %v", err)
	}
	if len(failures) != 1 || failures[0].Index != 1 || failures[0].Reason != outbox.ReasonInvalidTopic {
		t.Fatalf("failures = %+v, want one invalid_topic at index 1", failures)
	}
	if msgs[1].Topic != "bad topic" || msgs[0].Partition != 0 {
		t.Errorf("PublishRaw modified its argument")
	}
	records := readTopic(t, c, "dead.letters")
	if len(records) != 2 {
		t.Fatalf("read %d records, want 2", len(records))
	}
	for _, r := range records {
		if got := header(r, "reason"); got != "test" {
			t.Errorf("record header reason = %q, want %q", got, "test")
		}
	}
}

func TestPublishAfterClose(t *testing.T) {
	c := newCluster(t)
	p, err := New(testConfig(c), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := p.Publish(context.Background(), makeEvents(1, 1, 10, "order")); err != ErrClosed {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

// TestPublishWaitsForTopicCreation publishes to topics that do not exist
// yet; kfake creates them on the metadata request, as a broker with
// auto.create.topics.enable does.
func TestPublishWaitsForTopicCreation(t *testing.T) {
	c := newCluster(t)
	p := newPublisher(t, testConfig(c), zerolog.Nop())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 3 {
		events := makeEvents(50, 5, 50, fmt.Sprintf("fresh%d", i))
		if failures, err := p.Publish(ctx, events); err != nil || len(failures) != 0 {
			t.Fatalf("Publish: failures at %v, err %v; want none, nil", failureIndexes(failures), err)
		}
		checkDelivery(t, readTopic(t, c, fmt.Sprintf("outbox.event.fresh%d", i)), events, nil)
	}
}

// TestConcurrentCalls runs Publish and PublishRaw from several goroutines:
// they take turns, and each caller's records keep their order.
func TestConcurrentCalls(t *testing.T) {
	c := newCluster(t)
	p := newPublisher(t, testConfig(c), zerolog.Nop())
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	perCaller := make([][]outbox.Event, 3)
	for i := range perCaller {
		perCaller[i] = makeEvents(300, 7, 80, fmt.Sprintf("caller%d", i))
		wg.Go(func() {
			for start := 0; start < 300; start += 50 {
				if failures, err := p.Publish(context.Background(), perCaller[i][start:start+50]); err != nil || len(failures) != 0 {
					errs <- fmt.Errorf("caller %d: failures at %v, err %v", i, failureIndexes(failures), err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 5 {
			if failures, err := p.PublishRaw(context.Background(), makeRawMessages("dead.letters", 20)); err != nil || len(failures) != 0 {
				errs <- fmt.Errorf("raw: failures at %v, err %v", failureIndexes(failures), err)
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, events := range perCaller {
		checkDelivery(t, readTopic(t, c, fmt.Sprintf("outbox.event.caller%d", i)), events, nil)
	}
	if n := len(readTopic(t, c, "dead.letters")); n != 100 {
		t.Errorf("dead.letters holds %d records, want 100", n)
	}
}

// TestCloseStopsGoroutines checks that Close leaves nothing running: the
// Writer's partition goroutines and the transport's metadata goroutines.
func TestCloseStopsGoroutines(t *testing.T) {
	c := newCluster(t)
	if failures, err := newPublisher(t, testConfig(c), zerolog.Nop()).Publish(context.Background(), makeEvents(10, 2, 10, "warm")); err != nil || len(failures) != 0 {
		t.Fatalf("Publish: failures at %v, err %v; want none, nil", failureIndexes(failures), err)
	}
	before := runtime.NumGoroutine()
	p, err := New(testConfig(c), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if failures, err := p.Publish(context.Background(), makeEvents(100, 5, 50, "order")); err != nil || len(failures) != 0 {
		t.Fatalf("Publish: failures at %v, err %v; want none, nil", failureIndexes(failures), err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	eventually(t, fmt.Sprintf("goroutines back to %d", before), 5*time.Second, func() bool {
		return runtime.NumGoroutine() <= before
	})
}
