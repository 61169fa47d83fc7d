package publisher

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestUnknownTopicIsDeadLettered: with auto-creation off, the records of a
// topic that does not exist are retried for UnknownTopicTimeout and then
// fail as unknown_topic; the records of a topic that exists, in the same
// call, are delivered in order.
func TestUnknownTopicIsDeadLettered(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "outbox.event.order"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cfg := testConfig(c)
	cfg.UnknownTopicTimeout = 300 * time.Millisecond
	var retries []string
	cfg.OnRetry = func(kind string) { retries = append(retries, kind) }
	logs := &logBuffer{}
	p := newPublisher(t, cfg, zerolog.New(logs))

	events := makeEvents(30, 4, 100, "order")
	ghosts := map[int]bool{}
	for _, i := range []int{3, 4, 17, 29} {
		events[i].AggregateType = []byte("ghost")
		ghosts[i] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	failures, err := p.Publish(ctx, events)
	if err != nil {
		t.Fatalf("Publish: %v (the unknown topic was retried without end)", err)
	}
	if d := time.Since(start); d < cfg.UnknownTopicTimeout {
		t.Errorf("Publish gave up after %s, before the unknown-topic timeout of %s", d, cfg.UnknownTopicTimeout)
	}
	if got, want := fmt.Sprint(failureIndexes(failures)), "[3 4 17 29]"; got != want {
		t.Fatalf("failed indexes = %s, want %s (%v)", got, want, failures)
	}
	failedSet(t, failures, outbox.ReasonUnknownTopic)
	for _, f := range failures {
		if !errors.Is(f.Err, kafka.UnknownTopicOrPartition) || !containsAny(f.Err.Error(), "outbox.event.ghost") {
			t.Errorf("failure %d: err = %v, want UNKNOWN_TOPIC_OR_PARTITION naming the topic", f.Index, f.Err)
		}
	}
	checkDelivery(t, readTopic(t, c, "outbox.event.order"), events, ghosts)
	if len(retries) == 0 || retries[0] != "unknown_topic_or_partition" {
		t.Errorf("retry kinds = %v, want unknown_topic_or_partition", retries)
	}
	if !containsAny(logs.String(), `"topic":"outbox.event.ghost"`) {
		t.Errorf("no log line names the unknown topic:\n%s", logs)
	}

	// The topic is still unknown: its next records fail without another
	// full wait, and the others still flow.
	start = time.Now()
	more := makeEvents(4, 2, 100, "ghost")
	failures, err = p.Publish(ctx, more)
	if err != nil || len(failures) != len(more) {
		t.Fatalf("second Publish: %v, failures %v, want all 4 unknown_topic", err, failures)
	}
	if d := time.Since(start); d > cfg.UnknownTopicTimeout {
		t.Errorf("second Publish took %s, want less than the timeout: the streak goes on", d)
	}
}
