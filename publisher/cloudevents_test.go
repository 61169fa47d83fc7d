package publisher

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestRecordTimeAndCloudEvents: a record's timestamp is the row's timestamp
// column, else its commit time, never the send time; with CloudEvents on,
// every record carries the binary-mode headers after its own, ce_time being
// the record time in RFC 3339; a dead letter keeps the record time and the
// CloudEvents headers.
func TestRecordTimeAndCloudEvents(t *testing.T) {
	c := newCluster(t)
	cfg := testConfig(c)
	cfg.CloudEvents, cfg.CloudEventsSource = true, "/orders-service"
	p := newPublisher(t, cfg, zerolog.Nop())

	rowTime := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)
	commitTime := time.Date(2024, 5, 6, 7, 8, 10, 5000, time.UTC)
	events := []outbox.Event{
		{ID: []byte("1"), AggregateType: []byte("order"), AggregateID: []byte("k"), Type: []byte("OrderCreated"),
			Payload: []byte(`{}`), Time: rowTime.UnixNano(), CommitTime: commitTime.UnixNano(),
			Headers: []outbox.Header{{Key: "traceparent", Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")}}},
		{ID: []byte("2"), AggregateType: []byte("order"), AggregateID: []byte("k"), Type: []byte("OrderShipped"),
			Payload: []byte(`{}`), CommitTime: commitTime.UnixNano()},
	}
	before := time.Now()
	if failures, err := p.Publish(context.Background(), events); err != nil || len(failures) != 0 {
		t.Fatalf("Publish: failures at %v, err %v", failureIndexes(failures), err)
	}
	dead := outbox.DeadLetter{Event: &events[1], Reason: outbox.ReasonDecodeError, Error: "x", OriginalTopic: "outbox.event.order"}
	if failures, err := p.PublishDeadLetters(context.Background(), "outbox.dlq", []outbox.DeadLetter{dead}); err != nil || len(failures) != 0 {
		t.Fatalf("PublishDeadLetters: failures %v, err %v", failures, err)
	}

	got := readTopic(t, c, "outbox.event.order")
	if len(got) != 2 {
		t.Fatalf("read %d records, want 2", len(got))
	}
	want := []struct {
		time    time.Time
		headers string
	}{
		{rowTime, "[id=1 type=OrderCreated traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 " +
			"ce_specversion=1.0 ce_id=1 ce_source=/orders-service ce_type=OrderCreated ce_time=2024-05-06T07:08:09.123456Z]"},
		{commitTime, "[id=2 type=OrderShipped ce_specversion=1.0 ce_id=2 ce_source=/orders-service ce_type=OrderShipped ce_time=2024-05-06T07:08:10.000005Z]"},
	}
	for i, r := range got {
		// Kafka keeps milliseconds.
		if !r.Timestamp.Equal(want[i].time.Truncate(time.Millisecond)) {
			t.Errorf("record %d: timestamp = %v, want %v (not the send time, after %v)", i+1, r.Timestamp.UTC(), want[i].time, before.UTC())
		}
		var headers []string
		for _, h := range r.Headers {
			headers = append(headers, h.Key+"="+string(h.Value))
		}
		if fmt.Sprint(headers) != want[i].headers {
			t.Errorf("record %d: headers = %v, want %v", i+1, headers, want[i].headers)
		}
	}
	dl := readTopic(t, c, "outbox.dlq")
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	if !dl[0].Timestamp.Equal(commitTime.Truncate(time.Millisecond)) {
		t.Errorf("dead letter timestamp %v, want the record time %v", dl[0].Timestamp, commitTime)
	}
	// A replay copies the dead letter's headers but outbox.dlq.*: the
	// CloudEvents ones must be there for the replayed record to be whole.
	var dlHeaders []string
	for _, h := range dl[0].Headers {
		if !strings.HasPrefix(h.Key, "outbox.dlq.") {
			dlHeaders = append(dlHeaders, h.Key+"="+string(h.Value))
		}
	}
	if fmt.Sprint(dlHeaders) != want[1].headers {
		t.Errorf("dead letter headers = %v, want the record's %v", dlHeaders, want[1].headers)
	}
}
