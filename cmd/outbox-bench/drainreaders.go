package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// drainReader is one reader the backlog drain times. drainReaders lists
// them in the order they take turns in each round; another reader is one
// more entry and its start function.
type drainReader struct {
	name string // the Reader column of the tables
	// ackMode is the ACK_MODE `outbox-relay setup` runs with in the
	// reader's database.
	ackMode string
	// slot, when set, is a pgoutput slot of the reader's own, created
	// before the backlog is written (so it sees every row); the relay's
	// slot is dropped then, so that it pins nothing. Empty: the reader
	// streams the relay's slot.
	slot string
	// kafka says that the reader publishes: its run gets an empty bench
	// topic, and the records it left there are counted afterwards.
	kafka bool
	// start starts the reader; the run is timed from the call.
	start func(ctx context.Context, b *bench, t drainTarget) (drainingReader, error)
	// available, when set, says whether the reader can run on this
	// machine; one that cannot is left out of every round.
	available func(b *bench) bool
}

// drainTarget is the backlog a reader drains.
type drainTarget struct {
	db      *database
	ackMode string
	slot    string   // the slot the reader streams
	endLSN  string   // pg_current_wal_lsn() after the backlog
	brokers []string // the broker's addresses, when the reader publishes
	profile bool     // take CPU and allocation profiles (-profile, round 1)
	logPath string   // a file for the reader's output
}

// drainingReader is a reader at work on the backlog.
type drainingReader interface {
	// poll reports whether the backlog is drained; st is the reader's slot
	// now. It may note figures in run. An error ends the run; a
	// *stallError makes the round repeat it in a fresh database.
	poll(ctx context.Context, st slotState, run *DrainRun) (done bool, err error)
	// cpu is the reader's CPU seconds since it started: so far while it
	// runs, in total once it has exited.
	cpu() float64
	// finish ends the reader (after the timing, or after an error) and
	// returns its profile files. It is called once.
	finish(ctx context.Context) []string
}

// The names of the drain's readers, which the ratios and targets look up.
const (
	readerRecvlogical = "pg_recvlogical"
	readerRelayNone   = "outbox-relay, ACK_MODE=none"
	readerRelayDelete = "outbox-relay, ACK_MODE=delete"
)

// drainReaders are the readers of the drain, in the order they take turns.
// A reader that publishes on a slot of its own (Debezium, say) is
// {name, ackMode: "none", slot: "<its slot>", kafka: true, start}: its slot
// exists before the backlog is written, so it sees every row, and its poll
// reports done once t.brokers hold every row (recordsIn counts them).
// Ratios against it go in backlogDrain and the report by its name.
func drainReaders() []drainReader {
	return []drainReader{
		{name: readerRecvlogical, ackMode: "none", slot: "bench_recvlogical", start: startRecvlogical},
		{name: readerRelayNone, ackMode: "none", kafka: true, start: startDrainRelay},
		{name: readerRelayDelete, ackMode: "delete", kafka: true, start: startDrainRelay},
		{name: readerDebezium, ackMode: "none", slot: debeziumSlot, kafka: true, start: startDrainDebezium,
			available: debeziumAvailable},
	}
}

// drain times rd once on a fresh backlog.
func (b *bench) drain(ctx context.Context, rd drainReader, profile bool) (DrainRun, []string, error) {
	label := strings.NewReplacer("outbox-relay, ACK_MODE=", "", "pg_", "", "-", "_", " ", "_", "(", "", ")", "", ".", "").
		Replace(strings.ToLower(rd.name))
	db, endLSN, run, err := b.prepareBacklog(ctx, "drain_"+label, rd.ackMode, rd.slot)
	if err != nil {
		return run, nil, err
	}
	defer b.drop(db)
	t := drainTarget{db: db, ackMode: rd.ackMode, slot: rd.slot, endLSN: endLSN, profile: profile,
		logPath: filepath.Join(b.o.outDir, "logs", db.name+".log")}
	if t.slot == "" {
		t.slot = slotName
	} else if _, err := db.conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slotName); err != nil {
		return run, nil, fmt.Errorf("drop slot %s: %w", slotName, err)
	}
	if rd.kafka {
		addrs, release, err := b.broker.fresh(ctx)
		if err != nil {
			return run, nil, err
		}
		defer release()
		t.brokers = addrs
	}

	run.Reader = rd.name
	busy0, cpuUse := machineCPU(), b.trackCPU()
	t0 := time.Now()
	r, err := rd.start(ctx, b, t)
	if err != nil {
		cpuUse.finish(0)
		return run, nil, err
	}
	for {
		st, err := db.slotState(ctx, t.slot, endLSN)
		if err == nil && st.activePID > 0 {
			if cpu := processCPU(st.activePID); cpu >= 0 {
				run.WalsenderCPU = cpu
			}
		}
		done := false
		if err == nil {
			done, err = r.poll(ctx, st, &run)
		}
		if err == nil && !done {
			err = sleep(ctx, 50*time.Millisecond)
		}
		if err != nil {
			cpuUse.finish(0)
			r.finish(ctx)
			return run, nil, err
		}
		if done {
			break
		}
	}
	run.Seconds = time.Since(t0).Seconds()
	run.MachineBusy = busySince(busy0)
	run.ReaderCPU = r.cpu()
	run.CPU = cpuUse.finish(run.ReaderCPU)
	run.EventsPerSec = float64(b.o.backlogRows) / run.Seconds
	b.logf("%s: %s drained in %.2fs: %.0f events/s", db.name, rd.name, run.Seconds, run.EventsPerSec)
	profiles := r.finish(ctx)
	if rd.kafka {
		run.RecordsInKafka, err = recordsIn(ctx, t.brokers)
	}
	return run, profiles, err
}

// recvlogicalDrain is pg_recvlogical on a slot of its own, with the
// relay's publication and protocol, writing to /dev/null until --endpos.
type recvlogicalDrain struct {
	cmd    *exec.Cmd
	done   chan error
	exited bool
	cancel context.CancelFunc
}

func startRecvlogical(ctx context.Context, b *bench, t drainTarget) (drainingReader, error) {
	bin, err := b.recvlogicalPath()
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	cmd := exec.CommandContext(runCtx, bin, "-d", t.db.url, "--slot", t.slot, "--start",
		"-o", "proto_version=1", "-o", "publication_names="+publicationName,
		"--endpos", t.endLSN, "--no-loop", "-f", "/dev/null")
	b.logf("%s: %s", t.db.name, strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start pg_recvlogical: %w", err)
	}
	r := &recvlogicalDrain{cmd: cmd, done: make(chan error, 1), cancel: cancel}
	go func() { r.done <- cmd.Wait() }()
	return r, nil
}

func (r *recvlogicalDrain) poll(_ context.Context, _ slotState, _ *DrainRun) (bool, error) {
	select {
	case err := <-r.done:
		r.exited = true
		if err != nil {
			return false, fmt.Errorf("pg_recvlogical: %w", err)
		}
		return true, nil
	default:
		return false, nil
	}
}

func (r *recvlogicalDrain) cpu() float64 {
	if ps := r.cmd.ProcessState; ps != nil {
		return (ps.UserTime() + ps.SystemTime()).Seconds()
	}
	return max(0, processCPU(r.cmd.Process.Pid))
}

func (r *recvlogicalDrain) finish(context.Context) []string {
	r.cancel()
	if !r.exited {
		<-r.done
	}
	return nil
}

// relayDrain is `outbox-relay run` draining the backlog: done when every
// record is acked by Kafka and the slot confirmed the backlog's end.
type relayDrain struct {
	b        *bench
	t        drainTarget
	relay    *relayProcess
	prof     *cpuProfiler
	started  time.Time
	deadline time.Time
	kafkaAt  time.Time
	progress progressWatch
	// published and settling are the last samples of
	// outbox_relay_events_published_total and _inflight_records.
	published, settling float64
}

func startDrainRelay(ctx context.Context, b *bench, t drainTarget) (drainingReader, error) {
	vars := map[string]string{
		"PG_URL":          t.db.url,
		"KAFKA_BROKERS":   strings.Join(t.brokers, ","),
		"ACK_MODE":        t.ackMode,
		"STATUS_INTERVAL": drainStatusInterval,
	}
	if t.profile {
		vars["PPROF"] = "true"
	}
	r := &relayDrain{b: b, t: t, started: time.Now(), deadline: time.Now().Add(drainTimeout(b.o.backlogRows))}
	relay, err := startRelay(b.o.relayBin, vars, b.o.relayExtraEnv, t.logPath)
	if err != nil {
		return nil, err
	}
	r.relay = relay
	if t.profile {
		r.prof = startCPUProfiler(ctx, relay, filepath.Join(b.o.outDir, "profile"), "drain-"+t.ackMode)
	}
	return r, nil
}

func (r *relayDrain) poll(ctx context.Context, st slotState, run *DrainRun) (bool, error) {
	if err := r.relay.alive(); err != nil {
		return false, err
	}
	if time.Now().After(r.deadline) || r.progress.stalled(fmt.Sprint(r.published, r.settling, st.confirmed)) {
		err := r.b.stallDiagnose(ctx, r.t.db, r.relay, r.prof, r.t.endLSN)
		r.prof = nil // stallDiagnose finished it
		return false, err
	}
	m, err := r.relay.metrics(ctx, "outbox_relay_events_published_total", "outbox_relay_inflight_bytes", "outbox_relay_inflight_records")
	if err == nil {
		r.published, r.settling = m["outbox_relay_events_published_total"], m["outbox_relay_inflight_records"]
		run.MaxInflightMB = max(run.MaxInflightMB, m["outbox_relay_inflight_bytes"]/1e6)
		if r.kafkaAt.IsZero() && r.published >= float64(r.b.o.backlogRows) {
			r.kafkaAt = time.Now()
			run.KafkaSeconds = r.kafkaAt.Sub(r.started).Seconds()
		}
	}
	done := st.reachedEnd && !r.kafkaAt.IsZero()
	if done {
		run.PeakRSSMB = kbToMB(processMemKB(r.relay.pid(), "VmHWM"))
	}
	return done, nil
}

func (r *relayDrain) cpu() float64 { return processCPU(r.relay.pid()) }

func (r *relayDrain) finish(ctx context.Context) []string {
	return r.b.stopRelay(ctx, r.relay, r.prof, r.t.db.name)
}

// stopRelay finishes the relay's profiles (prof may be nil), then stops it;
// it returns the profile files.
func (b *bench) stopRelay(ctx context.Context, relay *relayProcess, prof *cpuProfiler, run string) []string {
	var profiles []string
	if prof != nil {
		profiles = prof.finish(ctx)
	}
	if err := relay.stop(); err != nil {
		b.logf("%s: relay stop: %v", run, err)
	}
	return profiles
}
