package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// readerDebezium names Debezium in the drain's and the live scenarios'
// tables.
const readerDebezium = "Debezium 3.6 (Kafka Connect)"

// debeziumSlot is Debezium's own slot in every scenario.
const debeziumSlot = "bench_debezium"

// debeziumJVMArgs are what connect-standalone.sh gives Kafka Connect
// (KAFKA_HEAP_OPTS -Xms256M -Xmx2G, kafka-run-class.sh's G1 options),
// replacing devenv's small-heap serial collector: Debezium runs as its
// users run it.
var debeziumJVMArgs = []string{"-Xms256m", "-Xmx2g", "-XX:-UseSerialGC", "-XX:+UseG1GC",
	"-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
	"-XX:MaxInlineLevel=15"}

// debeziumOptions are the connector's settings for a database: pgoutput,
// the outbox event router on the relay's default columns (so records go
// to the bench topic, keyed by aggregateid, with the id header), the
// payload's jsonb text as the value (StringConverter), and every other
// setting Connect's and Debezium's default (producer acks=all,
// max.in.flight 1, linger 5 ms; max.batch.size 2048).
func debeziumOptions(b *bench, db *database, brokers []string, logName string) devenv.DebeziumOptions {
	connector := maps.Clone(b.o.debeziumConfig)
	if connector == nil {
		connector = map[string]string{}
	}
	return devenv.DebeziumOptions{
		Connector:   connector,
		PostgresURL: db.url,
		Slot:        debeziumSlot,
		Publication: debeziumSlot,
		Brokers:     brokers,
		Converter:   devenv.DebeziumStringConverter,
		Heap:        "2g",
		JVMArgs:     debeziumJVMArgs,
		LogDir:      filepath.Join(b.o.outDir, "logs", logName),
	}
}

// debeziumDrainSetup and debeziumLiveSetup describe Debezium's runs in the
// report.
const (
	debeziumDrainSetup = "Debezium: its PostgreSQL connector 3.6.1 with the outbox event router, run by Kafka Connect " +
		"standalone (connect-standalone.sh's JVM options: -Xms256M -Xmx2G, G1), `plugin.name=pgoutput`, a slot of its own made " +
		"before the backlog, the relay's publication (a publication made after the rows would not cover them), " +
		"`StringConverter`, every other setting default (producer acks=all); timed from the JVM's start, which is included, " +
		"until the bench topic's end offsets add up to the backlog's rows; its CPU is the JVM's."
	debeziumLiveSetup = "Debezium: its PostgreSQL connector 3.6.1 with the outbox event router, run by Kafka Connect " +
		"standalone (-Xms256M -Xmx2G, G1), `plugin.name=pgoutput`, a slot and a publication it makes at its start, " +
		"`StringConverter`, every other setting default (producer acks=all, linger 5 ms); rows are not deleted. " +
		"CPU per 100k events is the JVM's CPU seconds over the load; peak RSS is its VmHWM."
)

// debeziumConfigText renders -debezium-config for the report, keys sorted.
func debeziumConfigText(c map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(c)) {
		parts = append(parts, k+"="+c[k])
	}
	return strings.Join(parts, ",")
}

// debeziumAvailable says whether Debezium can run here; without java or
// mvn its runs are left out, with a line saying why.
func debeziumAvailable(b *bench) bool {
	if err := devenv.DebeziumAvailable(); err != nil {
		b.logf("Debezium left out: %v", err)
		return false
	}
	return true
}

// debeziumDrain is Debezium on a slot made before the backlog was written:
// done once the bench topic holds a record for every row. Its publication
// is the relay's (insert-only, the outbox table): pgoutput decodes a change
// with the catalog of its time, so a publication made after the backlog
// would not cover it.
type debeziumDrain struct {
	b        *bench
	t        drainTarget
	dbz      *devenv.Debezium
	started  time.Time
	deadline time.Time
	// startSeconds is how long StartDebezium took: the JVM's start until
	// the task streams, part of the drain's time.
	startSeconds float64
}

func startDrainDebezium(ctx context.Context, b *bench, t drainTarget) (drainingReader, error) {
	opts := debeziumOptions(b, t.db, t.brokers, t.db.name+"-debezium")
	opts.Slot, opts.Publication = t.slot, publicationName
	if _, ok := opts.Connector["publication.autocreate.mode"]; !ok {
		opts.Connector["publication.autocreate.mode"] = "disabled"
	}
	r := &debeziumDrain{b: b, t: t, started: time.Now(), deadline: time.Now().Add(debeziumDrainTimeout(b.o.backlogRows))}
	dbz, err := devenv.StartDebezium(ctx, opts)
	if err != nil {
		return nil, err
	}
	r.dbz = dbz
	r.startSeconds = time.Since(r.started).Seconds()
	b.logf("%s: Debezium streaming %.1fs after its start", t.db.name, r.startSeconds)
	return r, nil
}

// debeziumDrainTimeout bounds Debezium's drain: it moved 7–9k events/s
// here, a tenth of the relay's, so the relay's bound would be too short.
func debeziumDrainTimeout(rows int) time.Duration {
	return max(3*time.Minute, time.Duration(rows/1000)*time.Second)
}

func (r *debeziumDrain) poll(ctx context.Context, _ slotState, run *DrainRun) (bool, error) {
	if time.Now().After(r.deadline) {
		return false, fmt.Errorf("debezium: backlog not in Kafka after %s:\n%s", debeziumDrainTimeout(r.b.o.backlogRows), r.dbz.LogTail(30))
	}
	if err := debeziumAlive(ctx, r.dbz); err != nil {
		return false, err
	}
	n, err := recordsIn(ctx, r.t.brokers)
	if err != nil || n < int64(r.b.o.backlogRows) {
		return false, nil // the broker's answer may lag; asked again in 50 ms
	}
	run.KafkaSeconds = time.Since(r.started).Seconds()
	run.StartSeconds = r.startSeconds
	run.PeakRSSMB = kbToMB(processMemKB(r.dbz.Pid(), "VmHWM"))
	return true, nil
}

func (r *debeziumDrain) cpu() float64 { return max(0, processCPU(r.dbz.Pid())) }

func (r *debeziumDrain) finish(context.Context) []string {
	if err := r.dbz.Close(); err != nil {
		r.b.logf("%s: debezium close: %v", r.t.db.name, err)
	}
	return nil
}

// debeziumAlive returns an error when the connector's task failed or
// Kafka Connect exited.
func debeziumAlive(ctx context.Context, d *devenv.Debezium) error {
	if d.Exited() {
		return errors.New("debezium: kafka connect exited:\n" + d.LogTail(30))
	}
	st, err := d.Status(ctx)
	if err != nil {
		return nil // a slow answer is no verdict
	}
	if len(st.Tasks) > 0 && st.Tasks[0].State == "FAILED" {
		return fmt.Errorf("debezium: task failed: %s", st.Tasks[0].Trace)
	}
	return nil
}

// liveDebezium is Debezium under the live load, with a slot and
// publication it makes itself at its start.
type liveDebezium struct {
	b   *bench
	t   liveTarget
	dbz *devenv.Debezium
}

func startLiveDebezium(ctx context.Context, b *bench, t liveTarget) (liveRunning, error) {
	dbz, err := devenv.StartDebezium(ctx, debeziumOptions(b, t.db, t.brokers, t.db.name+"-debezium"))
	if err != nil {
		return nil, err
	}
	return &liveDebezium{b: b, t: t, dbz: dbz}, nil
}

func (r *liveDebezium) alive() error                   { return debeziumAlive(context.Background(), r.dbz) }
func (r *liveDebezium) cpu() float64                   { return max(0, processCPU(r.dbz.Pid())) }
func (r *liveDebezium) startMeasuring(context.Context) {}
func (r *liveDebezium) peakRSSMB() float64             { return kbToMB(processMemKB(r.dbz.Pid(), "VmHWM")) }

func (r *liveDebezium) stop(context.Context) []string {
	if err := r.dbz.Close(); err != nil {
		r.b.logf("%s: debezium close: %v", r.t.db.name, err)
	}
	return nil
}
