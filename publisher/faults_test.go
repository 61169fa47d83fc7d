package publisher

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Kafka error codes the fake broker answers with.
const (
	codeLeaderNotAvailable       int16 = 5
	codeNotLeaderForPartition    int16 = 6
	codeMessageTooLarge          int16 = 10
	codeNotEnoughReplicas        int16 = 19
	codeTopicAuthorizationFailed int16 = 29
)

// TestBrokerOutage fails produce requests for a while — first all of them
// (connections closed, retriable error codes), then some of them, so that
// one write succeeds on some partitions and fails on others — and checks
// that Publish waits it out and that every key's records arrive in order.
func TestBrokerOutage(t *testing.T) {
	c := newCluster(t)
	createTopic(t, c, "outbox.event.order", 4, nil)
	logs := &logBuffer{}
	cfg := testConfig(c)
	cfg.BatchSize = 50
	p := newPublisher(t, cfg, zerolog.New(logs))

	const (
		before = iota // the outage starts while the first Publish is under way
		down
		flaky
		up
	)
	var (
		state    atomic.Int32
		requests atomic.Int64 // produce requests seen
		failed   atomic.Int64 // produce requests failed
	)
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		n := requests.Add(1)
		switch state.Load() {
		case before:
			if n < 10 {
				return nil, nil, false
			}
			state.Store(down)
		case up:
			return nil, nil, false
		case flaky:
			if n%3 == 0 {
				return nil, nil, false
			}
			if failed.Load() >= 60 {
				state.Store(up)
			}
		}
		failed.Add(1)
		switch n % 3 {
		case 0:
			return nil, errors.New("broker going down"), true // closes the connection
		case 1:
			return produceError(req, codeNotEnoughReplicas), nil, true
		default:
			return produceError(req, codeNotLeaderForPartition), nil, true
		}
	})

	events := makeEvents(3000, 23, 200, "order")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := publishAsync(ctx, p, events)

	eventually(t, "failed produce requests", 10*time.Second, func() bool { return failed.Load() >= 15 })
	select {
	case r := <-done:
		t.Fatalf("Publish returned (%v, %v) while the broker was down", r.failures, r.err)
	default:
	}
	state.Store(flaky)

	r := <-done
	if r.err != nil || len(r.failures) != 0 {
		t.Fatalf("Publish: failures at %v, err %v; want none, nil", failureIndexes(r.failures), r.err)
	}
	if got := failed.Load(); got < 60 {
		t.Errorf("failed produce requests = %d, want at least 60 (the outage did not happen)", got)
	}
	checkDelivery(t, readTopic(t, c, "outbox.event.order"), events, nil)

	out := logs.String()
	if !strings.Contains(out, `"level":"warn"`) || !strings.Contains(out, `"retry":`) {
		t.Errorf("no warn log with a retry count; logs:\n%.2000s", out)
	}
	if containsAny(out, `xxxxxxxx`, `\"seq\"`, `"seq"`) {
		t.Errorf("logs contain a payload:\n%.2000s", out)
	}
}

// TestLostAcks makes the broker append records but lose the acks (the
// connection drops before the response), so batches are written twice.
// Duplicates must repeat whole records in order, never put an older record
// after a newer one of its key.
func TestLostAcks(t *testing.T) {
	drops := &ackDropper{from: 8, to: 30}
	c := newCluster(t, kfake.ListenFn(drops.listen))
	createTopic(t, c, "outbox.event.order", 3, nil)
	cfg := testConfig(c)
	cfg.BatchSize = 40
	p := newPublisher(t, cfg, zerolog.Nop())

	events := makeEvents(2000, 17, 100, "order")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for start := 0; start < len(events); start += 400 {
		if failures, err := p.Publish(ctx, events[start:start+400]); err != nil || len(failures) != 0 {
			t.Fatalf("Publish: failures at %v, err %v; want none, nil", failureIndexes(failures), err)
		}
	}
	report := checkDelivery(t, readTopic(t, c, "outbox.event.order"), events, nil)
	if drops.dropped.Load() == 0 || report.duplicates == 0 {
		t.Errorf("dropped %d acks, %d duplicates; want some of both (the fault did not happen)", drops.dropped.Load(), report.duplicates)
	}
	t.Logf("dropped %d acks, %d duplicate records", drops.dropped.Load(), report.duplicates)
}

// TestCancelWhileBrokerDown checks that Publish gives up promptly with the
// context's error when the broker is down.
func TestCancelWhileBrokerDown(t *testing.T) {
	c := newCluster(t)
	var failed atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		failed.Add(1)
		return nil, errors.New("down"), true
	})
	cfg := testConfig(c)
	cfg.BackoffMax = 2 * time.Second // a cancel must also cut a long backoff short
	p := newPublisher(t, cfg, zerolog.Nop())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := publishAsync(ctx, p, makeEvents(100, 5, 50, "order"))
	eventually(t, "failed produce requests", 10*time.Second, func() bool { return failed.Load() >= 5 })
	cancel()
	start := time.Now()
	select {
	case r := <-done:
		if !errors.Is(r.err, context.Canceled) {
			t.Errorf("Publish error = %v, want context.Canceled", r.err)
		}
		if r.failures != nil {
			t.Errorf("Publish failures = %v, want nil", r.failures)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Publish returned %s after the cancel, want promptly", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Publish did not return after its context was canceled")
	}
}

// TestCancelWaitsForInFlightProduce cancels Publish while a produce request
// is held by the broker: kafka-go would still write the queued batch after
// an early return, so Publish must wait for it (and then report its ack).
func TestCancelWaitsForInFlightProduce(t *testing.T) {
	c := newCluster(t)
	createTopic(t, c, "outbox.event.order", 1, nil)
	release := make(chan struct{})
	var held atomic.Bool
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		held.Store(true)
		c.SleepControl(func() { <-release })
		return nil, nil, false // then handle it normally
	})
	p := newPublisher(t, testConfig(c), zerolog.Nop())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := makeEvents(20, 3, 50, "order")
	done := publishAsync(ctx, p, events)
	eventually(t, "produce request held", 10*time.Second, held.Load)
	cancel()
	select {
	case r := <-done:
		t.Fatalf("Publish returned (%v, %v) while its produce request was in flight", r.failures, r.err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	r := <-done
	if r.err != nil || len(r.failures) != 0 {
		t.Fatalf("Publish: failures at %v, err %v; want none, nil (the held request was acked)", failureIndexes(r.failures), r.err)
	}
	checkDelivery(t, readTopic(t, c, "outbox.event.order"), events, nil)
}

// ackDropper wraps kfake's listeners and drops the responses of the
// produce requests numbered from..to-1 by closing their connection: the
// broker has appended the records, the producer never learns it.
type ackDropper struct {
	from, to int64
	produces atomic.Int64
	dropped  atomic.Int64
}

func (d *ackDropper) listen(network, address string) (net.Listener, error) {
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, err
	}
	return &dropListener{Listener: ln, d: d}, nil
}

type dropListener struct {
	net.Listener
	d *ackDropper
}

func (l *dropListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &dropConn{Conn: conn, d: l.d}, nil
}

// dropConn tracks the API key of each request read (Kafka answers the
// requests of a connection in order, one Write per response in kfake) so
// that it knows which response is a produce response.
type dropConn struct {
	net.Conn
	d *ackDropper

	mu   sync.Mutex
	keys []int16 // API keys of the requests not yet answered
	head [6]byte // size and API key of the request being read
	got  int     // bytes of head read
	skip int     // bytes of the request body still to skip
}

func (c *dropConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.track(b[:n])
	return n, err
}

func (c *dropConn) track(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(b) > 0 {
		if c.skip > 0 {
			n := min(c.skip, len(b))
			c.skip -= n
			b = b[n:]
			continue
		}
		n := copy(c.head[c.got:], b)
		c.got += n
		b = b[n:]
		if c.got == len(c.head) {
			c.keys = append(c.keys, int16(binary.BigEndian.Uint16(c.head[4:])))
			c.skip = int(binary.BigEndian.Uint32(c.head[:4])) - 2
			c.got = 0
		}
	}
}

func (c *dropConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	key := int16(-1)
	if len(c.keys) > 0 {
		key = c.keys[0]
		c.keys = c.keys[1:]
	}
	c.mu.Unlock()
	if key == int16(kmsg.Produce) {
		if n := c.d.produces.Add(1); n >= c.d.from && n < c.d.to {
			c.d.dropped.Add(1)
			c.Conn.Close()
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Write(b)
}

// produceTopics lists the topics a produce request writes to.
func produceTopics(req kmsg.Request) []string {
	var topics []string
	if pr, ok := req.(*kmsg.ProduceRequest); ok {
		for _, rt := range pr.Topics {
			topics = append(topics, rt.Topic)
		}
	}
	return topics
}

// produceError answers a produce request with code for every partition.
func produceError(req kmsg.Request, code int16) *kmsg.ProduceResponse {
	pr := req.(*kmsg.ProduceRequest)
	resp := pr.ResponseKind().(*kmsg.ProduceResponse)
	for _, rt := range pr.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

// TestRetriableCodesAreRetried answers with each retriable code once and
// checks that nothing fails.
func TestRetriableCodesAreRetried(t *testing.T) {
	c := newCluster(t)
	createTopic(t, c, "outbox.event.order", 1, nil)
	codes := []int16{codeLeaderNotAvailable, codeNotLeaderForPartition, codeNotEnoughReplicas, 7 /* REQUEST_TIMED_OUT */, 2 /* CORRUPT_MESSAGE */, -1 /* UNKNOWN_SERVER_ERROR */, 3 /* UNKNOWN_TOPIC_OR_PARTITION */}
	var n atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if i := n.Add(1) - 1; int(i) < len(codes) {
			return produceError(req, codes[i]), nil, true
		}
		return nil, nil, false
	})
	p := newPublisher(t, testConfig(c), zerolog.Nop())
	events := makeEvents(10, 2, 50, "order")
	if failures, err := p.Publish(context.Background(), events); err != nil || len(failures) != 0 {
		t.Fatalf("Publish: failures at %v, err %v; want none, nil", failureIndexes(failures), err)
	}
	if int(n.Load()) <= len(codes) {
		t.Fatalf("%d produce requests, want more than %d", n.Load(), len(codes))
	}
	checkDelivery(t, readTopic(t, c, "outbox.event.order"), events, nil)
}
