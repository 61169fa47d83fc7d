package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// liveReader is one reader the live scenarios measure: it moves the rows
// the producers insert to Kafka while a consumer reads them. liveReaders
// lists them; another reader is one more entry and its start function.
type liveReader struct {
	name     string // the Reader of the results
	short    string // in the database's name
	scenario string // the -scenarios name that runs it
	// ackMode is what the reader does with a published row (the ACK_MODE
	// `outbox-relay setup` runs with; "" is none), as reported.
	ackMode string
	// slot is the slot the reader streams, whose lag is sampled every
	// second; the relay's slot is dropped unless it is this one. Empty: the
	// reader does not stream.
	slot string
	// start starts the reader and returns once it is ready for the load.
	start func(ctx context.Context, b *bench, t liveTarget) (liveRunning, error)
	// available, when set, says whether the reader can run on this
	// machine; one that cannot is left out.
	available func(b *bench) bool
}

// liveTarget is where a live reader reads and publishes.
type liveTarget struct {
	db      *database
	brokers []string
	rate    int    // the load, events/s (for the names of profiles)
	profile bool   // take CPU and allocation profiles over the load (-profile)
	logPath string // a file for the reader's output
}

// liveRunning is a live reader at work.
type liveRunning interface {
	// alive returns an error when the reader has stopped by itself.
	alive() error
	// cpu is the reader's CPU seconds so far; 0 for a reader inside the
	// benchmark process, whose CPU is in the bench column.
	cpu() float64
	// startMeasuring is called when the timed load begins, after warm-up.
	startMeasuring(ctx context.Context)
	// stop ends the reader and returns its profile files; it is called once.
	stop(ctx context.Context) []string
}

// liveReaders are the live readers, in the order they run at each rate.
// A new reader's scenario is a -scenarios name at once (main.go runs the
// readers whose scenario is asked for); its runs get a table of their own
// in the report.
func liveReaders() []liveReader {
	return []liveReader{
		{name: readerRelay, short: "relay", scenario: "latency", ackMode: "delete", slot: slotName, start: startLiveRelay},
		{name: readerPolling, short: "polling", scenario: "polling", ackMode: "delete", start: startPoller},
		{name: readerDebezium, short: "debezium", scenario: "debezium", slot: debeziumSlot, start: startLiveDebezium,
			available: debeziumAvailable},
	}
}

// liveRelay is `outbox-relay run` with ACK_MODE=delete and every other
// setting default.
type liveRelay struct {
	t     liveTarget
	b     *bench
	relay *relayProcess
	prof  *cpuProfiler
}

func startLiveRelay(ctx context.Context, b *bench, t liveTarget) (liveRunning, error) {
	vars := map[string]string{
		"PG_URL":        t.db.url,
		"KAFKA_BROKERS": strings.Join(t.brokers, ","),
		"ACK_MODE":      "delete",
	}
	if t.profile {
		vars["PPROF"] = "true"
	}
	relay, err := startRelay(b.o.relayBin, vars, b.o.relayExtraEnv, t.logPath)
	if err != nil {
		return nil, err
	}
	if err := relay.waitReady(ctx, time.Minute); err != nil {
		relay.stop()
		return nil, err
	}
	return &liveRelay{t: t, b: b, relay: relay}, nil
}

func (r *liveRelay) alive() error       { return r.relay.alive() }
func (r *liveRelay) peakRSSMB() float64 { return kbToMB(processMemKB(r.relay.pid(), "VmHWM")) }
func (r *liveRelay) cpu() float64       { return max(0, processCPU(r.relay.pid())) }

func (r *liveRelay) startMeasuring(ctx context.Context) {
	if r.t.profile {
		r.prof = startCPUProfiler(ctx, r.relay, filepath.Join(r.b.o.outDir, "profile"), fmt.Sprintf("live-%d", r.t.rate))
	}
}

func (r *liveRelay) stop(ctx context.Context) []string {
	return r.b.stopRelay(ctx, r.relay, r.prof, r.t.db.name)
}

// livePoller is the polling baseline, a goroutine of this process.
type livePoller struct {
	cancel context.CancelFunc
	done   chan error
	err    error // what the poller returned, once it did
	ended  bool
}

func startPoller(ctx context.Context, _ *bench, t liveTarget) (liveRunning, error) {
	ctx, cancel := context.WithCancel(ctx)
	p := &livePoller{cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- runPoller(ctx, t.db.url, t.brokers) }()
	return p, nil
}

func (p *livePoller) alive() error {
	if !p.ended {
		select {
		case p.err = <-p.done:
			p.ended = true
		default:
			return nil
		}
	}
	return fmt.Errorf("poller stopped: %v", p.err)
}

func (p *livePoller) cpu() float64                   { return 0 }
func (p *livePoller) startMeasuring(context.Context) {}

func (p *livePoller) stop(context.Context) []string {
	p.cancel()
	if !p.ended {
		p.err, p.ended = <-p.done, true
	}
	return nil
}
