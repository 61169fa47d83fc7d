package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// The names of the live readers, which the report's sections look up.
const (
	readerRelay   = "outbox-relay"
	readerPolling = "polling relay"
)

// pollInterval is the polling baseline's sleep after a poll that found less
// than a full batch.
const pollInterval = 100 * time.Millisecond

// LiveResult is one run of scenario 2 (the relay) or 3 (the poller).
type LiveResult struct {
	Reader       string  `json:"reader"`
	AckMode      string  `json:"ack_mode"`
	TargetRate   int     `json:"target_events_per_sec"`
	Seconds      float64 `json:"seconds"`
	TxnRows      int     `json:"rows_per_txn"`
	Producers    int     `json:"producer_connections"`
	AchievedRate float64 `json:"achieved_events_per_sec"`
	Events       int     `json:"events"`
	Received     int     `json:"received"`
	// Latency from the producer's commit return to the consumer's read, ms.
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
	// Slot lag (pg_current_wal_lsn() - confirmed_flush_lsn), sampled every
	// second: medians of the first and last few samples, and the largest.
	// Relay only.
	LagStartBytes int64   `json:"slot_lag_start_bytes,omitempty"`
	LagEndBytes   int64   `json:"slot_lag_end_bytes,omitempty"`
	LagMaxBytes   int64   `json:"slot_lag_max_bytes,omitempty"`
	MachineBusy   float64 `json:"machine_busy_percent"`
	// PeakRSSMB is the reader process's VmHWM at the end of the run (the
	// relay and Debezium's JVM; 0 for a reader inside this process).
	PeakRSSMB float64 `json:"peak_rss_mb,omitempty"`
	// CPU is where the machine's CPU went during the load, in cores.
	CPU CPUUse `json:"cpu_cores"`
	// Profiles of the relay over the run (-profile).
	Profiles []string `json:"profiles,omitempty"`
}

// live runs one live-load run: producers insert at rate for the configured
// duration while rd moves the rows to Kafka and a consumer reads them.
func (b *bench) live(ctx context.Context, rate int, rd liveReader) (LiveResult, error) {
	res := LiveResult{Reader: rd.name, AckMode: rd.ackMode, TargetRate: rate, TxnRows: b.o.liveTxn, Producers: b.o.producers}
	setupMode := rd.ackMode
	if setupMode == "" {
		setupMode = "none"
	}
	db, err := b.freshDatabase(ctx, fmt.Sprintf("live_%s_%d", rd.short, rate), setupMode)
	if err != nil {
		return res, err
	}
	defer b.drop(db)
	if rd.slot != slotName {
		// The reader does not stream the relay's slot; unread, it would only pin WAL.
		if _, err := db.conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slotName); err != nil {
			return res, fmt.Errorf("drop slot %s: %w", slotName, err)
		}
	}
	brokers, release, err := b.broker.fresh(ctx)
	if err != nil {
		return res, err
	}
	defer release()

	base := time.Now()
	events := rate * int(b.o.liveDuration/time.Second)
	cons, err := startConsumer(ctx, brokers, events, base)
	if err != nil {
		return res, err
	}
	defer cons.close()

	r, err := rd.start(ctx, b, liveTarget{db: db, brokers: brokers, profile: b.o.profile, rate: rate,
		logPath: filepath.Join(b.o.outDir, "logs", db.name+".log")})
	if err != nil {
		return res, err
	}
	stopped := false
	defer func() {
		if !stopped {
			r.stop(context.WithoutCancel(ctx))
		}
	}()

	// Warm up: the first records pay for connections and metadata lookups.
	warm := newProducer(b, db.url, warmTag, b.o.liveTxn, base)
	if err := warm.run(ctx, 1, 20*b.o.liveTxn, 200, nil); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	if err := cons.waitWarm(ctx, 20*b.o.liveTxn, 30*time.Second); err != nil {
		return res, err
	}

	b.logf("%s: %s under %d events/s (%d rows per transaction, %d connections) for %s",
		db.name, rd.name, rate, b.o.liveTxn, b.o.producers, b.o.liveDuration)
	var lags []int64
	lagDone := make(chan struct{})
	lagCtx, stopLag := context.WithCancel(ctx)
	go func() {
		defer close(lagDone)
		if rd.slot == "" {
			return
		}
		for i := 0; lagCtx.Err() == nil && i < 3600; i++ {
			if lag, err := db.slotLag(lagCtx, rd.slot); err == nil {
				lags = append(lags, lag)
			}
			sleep(lagCtx, time.Second)
		}
	}()
	busy0, cpuUse := machineCPU(), b.trackCPU()
	cpu0 := r.cpu()
	r.startMeasuring(ctx)
	commitAt := make([]int64, events)
	prod := newProducer(b, db.url, runTag, b.o.liveTxn, base)
	t0 := time.Now()
	if err := prod.run(ctx, b.o.producers, events, rate, commitAt); err != nil {
		stopLag()
		<-lagDone
		cpuUse.finish(0)
		return res, err
	}
	res.Seconds = time.Since(t0).Seconds()
	res.AchievedRate = float64(events) / res.Seconds
	stopLag()
	<-lagDone
	res.MachineBusy = busySince(busy0)
	res.CPU = cpuUse.finish(r.cpu() - cpu0)
	if err := r.alive(); err != nil {
		return res, err
	}
	// Stragglers: everything committed should arrive well within this.
	cons.waitAll(ctx, 20*time.Second)
	recvAt := cons.close()
	if m, ok := r.(interface{ peakRSSMB() float64 }); ok {
		res.PeakRSSMB = m.peakRSSMB()
	}
	res.Profiles, stopped = r.stop(ctx), true // after the reads: running pprof costs CPU

	res.Events = events
	var lat []float64
	for i := range events {
		if recvAt[i] != 0 && commitAt[i] != 0 {
			lat = append(lat, float64(recvAt[i]-commitAt[i])/1e6)
		}
	}
	res.Received = len(lat)
	slices.Sort(lat)
	res.P50Ms, res.P99Ms, res.P999Ms = percentile(lat, 0.50), percentile(lat, 0.99), percentile(lat, 0.999)
	if len(lat) > 0 {
		res.MaxMs = lat[len(lat)-1]
	}
	res.LagStartBytes, res.LagEndBytes, res.LagMaxBytes = lagSummary(lags)
	b.logf("%s: %d/%d received, achieved %.0f events/s; p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms",
		db.name, res.Received, events, res.AchievedRate, res.P50Ms, res.P99Ms, res.P999Ms, res.MaxMs)
	return res, nil
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// lagSummary returns the medians of the first and last five samples (fewer
// for short runs) and the largest sample.
func lagSummary(lags []int64) (start, end, most int64) {
	if len(lags) == 0 {
		return 0, 0, 0
	}
	w := max(1, min(5, len(lags)/4))
	median := func(s []int64) int64 {
		s = slices.Clone(s)
		slices.Sort(s)
		return s[len(s)/2]
	}
	return median(lags[:w]), median(lags[len(lags)-w:]), slices.Max(lags)
}

// Run tags: the first eight hex digits of the event ids the producers write.
const (
	runTag  = 0x00000001
	warmTag = 0xffffffff
)

// eventID is the uuid of event seq of a run: the consumer recovers both
// from the record's id header.
func eventID(tag uint32, seq int) string {
	return fmt.Sprintf("%08x-0000-4000-8000-%012x", tag, seq)
}

func parseEventID(id []byte) (tag uint32, seq int, ok bool) {
	if len(id) != 36 {
		return 0, 0, false
	}
	t, err1 := strconv.ParseUint(string(id[:8]), 16, 32)
	s, err2 := strconv.ParseUint(string(id[24:]), 16, 48)
	return uint32(t), int(s), err1 == nil && err2 == nil
}

// producer inserts outbox rows at a fixed rate, txnRows per transaction,
// and records when each commit returned.
type producer struct {
	b       *bench
	url     string
	tag     uint32
	txnRows int
	base    time.Time
}

func newProducer(b *bench, url string, tag uint32, txnRows int, base time.Time) *producer {
	return &producer{b: b, url: url, tag: tag, txnRows: txnRows, base: base}
}

const insertEvents = `INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
	SELECT u.id::uuid, '` + aggregateType + `', u.agg, 'bench.created', u.payload::jsonb
	FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, agg, payload)`

// run inserts events rows at rate events/s from conns connections, each
// transaction at its scheduled time (or at once when behind), and stores the
// commit-return time of row seq in commitAt[seq] (nanoseconds since base)
// unless commitAt is nil.
func (p *producer) run(ctx context.Context, conns, events, rate int, commitAt []int64) error {
	txns := (events + p.txnRows - 1) / p.txnRows
	interval := time.Duration(float64(time.Second) * float64(p.txnRows) / float64(rate))
	var connList []*pgx.Conn
	defer func() {
		for _, c := range connList {
			c.Close(context.WithoutCancel(ctx))
		}
	}()
	for range conns {
		c, err := pgx.Connect(ctx, p.url)
		if err != nil {
			return err
		}
		connList = append(connList, c)
	}
	start := time.Now().Add(50 * time.Millisecond)
	errs := make(chan error, conns)
	var wg sync.WaitGroup
	for w, conn := range connList {
		wg.Go(func() {
			ids := make([]string, 0, p.txnRows)
			aggs := make([]string, 0, p.txnRows)
			payloads := make([]string, 0, p.txnRows)
			for t := w; t < txns; t += conns {
				if err := sleep(ctx, time.Until(start.Add(time.Duration(t)*interval))); err != nil {
					errs <- err
					return
				}
				ids, aggs, payloads = ids[:0], aggs[:0], payloads[:0]
				first, last := t*p.txnRows, min((t+1)*p.txnRows, events)
				for seq := first; seq < last; seq++ {
					ids = append(ids, eventID(p.tag, seq))
					aggs = append(aggs, strconv.Itoa(seq%1000))
					payloads = append(payloads, p.b.payload(seq))
				}
				if _, err := conn.Exec(ctx, insertEvents, ids, aggs, payloads); err != nil {
					errs <- fmt.Errorf("insert events: %w", err)
					return
				}
				if commitAt != nil {
					now := int64(time.Since(p.base))
					for seq := first; seq < last; seq++ {
						commitAt[seq] = now
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// payload is the jsonb text of event seq, about payloadBytes long.
func (b *bench) payload(seq int) string {
	return fmt.Sprintf(`{"seq": %d, "customer": "customer-%d", "amount": %d.%02d, "currency": "EUR", "note": "%s"}`,
		seq, seq*7919%100000, seq%10000/100, seq%100, b.note)
}
