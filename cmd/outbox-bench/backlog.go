package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

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
	// KafkaSeconds is when the relay had every record acked (relay only).
	KafkaSeconds float64 `json:"kafka_seconds,omitempty"`
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
	PayloadBytes  float64 `json:"payload_bytes_avg"`
	WALBytes      int64   `json:"wal_bytes"`
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
	NoneVsRecvlogical   float64  `json:"relay_none_vs_pg_recvlogical"`
	DeleteVsRecvlogical float64  `json:"relay_delete_vs_pg_recvlogical"`
	DeleteTimeVsNone    float64  `json:"delete_time_vs_none"`
	Profiles            []string `json:"profiles,omitempty"`
	Profiled            bool     `json:"profiled"`
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
	for repeat := 1; repeat <= b.o.drainRepeats; repeat++ {
		run, err := b.drainRecvlogical(ctx)
		if err != nil {
			return nil, err
		}
		run.Repeat = repeat
		res.Runs = append(res.Runs, run)
		for _, mode := range []string{"none", "delete"} {
			// Profile the first round only: the profiler costs CPU.
			run, profiles, err := b.drainRelay(ctx, mode, b.o.profile && repeat == 1)
			var stall *stallError
			for errors.As(err, &stall) && len(res.Stalls) < maxStallRetries {
				res.Stalls = append(res.Stalls, stall)
				b.logf("repeating the run in a fresh database")
				run, profiles, err = b.drainRelay(ctx, mode, b.o.profile && repeat == 1)
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
	recv, none, del := res.Readers[0], res.Readers[1], res.Readers[2]
	res.NoneVsRecvlogical = ratio(none.EventsPerSec, recv.EventsPerSec)
	res.DeleteVsRecvlogical = ratio(del.EventsPerSec, recv.EventsPerSec)
	res.DeleteTimeVsNone = ratio(del.Seconds, none.Seconds)
	return res, nil
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
		ReaderCPU:       median(field(func(r DrainRun) float64 { return r.ReaderCPU })),
		WalsenderCPU:    median(field(func(r DrainRun) float64 { return r.WalsenderCPU })),
		MachineBusy:     median(field(func(r DrainRun) float64 { return r.MachineBusy })),
		CPU: CPUUse{
			Reader:   median(field(func(r DrainRun) float64 { return r.CPU.Reader })),
			Postgres: median(field(func(r DrainRun) float64 { return r.CPU.Postgres })),
			Bench:    median(field(func(r DrainRun) float64 { return r.CPU.Bench })),
			Other:    median(field(func(r DrainRun) float64 { return r.CPU.Other })),
		},
		RecordsInKafka: runs[0].RecordsInKafka,
	}
	for _, r := range runs {
		s.RecordsInKafka = min(s.RecordsInKafka, r.RecordsInKafka)
		s.MaxInflightMB = max(s.MaxInflightMB, r.MaxInflightMB)
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

// drainRecvlogical times pg_recvlogical on a slot of its own, with the
// relay's publication and protocol, writing to /dev/null.
func (b *bench) drainRecvlogical(ctx context.Context) (DrainRun, error) {
	const slot = "bench_recvlogical"
	bin, err := b.recvlogicalPath()
	if err != nil {
		return DrainRun{}, err
	}
	db, endLSN, run, err := b.prepareBacklog(ctx, "drain_recvlogical", "none", slot)
	if err != nil {
		return run, err
	}
	defer b.drop(db)
	// The relay's slot is not read in this run; drop it so it pins nothing.
	db.conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slotName)

	runCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(runCtx, bin, "-d", db.url, "--slot", slot, "--start",
		"-o", "proto_version=1", "-o", "publication_names="+publicationName,
		"--endpos", endLSN, "--no-loop", "-f", "/dev/null")
	run.Reader = "pg_recvlogical"
	b.logf("%s: %s", db.name, strings.Join(cmd.Args, " "))
	busy0, cpuUse := machineCPU(), b.trackCPU()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		cpuUse.finish(0)
		return run, fmt.Errorf("start pg_recvlogical: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for waiting := true; waiting; {
		select {
		case err := <-done:
			if err != nil {
				cpuUse.finish(0)
				return run, fmt.Errorf("pg_recvlogical: %w", err)
			}
			waiting = false
		case <-tick.C:
			if st, err := db.slotState(ctx, slot, endLSN); err == nil && st.activePID > 0 {
				if cpu := processCPU(st.activePID); cpu >= 0 {
					run.WalsenderCPU = cpu
				}
			}
		}
	}
	run.Seconds = time.Since(t0).Seconds()
	run.MachineBusy = busySince(busy0)
	if cmd.ProcessState != nil {
		run.ReaderCPU = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	}
	run.CPU = cpuUse.finish(run.ReaderCPU)
	run.EventsPerSec = float64(b.o.backlogRows) / run.Seconds
	b.logf("%s: pg_recvlogical drained in %.2fs (%.0f events/s)", db.name, run.Seconds, run.EventsPerSec)
	return run, nil
}

// drainRelay times the relay with ackMode from its start until every record
// is acked and the slot confirmed the backlog's end.
func (b *bench) drainRelay(ctx context.Context, ackMode string, profile bool) (DrainRun, []string, error) {
	db, endLSN, run, err := b.prepareBacklog(ctx, "drain_"+ackMode, ackMode, "")
	if err != nil {
		return run, nil, err
	}
	defer b.drop(db)
	kafka, err := devenv.StartKafka(kfake.SeedTopics(3, topicName))
	if err != nil {
		return run, nil, err
	}
	defer kafka.Close()

	vars := map[string]string{
		"PG_URL":          db.url,
		"KAFKA_BROKERS":   strings.Join(kafka.Addrs(), ","),
		"ACK_MODE":        ackMode,
		"STATUS_INTERVAL": drainStatusInterval,
	}
	if profile {
		vars["PPROF"] = "true"
	}
	run.Reader = "outbox-relay, ACK_MODE=" + ackMode
	busy0, cpuUse := machineCPU(), b.trackCPU()
	t0 := time.Now()
	relay, err := startRelay(b.o.relayBin, vars, b.o.relayExtraEnv, filepath.Join(b.o.outDir, "logs", db.name+".log"))
	if err != nil {
		cpuUse.finish(0)
		return run, nil, err
	}
	cpuDone := false
	defer func() {
		if !cpuDone {
			cpuUse.finish(0)
		}
	}()
	defer relay.stop()
	var prof *cpuProfiler
	if profile {
		prof = startCPUProfiler(ctx, relay, filepath.Join(b.o.outDir, "profile"), "drain-"+ackMode)
	}

	timeout := drainTimeout(b.o.backlogRows)
	deadline := time.Now().Add(timeout)
	var kafkaAt time.Time
	var progress progressWatch
	var published, settling float64
	for {
		if err := relay.alive(); err != nil {
			return run, nil, err
		}
		st, err := db.slotState(ctx, slotName, endLSN)
		if err != nil {
			return run, nil, err
		}
		if time.Now().After(deadline) || progress.stalled(fmt.Sprint(published, settling, st.confirmed)) {
			return run, nil, b.stallDiagnose(ctx, db, relay, prof, endLSN)
		}
		if st.activePID > 0 {
			if cpu := processCPU(st.activePID); cpu >= 0 {
				run.WalsenderCPU = cpu
			}
		}
		m, err := relay.metrics(ctx, "outbox_relay_events_published_total", "outbox_relay_inflight_bytes", "outbox_relay_inflight_records")
		if err == nil {
			published, settling = m["outbox_relay_events_published_total"], m["outbox_relay_inflight_records"]
			run.MaxInflightMB = max(run.MaxInflightMB, m["outbox_relay_inflight_bytes"]/1e6)
			if kafkaAt.IsZero() && published >= float64(b.o.backlogRows) {
				kafkaAt = time.Now()
			}
		}
		if st.reachedEnd && !kafkaAt.IsZero() {
			break
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return run, nil, err
		}
	}
	run.Seconds = time.Since(t0).Seconds()
	run.KafkaSeconds = kafkaAt.Sub(t0).Seconds()
	run.MachineBusy = busySince(busy0)
	run.ReaderCPU = processCPU(relay.pid())
	run.CPU, cpuDone = cpuUse.finish(run.ReaderCPU), true
	run.EventsPerSec = float64(b.o.backlogRows) / run.Seconds
	b.logf("%s: relay drained in %.2fs (all acked by Kafka at %.2fs): %.0f events/s",
		db.name, run.Seconds, run.KafkaSeconds, run.EventsPerSec)

	var profiles []string
	if prof != nil {
		profiles = prof.finish(ctx)
	}
	if err := relay.stop(); err != nil {
		b.logf("%s: relay stop: %v", db.name, err)
	}
	run.RecordsInKafka, err = recordsIn(ctx, kafka)
	return run, profiles, err
}

// recordsIn sums the end offsets of the bench topic.
func recordsIn(ctx context.Context, kafka *devenv.Kafka) (int64, error) {
	ends, err := devenv.EndOffsets(ctx, kafka.Addrs(), []string{"^" + strings.ReplaceAll(topicName, ".", `\.`) + "$"})
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ends {
		n += e
	}
	return n, nil
}
