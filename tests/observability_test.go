package tests

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// relayMetrics are the families the README documents, with their types.
var relayMetrics = map[string]dto.MetricType{
	"outbox_relay_events_published_total":     dto.MetricType_COUNTER,
	"outbox_relay_events_dead_lettered_total": dto.MetricType_COUNTER,
	"outbox_relay_commit_to_ack_seconds":      dto.MetricType_HISTOGRAM,
	"outbox_relay_inflight_records":           dto.MetricType_GAUGE,
	"outbox_relay_inflight_bytes":             dto.MetricType_GAUGE,
	"outbox_relay_confirmed_lsn":              dto.MetricType_GAUGE,
	"outbox_relay_slot_retained_wal_bytes":    dto.MetricType_GAUGE,
	"outbox_relay_oldest_unacked_age_seconds": dto.MetricType_GAUGE,
	"outbox_relay_leader":                     dto.MetricType_GAUGE,
	"outbox_relay_broker_errors_total":        dto.MetricType_COUNTER,
	"outbox_relay_reconnects_total":           dto.MetricType_COUNTER,
	"outbox_relay_transactions_total":         dto.MetricType_COUNTER,
	"outbox_relay_heartbeats_total":           dto.MetricType_COUNTER,
}

// checkExposition scrapes /metrics and checks it the way `promtool check
// metrics` does (it parses, and promlint finds no problem), that every
// family has HELP and TYPE, that histograms are consistent, and that every
// documented family is exposed with its type. It returns the families.
func checkExposition(t *testing.T, addr string) metricFamilies {
	t.Helper()
	mfs, body, err := scrapeMetrics(addr)
	if err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	problems, err := promlint.NewWithMetricFamilies(familyList(mfs)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	text := "\n" + string(body)
	for name, mf := range mfs {
		if mf.GetHelp() == "" || !strings.Contains(text, "\n# HELP "+name+" ") {
			t.Errorf("family %s has no HELP line", name)
		}
		if !strings.Contains(text, "\n# TYPE "+name+" ") {
			t.Errorf("family %s has no TYPE line", name)
		}
		for _, m := range mf.GetMetric() {
			if h := m.GetHistogram(); h != nil {
				checkHistogram(t, name, h)
			}
		}
	}
	for name, want := range relayMetrics {
		mf := mfs[name]
		switch {
		case mf == nil:
			t.Errorf("%s is not exposed; a family that appears only at its first event hides that event from rate() and increase()", name)
		case mf.GetType() != want:
			t.Errorf("%s has type %s, want %s", name, mf.GetType(), want)
		}
	}
	return mfs
}

func familyList(mfs metricFamilies) []*dto.MetricFamily {
	list := make([]*dto.MetricFamily, 0, len(mfs))
	for _, mf := range mfs {
		list = append(list, mf)
	}
	return list
}

// checkHistogram checks that the buckets are cumulative, in increasing
// bounds, and that the +Inf bucket holds the sample count.
func checkHistogram(t *testing.T, name string, h *dto.Histogram) {
	t.Helper()
	prevBound, prevCount := math.Inf(-1), uint64(0)
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() <= prevBound || b.GetCumulativeCount() < prevCount {
			t.Errorf("%s: bucket le=%g count %d after le=%g count %d, want increasing bounds and cumulative counts",
				name, b.GetUpperBound(), b.GetCumulativeCount(), prevBound, prevCount)
		}
		prevBound, prevCount = b.GetUpperBound(), b.GetCumulativeCount()
		if math.IsInf(b.GetUpperBound(), 1) && b.GetCumulativeCount() != h.GetSampleCount() {
			t.Errorf("%s: +Inf bucket %d, want the sample count %d", name, b.GetCumulativeCount(), h.GetSampleCount())
		}
	}
	if prevCount > h.GetSampleCount() {
		t.Errorf("%s: %d in the buckets, more than the sample count %d", name, prevCount, h.GetSampleCount())
	}
}

// TestMetricsExposition scrapes /metrics before and after traffic (normal
// rows and one that cannot be decoded): the exposition must be valid, every
// documented family present, and the counters must count what happened.
func TestMetricsExposition(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	r := e.startRelay()
	addr := e.httpAddr(r)

	// Before any traffic: every documented family, labelled ones included,
	// is already there (at 0).
	checkExposition(t, addr)

	events := orderEvents(0, 25)
	e.insertInTransactions(events)
	var poisonID string
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Headers that are not an object of strings: a decode error, so a
	// dead letter.
	err := e.db.QueryRow(ctx, `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, headers)
		VALUES ('order', 'o-1', 'OrderPlaced', '{}', '[1, 2]') RETURNING id::text`).Scan(&poisonID)
	if err != nil {
		t.Fatal(err)
	}
	after := orderEvents(25, 1)
	lastCommit := e.insert(after...)
	delivered := append(events, after...)

	e.readEvents(time.Minute, outboxTopics, idSet(delivered))
	e.readEvents(time.Minute, []string{`^outbox\.dlq$`}, map[string]bool{poisonID: true})
	e.waitConfirmed(30*time.Second, lastCommit)

	// The slot's retained WAL is read shortly after streaming starts.
	e.waitFor(15*time.Second, "outbox_relay_slot_retained_wal_bytes > 0", func() (bool, string) {
		v, _ := e.mustScrape(addr).value("outbox_relay_slot_retained_wal_bytes")
		return v > 0, fmt.Sprintf("%g", v)
	})

	mfs := checkExposition(t, addr)
	check := func(name string, ok func(float64) bool, want string, labels ...string) {
		t.Helper()
		v, found := mfs.value(name, labels...)
		if !found || !ok(v) {
			t.Errorf("%s%v = %g (exposed: %v), want %s; %s", name, labels, v, found, want, mfs.describe(name))
		}
	}
	eq := func(want float64) func(float64) bool { return func(v float64) bool { return v == want } }
	check("outbox_relay_events_published_total", eq(float64(len(delivered))), fmt.Sprintf("%d, the rows delivered to their topics", len(delivered)))
	check("outbox_relay_events_dead_lettered_total", eq(1), "1", "reason", "decode_error")
	if got := mfs.sum("outbox_relay_events_dead_lettered_total"); got != 1 {
		t.Errorf("outbox_relay_events_dead_lettered_total over all reasons = %g, want 1; %s", got, mfs.describe("outbox_relay_events_dead_lettered_total"))
	}
	if got := mfs.sum("outbox_relay_broker_errors_total"); got != 0 {
		t.Errorf("outbox_relay_broker_errors_total = %g without any broker error, want 0; %s", got, mfs.describe("outbox_relay_broker_errors_total"))
	}
	// 1 to 5 rows per transaction, then the poison row's and the last.
	wantTxns := 0
	for i := 0; i < len(events); i += min(1+i%5, len(events)-i) {
		wantTxns++
	}
	wantTxns += 2
	check("outbox_relay_transactions_total", func(v float64) bool { return v >= float64(wantTxns) }, fmt.Sprintf("≥ %d", wantTxns))
	check("outbox_relay_commit_to_ack_seconds", func(v float64) bool { return v >= 1 && v <= float64(len(delivered)+1) },
		fmt.Sprintf("between 1 and %d observations", len(delivered)+1))
	if ms := mfs["outbox_relay_commit_to_ack_seconds"].GetMetric(); len(ms) == 1 {
		if h := ms[0].GetHistogram(); h.GetSampleSum() <= 0 || h.GetSampleSum() > 60*float64(h.GetSampleCount()) {
			t.Errorf("outbox_relay_commit_to_ack_seconds sum %g for %d observations, want a positive number of seconds below a minute each",
				h.GetSampleSum(), h.GetSampleCount())
		}
	}
	check("outbox_relay_inflight_records", eq(0), "0 once everything is acked")
	check("outbox_relay_inflight_bytes", eq(0), "0 once everything is acked")
	check("outbox_relay_confirmed_lsn", func(v float64) bool { return v >= float64(lastCommit) }, fmt.Sprintf("≥ %d (%s), the last commit", uint64(lastCommit), lastCommit))
	check("outbox_relay_leader", eq(1), "1 on the only instance")
	check("outbox_relay_reconnects_total", eq(0), "0: nothing broke")
}

// TestGaugesMoveWhenBrokerBlocked holds every produce request: the in-flight
// gauges and the oldest unacked age rise while the confirmed position stays
// put; once the broker answers again they fall back to 0 and the position
// moves.
func TestGaugesMoveWhenBrokerBlocked(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	r := e.startRelay()
	addr := e.httpAddr(r)

	warm := orderEvents(0, 1)
	warmCommit := e.insert(warm...)
	e.readEvents(30*time.Second, outboxTopics, idSet(warm))
	e.waitConfirmed(30*time.Second, warmCommit)
	e.waitFor(15*time.Second, "idle gauges", func() (bool, string) {
		mfs := e.mustScrape(addr)
		recs, _ := mfs.value("outbox_relay_inflight_records")
		age, _ := mfs.value("outbox_relay_oldest_unacked_age_seconds")
		return recs == 0 && age == 0, fmt.Sprintf("inflight_records %g, oldest_unacked_age %g", recs, age)
	})

	block := holdProduce(e.kafka.Cluster())
	t.Cleanup(block.release)
	events := orderEvents(1, 10)
	firstCommit := e.insert(events[:3]...)
	e.insert(events[3:6]...)
	lastCommit := e.insert(events[6:]...)
	blockedAt := time.Now()

	var confirmed float64
	e.waitFor(30*time.Second, "the blocked rows in flight", func() (bool, string) {
		mfs := e.mustScrape(addr)
		recs, _ := mfs.value("outbox_relay_inflight_records")
		bytes, _ := mfs.value("outbox_relay_inflight_bytes")
		confirmed, _ = mfs.value("outbox_relay_confirmed_lsn")
		return recs == float64(len(events)) && bytes > 0,
			fmt.Sprintf("inflight_records %g, inflight_bytes %g (%d produce requests held)", recs, bytes, block.attempts())
	})
	if confirmed >= float64(firstCommit) {
		t.Fatalf("outbox_relay_confirmed_lsn = %s with the broker blocked, want below the first unacked commit %s",
			outbox.LSN(confirmed), firstCommit)
	}
	// The age is measured every 5 s: wait for it to pass 3 s, and watch
	// the rest stand still meanwhile.
	e.waitFor(30*time.Second, "outbox_relay_oldest_unacked_age_seconds > 3", func() (bool, string) {
		mfs := e.mustScrape(addr)
		age, _ := mfs.value("outbox_relay_oldest_unacked_age_seconds")
		recs, _ := mfs.value("outbox_relay_inflight_records")
		c, _ := mfs.value("outbox_relay_confirmed_lsn")
		if c != confirmed || recs != float64(len(events)) {
			t.Fatalf("with the broker blocked: confirmed_lsn %s (was %s), inflight_records %g (was %d), want both unchanged",
				outbox.LSN(c), outbox.LSN(confirmed), recs, len(events))
		}
		return age > 3, fmt.Sprintf("oldest_unacked_age %g after %v blocked", age, time.Since(blockedAt).Round(time.Millisecond))
	})
	if age := e.gauge(addr, "outbox_relay_oldest_unacked_age_seconds"); age > time.Since(blockedAt).Seconds()+2 {
		t.Errorf("outbox_relay_oldest_unacked_age_seconds = %g, want at most the %v since the rows were written", age, time.Since(blockedAt))
	}

	block.release()
	e.readEvents(time.Minute, outboxTopics, idSet(events))
	e.waitConfirmed(30*time.Second, lastCommit)
	e.waitFor(15*time.Second, "the gauges back to idle", func() (bool, string) {
		mfs := e.mustScrape(addr)
		recs, _ := mfs.value("outbox_relay_inflight_records")
		bytes, _ := mfs.value("outbox_relay_inflight_bytes")
		age, _ := mfs.value("outbox_relay_oldest_unacked_age_seconds")
		c, _ := mfs.value("outbox_relay_confirmed_lsn")
		return recs == 0 && bytes == 0 && age == 0 && c >= float64(lastCommit),
			fmt.Sprintf("inflight_records %g, inflight_bytes %g, oldest_unacked_age %g, confirmed_lsn %s (want ≥ %s)",
				recs, bytes, age, outbox.LSN(c), lastCommit)
	})
}

// TestBrokerErrorsCounted has the broker refuse every produce request with a
// retriable error (NOT_ENOUGH_REPLICAS) for a while: the relay retries, and
// outbox_relay_broker_errors_total must count what it retried, or an
// operator's dashboard shows no broker error during a broker outage.
func TestBrokerErrorsCounted(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	r := e.startRelay()
	addr := e.httpAddr(r)

	block := rejectProduce(e.kafka.Cluster())
	t.Cleanup(block.release)
	events := orderEvents(0, 3)
	lastCommit := e.insert(events...)
	e.waitFor(30*time.Second, "three rejected produce requests", func() (bool, string) {
		return block.attempts() >= 3, fmt.Sprintf("%d rejected", block.attempts())
	})
	// The relay logs each retry; the counter must have seen them too.
	e.waitFor(10*time.Second, "outbox_relay_broker_errors_total > 0", func() (bool, string) {
		mfs := e.mustScrape(addr)
		return mfs.sum("outbox_relay_broker_errors_total") > 0,
			fmt.Sprintf("%s after %d rejected produce requests", mfs.describe("outbox_relay_broker_errors_total"), block.attempts())
	})

	block.release()
	e.readEvents(time.Minute, outboxTopics, idSet(events))
	e.waitConfirmed(30*time.Second, lastCommit)
	if got := e.mustScrape(addr).sum("outbox_relay_events_dead_lettered_total"); got != 0 {
		t.Errorf("outbox_relay_events_dead_lettered_total = %g after retriable errors, want 0", got)
	}
}

// TestInflightGaugesAfterReconnect ends the streaming session (its
// walsender is terminated) while records are in flight to a blocked broker:
// the relay reconnects and sends them again, and once the broker answers,
// the in-flight gauges must come back to 0, not keep the abandoned
// session's records forever.
func TestInflightGaugesAfterReconnect(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	r := e.startRelay()
	addr := e.httpAddr(r)

	block := holdProduce(e.kafka.Cluster())
	t.Cleanup(block.release)
	events := orderEvents(0, 5)
	lastCommit := e.insert(events...)
	e.waitFor(30*time.Second, "the rows in flight", func() (bool, string) {
		v, _ := e.mustScrape(addr).value("outbox_relay_inflight_records")
		return v == float64(len(events)), fmt.Sprintf("inflight_records %g", v)
	})

	e.exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", e.name)
	e.waitFor(30*time.Second, "a new streaming session", func() (bool, string) {
		reconnects, _ := e.mustScrape(addr).value("outbox_relay_reconnects_total")
		sessions := len(logEntries(r, msgStreaming))
		return reconnects >= 1 && sessions >= 2 && e.slot().active,
			fmt.Sprintf("reconnects_total %g, %d %q log lines, %s", reconnects, sessions, msgStreaming, e.slot())
	})

	block.release()
	e.readEvents(time.Minute, outboxTopics, idSet(events))
	e.waitConfirmed(30*time.Second, lastCommit)
	e.waitFor(10*time.Second, "the in-flight gauges back to 0", func() (bool, string) {
		mfs := e.mustScrape(addr)
		recs, _ := mfs.value("outbox_relay_inflight_records")
		bytes, _ := mfs.value("outbox_relay_inflight_bytes")
		return recs == 0 && bytes == 0, fmt.Sprintf("inflight_records %g, inflight_bytes %g with every row delivered and confirmed", recs, bytes)
	})
}

// TestHeartbeatAdvancesSlot leaves the relay idle, with nothing else
// writing to the cluster: its heartbeats (pg_logical_emit_message, every
// second here) are the only WAL, and the slot's confirmed position must
// pass their commits, round after round.
func TestHeartbeatAdvancesSlot(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	r := e.startRelay("OUTBOX_RELAY_HEARTBEAT_INTERVAL=1s")
	addr := e.httpAddr(r)
	beats := e.gauge(addr, "outbox_relay_heartbeats_total")

	from := e.slot().confirmed
	for round := 1; round <= 3; round++ {
		var commit outbox.LSN
		e.waitFor(10*time.Second, fmt.Sprintf("a heartbeat written after %s", from), func() (bool, string) {
			commit = e.heartbeatCommitAfter(from)
			return commit != 0, "no relay heartbeat in the WAL after " + from.String()
		})
		e.waitConfirmed(10*time.Second, commit)
		t.Logf("round %d: slot confirmed past the heartbeat committed at %s", round, commit)
		from = commit
	}
	if got := e.gauge(addr, "outbox_relay_heartbeats_total"); got < beats+3 {
		t.Errorf("outbox_relay_heartbeats_total = %g, want at least %g (3 heartbeats more than at the start)", got, beats+3)
	}
	if n := e.endOffsetsTotal(outboxTopics); n != 0 {
		t.Errorf("%d records produced from heartbeats alone, want 0", n)
	}
}

// heartbeatCommitAfter returns the end LSN of the commit of the first
// relay heartbeat (a logical message with prefix outbox-relay) written
// after lsn, or 0 when there is none yet. It reads the WAL with
// pg_walinspect, so only the heartbeat's own WAL counts.
func (e *testEnv) heartbeatCommitAfter(lsn outbox.LSN) outbox.LSN {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// pg_walinspect reads only flushed WAL, and refuses a start at or past
	// its end (lsn may be a keepalive's position).
	var flushed string
	if err := e.db.QueryRow(ctx, "SELECT pg_current_wal_flush_lsn()::text").Scan(&flushed); err != nil {
		e.t.Fatal(err)
	}
	if end, err := outbox.ParseLSN(flushed); err != nil || end <= lsn {
		return 0
	}
	records := "pg_get_wal_records_info_till_end_of_wal($1::pg_lsn)"
	if serverVersion >= 160000 {
		records = "pg_get_wal_records_info($1::pg_lsn, 'FFFFFFFF/FFFFFFFF')"
	}
	var end *string
	err := e.db.QueryRow(ctx, `
		WITH wal AS (SELECT * FROM `+records+`)
		SELECT min(c.end_lsn)::text FROM wal m JOIN wal c ON c.xid = m.xid
		WHERE m.resource_manager = 'LogicalMessage' AND m.description LIKE '%prefix "outbox-relay"%'
		  AND c.resource_manager = 'Transaction' AND c.record_type = 'COMMIT' AND c.end_lsn > $1::pg_lsn`, lsn.String()).Scan(&end)
	if err != nil && strings.Contains(err.Error(), "could not find a valid record") {
		// The flushed WAL past lsn holds no complete record yet: poll again.
		return 0
	}
	if err != nil {
		e.t.Fatalf("read heartbeats from the WAL after %s: %v", lsn, err)
	}
	if end == nil {
		return 0
	}
	commit, err := outbox.ParseLSN(*end)
	if err != nil {
		e.t.Fatal(err)
	}
	return commit
}
