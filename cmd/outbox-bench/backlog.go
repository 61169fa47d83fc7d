package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// drainStatusInterval is the relay's STATUS_INTERVAL in the drain runs: the
// run ends when the slot confirmed the backlog's end, which the relay
// reports at the next status, so the default 1 s would add up to a second
// of pure waiting to a run of a few seconds.
const drainStatusInterval = "100ms"

// DrainRun is one reader draining the backlog once.
type DrainRun struct {
	Reader string `json:"reader"`
	Repeat int    `json:"repeat"`
	// Seconds runs from the reader's start until it consumed the backlog:
	// pg_recvlogical reached --endpos; the relay had every record acked by
	// Kafka and the slot's confirmed_flush_lsn at the backlog's end.
	Seconds float64 `json:"seconds"`
	// KafkaSeconds is when the relay had every record acked, or Debezium's
	// records were all in the topic.
	KafkaSeconds float64 `json:"kafka_seconds,omitempty"`
	// StartSeconds is how long the reader took from its start until it
	// streamed (Debezium: the JVM's start until the task runs and the slot
	// is active), included in Seconds.
	StartSeconds float64 `json:"start_seconds,omitempty"`
	EventsPerSec float64 `json:"events_per_sec"`
	// ReaderCPU and WalsenderCPU are CPU seconds (user+system) of the
	// reader process and of the walsender serving it.
	ReaderCPU    float64 `json:"reader_cpu_seconds"`
	WalsenderCPU float64 `json:"walsender_cpu_seconds"`
	// MachineBusy is the share of all cores busy during the run, percent.
	MachineBusy float64 `json:"machine_busy_percent"`
	// CPU is where the machine's CPU went, in cores.
	CPU            CPUUse `json:"cpu_cores"`
	RecordsInKafka int64  `json:"records_in_kafka,omitempty"`
	// MaxInflightMB is the largest outbox_relay_inflight_bytes sampled: at
	// the cap (MAX_INFLIGHT_BYTES, 64 MiB by default) the stream waits for
	// acks, so reading is not the bottleneck.
	MaxInflightMB float64 `json:"max_inflight_mb,omitempty"`
	// PeakRSSMB is the reader process's VmHWM once the backlog was in
	// Kafka (the relay and Debezium's JVM).
	PeakRSSMB    float64 `json:"peak_rss_mb,omitempty"`
	PayloadBytes float64 `json:"payload_bytes_avg"`
	WALBytes     int64   `json:"wal_bytes"`
}

// BacklogResult is scenario 1.
type BacklogResult struct {
	Rows           int    `json:"rows"`
	TxnRows        int    `json:"rows_per_txn"`
	StatusInterval string `json:"relay_status_interval"`
	Repeats        int    `json:"repeats"`
	// Readers summarises Runs by reader: medians over the repeats.
	Readers []DrainSummary `json:"readers"`
	Runs    []DrainRun     `json:"runs"`
	// Ratios of median events/s, and of delete's median time over none's.
	NoneVsRecvlogical   float64 `json:"relay_none_vs_pg_recvlogical"`
	DeleteVsRecvlogical float64 `json:"relay_delete_vs_pg_recvlogical"`
	DeleteTimeVsNone    float64 `json:"delete_time_vs_none"`
	// NoneVsDebezium is the relay's (none) events/s over Debezium's, and
	// RSSVsDebezium its peak RSS over Debezium's; 0 without Debezium.
	NoneVsDebezium float64  `json:"relay_none_vs_debezium,omitempty"`
	RSSVsDebezium  float64  `json:"relay_none_peak_rss_vs_debezium,omitempty"`
	Profiles       []string `json:"profiles,omitempty"`
	Profiled       bool     `json:"profiled"`
	// Stalls are relay runs that stopped making progress and were repeated.
	Stalls []*stallError `json:"stalls,omitempty"`
}

// DrainSummary is one reader's runs: medians, and the range of events/s.
type DrainSummary struct {
	Reader          string  `json:"reader"`
	Seconds         float64 `json:"seconds_median"`
	EventsPerSec    float64 `json:"events_per_sec_median"`
	MinEventsPerSec float64 `json:"events_per_sec_min"`
	MaxEventsPerSec float64 `json:"events_per_sec_max"`
	KafkaSeconds    float64 `json:"kafka_seconds_median,omitempty"`
	ReaderCPU       float64 `json:"reader_cpu_seconds_median"`
	WalsenderCPU    float64 `json:"walsender_cpu_seconds_median"`
	MachineBusy     float64 `json:"machine_busy_percent_median"`
	CPU             CPUUse  `json:"cpu_cores_median"`
	MaxInflightMB   float64 `json:"max_inflight_mb,omitempty"`
	// StartSeconds is the median of the runs' StartSeconds.
	StartSeconds float64 `json:"start_seconds_median,omitempty"`
	// PeakRSSMB is the largest peak RSS of the reader's runs.
	PeakRSSMB float64 `json:"peak_rss_mb_max,omitempty"`
	// RecordsInKafka is the fewest records any run left in Kafka.
	RecordsInKafka int64 `json:"records_in_kafka_min,omitempty"`
}

// backlogDrain runs scenario 1: the same backlog, in a fresh database each
// time, drained by pg_recvlogical and by the relay with ACK_MODE none and
// delete; the three take turns, repeats times, so that a burst of load from
// elsewhere on the machine does not land on one reader only.
func (b *bench) backlogDrain(ctx context.Context) (*BacklogResult, error) {
	res := &BacklogResult{Rows: b.o.backlogRows, TxnRows: b.o.backlogTxn, StatusInterval: drainStatusInterval,
		Profiled: b.o.profile, Repeats: b.o.drainRepeats}
	var readers []drainReader
	for _, rd := range drainReaders() {
		if rd.available == nil || rd.available(b) {
			readers = append(readers, rd)
		}
	}
	for repeat := 1; repeat <= b.o.drainRepeats; repeat++ {
		for _, rd := range readers {
			// Profile the first round only: the profiler costs CPU.
			profile := b.o.profile && repeat == 1
			run, profiles, err := b.drain(ctx, rd, profile)
			var stall *stallError
			for errors.As(err, &stall) && len(res.Stalls) < maxStallRetries {
				res.Stalls = append(res.Stalls, stall)
				b.logf("repeating the run in a fresh database")
				run, profiles, err = b.drain(ctx, rd, profile)
			}
			if err != nil {
				return nil, err
			}
			run.Repeat = repeat
			res.Runs = append(res.Runs, run)
			res.Profiles = append(res.Profiles, profiles...)
		}
	}
	byReader := map[string][]DrainRun{}
	var order []string
	for _, run := range res.Runs {
		if _, ok := byReader[run.Reader]; !ok {
			order = append(order, run.Reader)
		}
		byReader[run.Reader] = append(byReader[run.Reader], run)
	}
	for _, reader := range order {
		res.Readers = append(res.Readers, summarise(reader, byReader[reader]))
	}
	recv, none, del := res.reader(readerRecvlogical), res.reader(readerRelayNone), res.reader(readerRelayDelete)
	res.NoneVsRecvlogical = ratio(none.EventsPerSec, recv.EventsPerSec)
	res.DeleteVsRecvlogical = ratio(del.EventsPerSec, recv.EventsPerSec)
	res.DeleteTimeVsNone = ratio(del.Seconds, none.Seconds)
	if dbz := res.reader(readerDebezium); dbz.EventsPerSec > 0 {
		res.NoneVsDebezium = ratio(none.EventsPerSec, dbz.EventsPerSec)
		res.RSSVsDebezium = ratio(none.PeakRSSMB, dbz.PeakRSSMB)
	}
	return res, nil
}

// reader is the summary of the named reader, or a zero one.
func (res *BacklogResult) reader(name string) DrainSummary {
	for _, s := range res.Readers {
		if s.Reader == name {
			return s
		}
	}
	return DrainSummary{Reader: name}
}

func summarise(reader string, runs []DrainRun) DrainSummary {
	field := func(f func(DrainRun) float64) []float64 {
		var v []float64
		for _, r := range runs {
			v = append(v, f(r))
		}
		return v
	}
	eps := field(func(r DrainRun) float64 { return r.EventsPerSec })
	s := DrainSummary{
		Reader:          reader,
		Seconds:         median(field(func(r DrainRun) float64 { return r.Seconds })),
		EventsPerSec:    median(eps),
		MinEventsPerSec: slices.Min(eps),
		MaxEventsPerSec: slices.Max(eps),
		KafkaSeconds:    median(field(func(r DrainRun) float64 { return r.KafkaSeconds })),
		StartSeconds:    median(field(func(r DrainRun) float64 { return r.StartSeconds })),
		ReaderCPU:       median(field(func(r DrainRun) float64 { return r.ReaderCPU })),
		WalsenderCPU:    median(field(func(r DrainRun) float64 { return r.WalsenderCPU })),
		MachineBusy:     median(field(func(r DrainRun) float64 { return r.MachineBusy })),
		CPU: CPUUse{
			Reader:   median(field(func(r DrainRun) float64 { return r.CPU.Reader })),
			Postgres: median(field(func(r DrainRun) float64 { return r.CPU.Postgres })),
			Bench:    median(field(func(r DrainRun) float64 { return r.CPU.Bench })),
			Broker:   median(field(func(r DrainRun) float64 { return r.CPU.Broker })),
			Other:    median(field(func(r DrainRun) float64 { return r.CPU.Other })),
		},
		RecordsInKafka: runs[0].RecordsInKafka,
	}
	for _, r := range runs {
		s.RecordsInKafka = min(s.RecordsInKafka, r.RecordsInKafka)
		s.MaxInflightMB = max(s.MaxInflightMB, r.MaxInflightMB)
		s.PeakRSSMB = max(s.PeakRSSMB, r.PeakRSSMB)
	}
	return s
}

// median of values; the mean of the middle two for an even count.
func median(values []float64) float64 {
	if len(values) == 0 {
		return 0
	}
	v := slices.Clone(values)
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// prepareBacklog creates a fresh database and fills it while no reader
// streams the slot(s).
func (b *bench) prepareBacklog(ctx context.Context, label, ackMode string, extraSlot string) (*database, string, DrainRun, error) {
	var run DrainRun
	db, err := b.freshDatabase(ctx, label, ackMode)
	if err != nil {
		return nil, "", run, err
	}
	if extraSlot != "" {
		if _, err := db.conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", extraSlot); err != nil {
			b.drop(db)
			return nil, "", run, fmt.Errorf("create slot %s: %w", extraSlot, err)
		}
	}
	startLSN, err := db.walLSN(ctx)
	if err != nil {
		b.drop(db)
		return nil, "", run, err
	}
	b.logf("%s: inserting %d rows, %d per transaction", db.name, b.o.backlogRows, b.o.backlogTxn)
	t0 := time.Now()
	endLSN, payload, err := b.fillBacklog(ctx, db, b.o.backlogRows, b.o.backlogTxn)
	if err != nil {
		b.drop(db)
		return nil, "", run, err
	}
	run.PayloadBytes = payload
	db.conn.QueryRow(ctx, "SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint", endLSN, startLSN).Scan(&run.WALBytes)
	b.logf("%s: inserted in %.1fs; backlog ends at %s (%.0f MB of WAL)", db.name, time.Since(t0).Seconds(), endLSN, float64(run.WALBytes)/1e6)
	return db, endLSN, run, nil
}

// recordsIn sums the end offsets of the bench topic.
func recordsIn(ctx context.Context, brokers []string) (int64, error) {
	ends, err := devenv.EndOffsets(ctx, brokers, []string{"^" + strings.ReplaceAll(topicName, ".", `\.`) + "$"})
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ends {
		n += e
	}
	return n, nil
}
