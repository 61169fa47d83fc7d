package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
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

// DrainRun is one reader draining the backlog.
type DrainRun struct {
	Reader string `json:"reader"`
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
	// BenchCPU is CPU seconds of the benchmark process, which hosts the
	// kfake broker (relay runs only: pg_recvlogical needs no broker).
	BenchCPU float64 `json:"bench_process_cpu_seconds,omitempty"`
	// MachineBusy is the share of all cores busy during the run, percent.
	MachineBusy    float64 `json:"machine_busy_percent"`
	RecordsInKafka int64   `json:"records_in_kafka,omitempty"`
	PayloadBytes   float64 `json:"payload_bytes_avg"`
	WALBytes       int64   `json:"wal_bytes"`
}

// BacklogResult is scenario 1.
type BacklogResult struct {
	Rows           int        `json:"rows"`
	TxnRows        int        `json:"rows_per_txn"`
	StatusInterval string     `json:"relay_status_interval"`
	Runs           []DrainRun `json:"runs"`
	// Ratios of events/s, and delete's time over none's.
	NoneVsRecvlogical   float64  `json:"relay_none_vs_pg_recvlogical"`
	DeleteVsRecvlogical float64  `json:"relay_delete_vs_pg_recvlogical"`
	DeleteTimeVsNone    float64  `json:"delete_time_vs_none"`
	Profiles            []string `json:"profiles,omitempty"`
	Profiled            bool     `json:"profiled"`
}

// backlogDrain runs scenario 1: the same backlog, in a fresh database each
// time, drained by pg_recvlogical and by the relay with ACK_MODE none and
// delete.
func (b *bench) backlogDrain(ctx context.Context) (*BacklogResult, error) {
	res := &BacklogResult{Rows: b.o.backlogRows, TxnRows: b.o.backlogTxn, StatusInterval: drainStatusInterval, Profiled: b.o.profile}
	run, err := b.drainRecvlogical(ctx)
	if err != nil {
		return nil, err
	}
	res.Runs = append(res.Runs, run)
	for _, mode := range []string{"none", "delete"} {
		run, profiles, err := b.drainRelay(ctx, mode)
		if err != nil {
			return nil, err
		}
		res.Runs = append(res.Runs, run)
		res.Profiles = append(res.Profiles, profiles...)
	}
	recv, none, del := res.Runs[0], res.Runs[1], res.Runs[2]
	res.NoneVsRecvlogical = ratio(none.EventsPerSec, recv.EventsPerSec)
	res.DeleteVsRecvlogical = ratio(del.EventsPerSec, recv.EventsPerSec)
	res.DeleteTimeVsNone = ratio(del.Seconds, none.Seconds)
	return res, nil
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
	run.Reader = "pg_recvlogical (floor)"
	b.logf("%s: %s", db.name, strings.Join(cmd.Args, " "))
	busy0 := machineCPU()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
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
				return run, fmt.Errorf("pg_recvlogical: %w", err)
			}
			waiting = false
		case <-tick.C:
			if _, pid, err := db.slotState(ctx, slot, endLSN); err == nil && pid > 0 {
				if cpu := processCPU(pid); cpu >= 0 {
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
	run.EventsPerSec = float64(b.o.backlogRows) / run.Seconds
	b.logf("%s: pg_recvlogical drained in %.2fs (%.0f events/s)", db.name, run.Seconds, run.EventsPerSec)
	return run, nil
}

// drainRelay times the relay with ackMode from its start until every record
// is acked and the slot confirmed the backlog's end.
func (b *bench) drainRelay(ctx context.Context, ackMode string) (DrainRun, []string, error) {
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
	if b.o.profile {
		vars["PPROF"] = "true"
	}
	run.Reader = "outbox-relay, ACK_MODE=" + ackMode
	busy0, self0 := machineCPU(), selfCPU()
	t0 := time.Now()
	relay, err := startRelay(b.o.relayBin, vars, filepath.Join(b.o.outDir, "logs", db.name+".log"))
	if err != nil {
		return run, nil, err
	}
	defer relay.stop()
	var prof *cpuProfiler
	if b.o.profile {
		prof = startCPUProfiler(ctx, relay, filepath.Join(b.o.outDir, "profile"), "drain-"+ackMode)
	}

	deadline := time.Now().Add(10 * time.Minute)
	var kafkaAt time.Time
	for {
		if err := relay.alive(); err != nil {
			return run, nil, err
		}
		if time.Now().After(deadline) {
			return run, nil, fmt.Errorf("relay did not drain %d rows within 10 minutes (see %s)", b.o.backlogRows, relay.log.Name())
		}
		confirmed, pid, err := db.slotState(ctx, slotName, endLSN)
		if err != nil {
			return run, nil, err
		}
		if pid > 0 {
			if cpu := processCPU(pid); cpu >= 0 {
				run.WalsenderCPU = cpu
			}
		}
		if kafkaAt.IsZero() {
			if n, err := relay.metric(ctx, "outbox_relay_events_published_total"); err == nil && n >= float64(b.o.backlogRows) {
				kafkaAt = time.Now()
			}
		}
		if confirmed && !kafkaAt.IsZero() {
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
	run.BenchCPU = selfCPU() - self0
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
