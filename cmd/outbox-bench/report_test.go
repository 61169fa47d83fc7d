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

// TestMarkdownDebeziumRatios checks the Debezium figures: the drain's
// ratios of events/s and peak RSS against the relay (none), and the live
// comparison at the same rate with CPU seconds per 100k events.
func TestMarkdownDebeziumRatios(t *testing.T) {
	bl := &BacklogResult{Rows: 100_000, TxnRows: 100, Repeats: 1, Runs: []DrainRun{
		{Reader: readerRecvlogical, Repeat: 1, Seconds: 1, EventsPerSec: 100_000},
		{Reader: readerRelayNone, Repeat: 1, Seconds: 1.25, EventsPerSec: 80_000, ReaderCPU: 2, PeakRSSMB: 50, KafkaSeconds: 1},
		{Reader: readerDebezium, Repeat: 1, Seconds: 5, EventsPerSec: 20_000, ReaderCPU: 8, PeakRSSMB: 400, KafkaSeconds: 5,
			RecordsInKafka: 100_000},
	}}
	for _, run := range bl.Runs {
		bl.Readers = append(bl.Readers, summarise(run.Reader, []DrainRun{run}))
	}
	none, dbz := bl.reader(readerRelayNone), bl.reader(readerDebezium)
	bl.NoneVsDebezium, bl.RSSVsDebezium = ratio(none.EventsPerSec, dbz.EventsPerSec), ratio(none.PeakRSSMB, dbz.PeakRSSMB)
	live := func(reader string, p50, cpuCores float64, rss float64) LiveResult {
		return LiveResult{Reader: reader, TargetRate: 1000, Seconds: 10, TxnRows: 10, Producers: 4, Events: 10_000,
			Received: 10_000, P50Ms: p50, CPU: CPUUse{Reader: cpuCores}, PeakRSSMB: rss}
	}
	r := &report{
		Machine: Machine{Broker: "kfake"},
		Options: map[string]string{"live_duration": "10s", "payload_bytes": "400"},
		Backlog: bl,
		Live:    []LiveResult{live(readerRelay, 1, 0.05, 40), live(readerDebezium, 10, 0.2, 500)},
	}
	md := r.markdown()
	for _, want := range []string{
		"| relay (none) ≥ 3 × Debezium | 4.00 × | yes |",
		"| relay (none) peak RSS ≤ 1/4 of Debezium's | 0.12 × | yes |",
		// 8 CPU seconds for 100k rows; 400 MB peak.
		"| " + readerDebezium + " | 5.00 s | 20,000 (20,000–20,000) | 0.20 | 5.00 s | 8.0 s | 8.00 s |",
		"| 400 MB | 100,000 |",
		"## 2. Live latency: " + readerDebezium + "\n",
		// 0.2 cores × 10 s over 10k events = 20 s per 100k.
		"| 20.00 s | 500 MB |",
		"| 1,000/s | 1.00 ms | 10.00 ms | 0.1 | yes |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}
