package main

import (
	"strings"
	"testing"
)

// TestMarkdownNamesTheBroker renders a report with every scenario and a
// live reader beyond the relay and the poller: each section says which
// broker its figures come from, the extra reader gets a table of its own,
// and the drain's ratios find their readers by name.
func TestMarkdownNamesTheBroker(t *testing.T) {
	const broker = "Apache Kafka 4.4.0 (1 node, 127.0.0.1)"
	drain := func(reader string, eps float64) DrainRun {
		return DrainRun{Reader: reader, Repeat: 1, Seconds: 100_000 / eps, EventsPerSec: eps, KafkaSeconds: 1, RecordsInKafka: 100_000}
	}
	bl := &BacklogResult{Rows: 100_000, TxnRows: 100, Repeats: 1,
		// Not in drainReaders' order: the ratios must not depend on it.
		Runs: []DrainRun{drain(readerRelayNone, 90_000), drain("debezium", 20_000), drain(readerRecvlogical, 100_000), drain(readerRelayDelete, 60_000)}}
	for _, run := range bl.Runs {
		bl.Readers = append(bl.Readers, summarise(run.Reader, []DrainRun{run}))
	}
	none, recv := bl.reader(readerRelayNone), bl.reader(readerRecvlogical)
	if got := ratio(none.EventsPerSec, recv.EventsPerSec); got != 0.9 {
		t.Errorf("none / pg_recvlogical = %v, want 0.9", got)
	}
	if got := bl.reader("absent"); got.EventsPerSec != 0 {
		t.Errorf("reader(absent) = %+v, want a zero summary", got)
	}
	live := func(reader string) LiveResult {
		return LiveResult{Reader: reader, TargetRate: 1000, TxnRows: 10, Producers: 4, Events: 10, Received: 10, P50Ms: 1}
	}
	r := &report{
		Machine: Machine{Broker: broker},
		Options: map[string]string{"live_duration": "10s", "payload_bytes": "400"},
		Backlog: bl,
		Live:    []LiveResult{live(readerRelay), live(readerPolling), live("debezium")},
		Large:   &LargeResult{Rows: 1000, AckMode: "delete"},
	}
	md := r.markdown()
	sections := strings.Split(md, "\n## ")
	if len(sections) != 6 { // machine, drain, live, live: debezium, polling, large
		t.Fatalf("markdown has %d sections, want 6:\n%s", len(sections), md)
	}
	for _, s := range sections {
		title, body, _ := strings.Cut(strings.TrimPrefix(s, "## "), "\n")
		if !strings.HasPrefix(strings.TrimSpace(body), "broker: "+broker) {
			t.Errorf("section %q does not start with the broker line:\n%s", title, body)
		}
	}
	if !strings.Contains(md, "## 2. Live latency: debezium\n") {
		t.Errorf("no section for the live reader debezium:\n%s", md)
	}
	if !strings.Contains(md, "| debezium | ") {
		t.Errorf("the drain table has no row for debezium:\n%s", md)
	}
}
