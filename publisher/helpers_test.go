package publisher

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// newCluster starts an in-process Kafka-protocol cluster reached over TCP.
func newCluster(t testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(3), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(4)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// testConfig is a Config for c with backoffs short enough for tests.
func testConfig(c *kfake.Cluster) Config {
	return Config{
		Brokers:      c.ListenAddrs(),
		WriteTimeout: 5 * time.Second,
		BackoffMin:   5 * time.Millisecond,
		BackoffMax:   40 * time.Millisecond,
	}
}

func newPublisher(t testing.TB, cfg Config, log zerolog.Logger) *Publisher {
	t.Helper()
	p, err := New(cfg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// logBuffer collects log lines written from any goroutine.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newClient(t testing.TB, c *kfake.Cluster, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}, opts...)...)
	if err != nil {
		t.Fatalf("kgo client: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// createTopic creates a topic with the given partitions and topic configs.
func createTopic(t testing.TB, c *kfake.Cluster, topic string, partitions int32, configs map[string]string) {
	t.Helper()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic = topic
	rt.NumPartitions = partitions
	rt.ReplicationFactor = 1
	for k, v := range configs {
		rc := kmsg.NewCreateTopicsRequestTopicConfig()
		rc.Name, rc.Value = k, kmsg.StringPtr(v)
		rt.Configs = append(rt.Configs, rc)
	}
	req.Topics = append(req.Topics, rt)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, newClient(t, c))
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	if code := resp.Topics[0].ErrorCode; code != 0 {
		t.Fatalf("create topic %s: error code %d", topic, code)
	}
}

// endOffsets returns the log end offset of every partition of topic.
func endOffsets(t testing.TB, cl *kgo.Client, topic string) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	meta := kmsg.NewPtrMetadataRequest()
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(topic)
	meta.Topics = append(meta.Topics, mt)
	mresp, err := meta.RequestWith(ctx, cl)
	if err != nil || len(mresp.Topics) != 1 || mresp.Topics[0].ErrorCode != 0 {
		t.Fatalf("metadata of %s: %v %+v", topic, err, mresp)
	}
	n := len(mresp.Topics[0].Partitions)

	req := kmsg.NewPtrListOffsetsRequest()
	req.ReplicaID = -1
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	for p := range n {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = int32(p)
		rp.Timestamp = -1 // latest
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatalf("list offsets of %s: %v", topic, err)
	}
	ends := make([]int64, n)
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			if rp.ErrorCode != 0 {
				t.Fatalf("list offsets of %s/%d: error code %d", topic, rp.Partition, rp.ErrorCode)
			}
			ends[rp.Partition] = rp.Offset
		}
	}
	return ends
}

// readTopic reads every record of topic with a kgo consumer, ordered by
// partition and offset.
func readTopic(t testing.TB, c *kfake.Cluster, topic string) []*kgo.Record {
	t.Helper()
	ends := endOffsets(t, newClient(t, c), topic)
	want := int64(0)
	for _, e := range ends {
		want += e
	}
	cl := newClient(t, c,
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(50*time.Millisecond),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var records []*kgo.Record
	for int64(len(records)) < want {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: got %d records, want %d", topic, len(records), want)
		}
		fetches.EachError(func(topic string, p int32, err error) {
			t.Fatalf("fetch %s/%d: %v", topic, p, err)
		})
		records = append(records, fetches.Records()...)
	}
	slices.SortStableFunc(records, func(a, b *kgo.Record) int {
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	return records
}

// makeEvents returns n events over the given number of keys, in commit
// order. Event i has id "i" and a payload of size bytes naming it.
func makeEvents(n, keys, size int, aggregateType string) []outbox.Event {
	events := make([]outbox.Event, n)
	for i := range events {
		payload := fmt.Appendf(nil, `{"seq":%d,"pad":"`, i)
		for len(payload) < size-2 {
			payload = append(payload, 'x')
		}
		payload = append(payload, `"}`...)
		events[i] = outbox.Event{
			ID:            []byte(strconv.Itoa(i)),
			AggregateType: []byte(aggregateType),
			AggregateID:   fmt.Appendf(nil, "key-%d", i%keys),
			Type:          []byte("created"),
			Payload:       payload,
			Headers:       []outbox.Header{{Key: "trace", Value: fmt.Appendf(nil, "t-%d", i)}},
		}
	}
	return events
}

// header returns the value of the first header named key.
func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// recordSeq is the commit position of a record produced from makeEvents.
func recordSeq(t testing.TB, r *kgo.Record) int {
	t.Helper()
	seq, err := strconv.Atoi(header(r, outbox.HeaderID))
	if err != nil {
		t.Fatalf("record %s/%d@%d: id header %q", r.Topic, r.Partition, r.Offset, header(r, outbox.HeaderID))
	}
	return seq
}

// deliveryReport summarises what reached a topic.
type deliveryReport struct {
	duplicates int
	outOfOrder int // order violations; only the first 10 are reported
}

// checkDelivery checks that records hold every event of events not listed in
// failed, nothing of the failed ones, and that per key:
//   - all records are on one partition;
//   - first deliveries are in commit order: a record is either the earliest
//     event of its key not delivered yet, or a repeat of a delivered one (a
//     re-sent batch);
//   - the last copies of the records are in commit order too.
func checkDelivery(t testing.TB, records []*kgo.Record, events []outbox.Event, failed map[int]bool) deliveryReport {
	t.Helper()
	want := map[string][]int{} // key -> seqs in commit order
	for i := range events {
		if !failed[i] {
			k := string(events[i].AggregateID)
			want[k] = append(want[k], i)
		}
	}
	type keyState struct {
		partition int32
		seen      map[int]bool
		next      int         // index in want[key] of the earliest record not seen yet
		last      map[int]int // seq -> position of its last copy among the key's records
		n         int
	}
	var report deliveryReport
	violation := func(format string, args ...any) {
		t.Helper()
		if report.outOfOrder++; report.outOfOrder <= 10 {
			t.Errorf(format, args...)
		}
	}
	states := map[string]*keyState{}
	for _, r := range records {
		seq := recordSeq(t, r)
		if seq < 0 || seq >= len(events) {
			t.Fatalf("record with id %d, want an id below %d", seq, len(events))
		}
		if failed[seq] {
			t.Errorf("record %d was reported failed but reached %s/%d@%d", seq, r.Topic, r.Partition, r.Offset)
			continue
		}
		k := string(r.Key)
		if k != string(events[seq].AggregateID) {
			t.Fatalf("record %d key = %q, want %q", seq, k, events[seq].AggregateID)
		}
		st := states[k]
		if st == nil {
			st = &keyState{partition: r.Partition, seen: map[int]bool{}, last: map[int]int{}}
			states[k] = st
		}
		if r.Partition != st.partition {
			t.Errorf("key %s on partitions %d and %d, want one partition", k, st.partition, r.Partition)
		}
		seqs := want[k]
		if st.seen[seq] {
			report.duplicates++
		} else {
			if seq != seqs[st.next] {
				violation("key %s: record %d at %s/%d@%d delivered before record %d: first deliveries out of commit order",
					k, seq, r.Topic, r.Partition, r.Offset, seqs[st.next])
			}
			st.seen[seq] = true
			for st.next < len(seqs) && st.seen[seqs[st.next]] {
				st.next++
			}
		}
		st.last[seq] = st.n
		st.n++
	}
	for k, seqs := range want {
		st := states[k]
		if st == nil {
			t.Errorf("key %s: no records, want %d", k, len(seqs))
			continue
		}
		if len(st.seen) != len(seqs) {
			t.Errorf("key %s: %d of %d records delivered", k, len(st.seen), len(seqs))
		}
		for j := 1; j < len(seqs); j++ {
			a, aok := st.last[seqs[j-1]]
			b, bok := st.last[seqs[j]]
			if aok && bok && a > b {
				violation("key %s: last copy of record %d after the last copy of record %d", k, seqs[j-1], seqs[j])
			}
		}
	}
	return report
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// publishAsync runs Publish in a goroutine; the result arrives on the channel.
type publishResult struct {
	failures []outbox.Failure
	err      error
}

func publishAsync(ctx context.Context, p *Publisher, events []outbox.Event) <-chan publishResult {
	done := make(chan publishResult, 1)
	go func() {
		f, err := p.Publish(ctx, events)
		done <- publishResult{f, err}
	}()
	return done
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// makeRawMessages returns n messages for PublishRaw, keyed and valued by
// their index, with a "reason" header.
func makeRawMessages(topic string, n int) []kafka.Message {
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{
			Topic:   topic,
			Key:     fmt.Appendf(nil, "k%d", i),
			Value:   fmt.Appendf(nil, "v%d", i),
			Headers: []kafka.Header{{Key: "reason", Value: []byte("test")}},
		}
	}
	return msgs
}
