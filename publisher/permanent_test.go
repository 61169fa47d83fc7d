package publisher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// failedSet lists the indexes of failures, checking each has reason.
func failedSet(t *testing.T, failures []outbox.Failure, reason string) map[int]bool {
	t.Helper()
	set := map[int]bool{}
	for _, f := range failures {
		if f.Reason != reason {
			t.Errorf("failure %d: reason = %q, want %q (err %v)", f.Index, f.Reason, reason, f.Err)
		}
		if f.Err == nil {
			t.Errorf("failure %d: no error", f.Index)
		}
		set[f.Index] = true
	}
	return set
}

func failureIndexes(failures []outbox.Failure) []int {
	var idx []int
	for _, f := range failures {
		idx = append(idx, f.Index)
	}
	return idx
}

// TestTooLargeForMaxMessageBytes fails records above MaxMessageBytes without
// sending them (kafka-go would refuse the whole call) and delivers the others.
func TestTooLargeForMaxMessageBytes(t *testing.T) {
	c := newCluster(t)
	var produced atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		for _, rt := range req.(*kmsg.ProduceRequest).Topics {
			for _, rp := range rt.Partitions {
				if bytes.Contains(rp.Records, []byte("HUGE")) {
					produced.Add(1)
				}
			}
		}
		return nil, nil, false
	})
	cfg := testConfig(c)
	cfg.BatchBytes = 1024
	cfg.MaxMessageBytes = 4096
	cfg.BatchSize = 8
	p := newPublisher(t, cfg, zerolog.Nop())

	events := makeEvents(40, 3, 200, "order")
	events[20].Payload = bytes.Repeat([]byte("b"), 3000) // above BatchBytes, within MaxMessageBytes: sent alone
	for _, i := range []int{0, 12, 13, 39} {
		events[i].Payload = bytes.Repeat([]byte("HUGE"), 1100)
	}
	failures, err := p.Publish(context.Background(), events)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got := fmt.Sprint(failureIndexes(failures)); got != "[0 12 13 39]" {
		t.Fatalf("failed indexes = %s, want [0 12 13 39]", got)
	}
	failed := failedSet(t, failures, outbox.ReasonMessageTooLarge)
	for _, f := range failures {
		if !errors.Is(f.Err, kafka.MessageSizeTooLarge) {
			t.Errorf("failure %d: err = %v, want it to wrap kafka.MessageSizeTooLarge", f.Index, f.Err)
		}
	}
	if n := produced.Load(); n != 0 {
		t.Errorf("%d produce requests carried a too-large record, want 0", n)
	}
	checkDelivery(t, readTopic(t, c, "outbox.event.order"), events, failed)
}

// TestRecordSizeIsKafkaGos checks recordSize against kafka-go itself: a
// Writer with BatchBytes = recordSize(m) accepts m, one byte less refuses it.
func TestRecordSizeIsKafkaGos(t *testing.T) {
	tests := []struct {
		name              string
		key, value        int
		headers, hdrValue int
	}{
		{"empty", 0, 0, 0, 0},
		{"null value", 3, -1, 0, 0},
		{"small", 10, 100, 2, 5},
		{"varint edges", 63, 64, 63, 63},
		{"two-byte varints", 64, 8191, 64, 8192},
		{"large", 100, 1 << 20, 3, 1000},
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel() // kafka-go checks sizes before anything that needs a broker
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := kafka.Message{Topic: "t", Key: bytes.Repeat([]byte("k"), tt.key)}
			if tt.value >= 0 {
				msg.Value = bytes.Repeat([]byte("v"), tt.value)
			}
			for i := range tt.headers {
				msg.Headers = append(msg.Headers, kafka.Header{Key: strings.Repeat("h", i+1), Value: bytes.Repeat([]byte("x"), tt.hdrValue)})
			}
			size := recordSize(&msg)
			for _, batchBytes := range []int64{size, size - 1} {
				w := &kafka.Writer{Addr: kafka.TCP("127.0.0.1:1"), BatchBytes: batchBytes, Transport: &kafka.Transport{Context: canceled}}
				err := w.WriteMessages(canceled, msg)
				var tooLarge kafka.MessageTooLargeError
				if got, want := errors.As(err, &tooLarge), batchBytes < size; got != want {
					t.Errorf("BatchBytes %d, recordSize %d: kafka-go says too large = %t (%v), want %t", batchBytes, size, got, err, want)
				}
				w.Close()
			}
		})
	}
}

// TestBrokerRejectsTooLarge gives the topic a max.message.bytes below
// BatchBytes: batches are refused as a whole, and the publisher must find
// the one record that is too large and deliver the rest in order.
func TestBrokerRejectsTooLarge(t *testing.T) {
	c := newCluster(t)
	createTopic(t, c, "outbox.event.small", 2, map[string]string{"max.message.bytes": "2048"})
	p := newPublisher(t, testConfig(c), zerolog.Nop())

	events := makeEvents(60, 4, 150, "small")
	events[17].Payload = bytes.Repeat([]byte("y"), 3000) // below BatchBytes, above the topic's limit
	failures, err := p.Publish(context.Background(), events)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got := fmt.Sprint(failureIndexes(failures)); got != "[17]" {
		t.Fatalf("failed indexes = %s, want [17]", got)
	}
	failed := failedSet(t, failures, outbox.ReasonMessageTooLarge)
	if !errors.Is(failures[0].Err, kafka.MessageSizeTooLarge) {
		t.Errorf("failure err = %v, want kafka.MessageSizeTooLarge", failures[0].Err)
	}
	checkDelivery(t, readTopic(t, c, "outbox.event.small"), events, failed)
}

// TestInvalidTopic fails events whose topic Kafka would refuse, and sends
// nothing for them: no metadata lookup, no produce.
func TestInvalidTopic(t *testing.T) {
	c := newCluster(t)
	var (
		mu     sync.Mutex
		topics = map[string]bool{}
	)
	record := func(names ...string) {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range names {
			topics[n] = true
		}
	}
	c.ControlKey(int16(kmsg.Metadata), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		for _, rt := range req.(*kmsg.MetadataRequest).Topics {
			if rt.Topic != nil {
				record(*rt.Topic)
			}
		}
		return nil, nil, false
	})
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		record(produceTopics(req)...)
		return nil, nil, false
	})
	p := newPublisher(t, testConfig(c), zerolog.Nop())

	events := makeEvents(9, 3, 50, "order")
	events[1].AggregateType = []byte("bad/type")
	events[3].Topic = []byte("..")
	events[4].Topic = []byte(strings.Repeat("t", 250))
	events[5].Topic = []byte{} // an empty topic column is not "no override"
	events[6].AggregateType = []byte("ümlaut")
	events[7].Topic = []byte(strings.Repeat("t", 249)) // the longest valid name
	failures, err := p.Publish(context.Background(), events)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got := fmt.Sprint(failureIndexes(failures)); got != "[1 3 4 5 6]" {
		t.Fatalf("failed indexes = %s, want [1 3 4 5 6]", got)
	}
	failed := failedSet(t, failures, outbox.ReasonInvalidTopic)
	for _, f := range failures {
		if !errors.Is(f.Err, ErrInvalidTopic) {
			t.Errorf("failure %d: err = %v, want ErrInvalidTopic", f.Index, f.Err)
		}
	}
	mu.Lock()
	for name := range topics {
		if validTopic(name) != nil {
			t.Errorf("a request named the invalid topic %q", name)
		}
	}
	mu.Unlock()
	delivered := readTopic(t, c, "outbox.event.order")
	delivered = append(delivered, readTopic(t, c, strings.Repeat("t", 249))...)
	checkDelivery(t, delivered, events, failed)
}

// TestTopicAuthorizationFailed rejects every write to one topic: its events
// fail without a record-by-record search, the other topic's are delivered.
func TestTopicAuthorizationFailed(t *testing.T) {
	c := newCluster(t)
	createTopic(t, c, "outbox.event.secret", 2, nil)
	var secretRequests atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		for _, topic := range produceTopics(req) {
			if topic == "outbox.event.secret" {
				secretRequests.Add(1)
				return produceError(req, codeTopicAuthorizationFailed), nil, true
			}
		}
		return nil, nil, false
	})
	p := newPublisher(t, testConfig(c), zerolog.Nop())

	events := makeEvents(40, 5, 50, "order")
	var want []int
	for i := range events {
		if i%3 == 1 {
			events[i].AggregateType = []byte("secret")
			want = append(want, i)
		}
	}
	failures, err := p.Publish(context.Background(), events)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got := fmt.Sprint(failureIndexes(failures)); got != fmt.Sprint(want) {
		t.Fatalf("failed indexes = %s, want %v", got, want)
	}
	failed := failedSet(t, failures, outbox.ReasonTopicAuthFailed)
	if n := secretRequests.Load(); n > 2 {
		t.Errorf("%d produce requests to the refused topic, want at most one per partition (2)", n)
	}
	checkDelivery(t, readTopic(t, c, "outbox.event.order"), events, failed)
}

// TestCulpritSearchKeepsOrder answers one batch of a partition with
// MESSAGE_TOO_LARGE although no single record is too large (a broker limit
// below the batch): the publisher re-sends that batch record by record, in
// order, and all of them get through.
func TestCulpritSearchKeepsOrder(t *testing.T) {
	c := newCluster(t)
	createTopic(t, c, "outbox.event.order", 2, nil)
	var refused atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		pr := req.(*kmsg.ProduceRequest)
		if len(pr.Topics[0].Partitions[0].Records) > 1000 && refused.Add(1) <= 3 {
			return produceError(req, codeMessageTooLarge), nil, true
		}
		return nil, nil, false
	})
	cfg := testConfig(c)
	cfg.BatchSize = 30
	p := newPublisher(t, cfg, zerolog.Nop())

	events := makeEvents(200, 6, 100, "order")
	failures, err := p.Publish(context.Background(), events)
	if err != nil || len(failures) != 0 {
		t.Fatalf("Publish: failures at %v, err %v; want none, nil", failureIndexes(failures), err)
	}
	if refused.Load() < 3 {
		t.Fatalf("refused %d batches, want 3 (the fault did not happen)", refused.Load())
	}
	checkDelivery(t, readTopic(t, c, "outbox.event.order"), events, nil)
}

// TestRecordTheBrokerTakesIsSent: with the default settings, a record above
// 1 MiB that the topic's max.message.bytes allows reaches the topic; a record
// above the topic's limit fails as message_too_large, refused by the broker.
func TestRecordTheBrokerTakesIsSent(t *testing.T) {
	c := newCluster(t)
	createTopic(t, c, "outbox.event.order", 2, map[string]string{"max.message.bytes": strconv.Itoa(3 << 20)})
	cfg := testConfig(c)
	p := newPublisher(t, cfg, zerolog.Nop())

	events := makeEvents(6, 2, 100, "order")
	events[1].Payload = bytes.Repeat([]byte("m"), 2<<20)
	events[4].Payload = bytes.Repeat([]byte("x"), 4<<20)
	failures, err := p.Publish(context.Background(), events)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got := fmt.Sprint(failureIndexes(failures)); got != "[4]" {
		t.Fatalf("failed indexes = %s (%v), want [4]", got, failures)
	}
	failed := failedSet(t, failures, outbox.ReasonMessageTooLarge)
	checkDelivery(t, readTopic(t, c, "outbox.event.order"), events, failed)
}

// TestCompression: every codec's records read back as written.
func TestCompression(t *testing.T) {
	c := newCluster(t)
	for _, codec := range []string{"none", "gzip", "snappy", "lz4", "zstd"} {
		t.Run(codec, func(t *testing.T) {
			cfg := testConfig(c)
			cfg.Compression = codec
			cfg.TopicTemplate = "compressed." + codec + ".${aggregatetype}"
			p := newPublisher(t, cfg, zerolog.Nop())
			events := makeEvents(50, 3, 500, "order")
			failures, err := p.Publish(context.Background(), events)
			if err != nil || len(failures) > 0 {
				t.Fatalf("Publish: %v, failures %v", err, failures)
			}
			checkDelivery(t, readTopic(t, c, "compressed."+codec+".order"), events, nil)
		})
	}
}
