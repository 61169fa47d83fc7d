package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// LargeResult is scenario 4: one transaction of many rows through a relay
// with the default in-flight cap.
type LargeResult struct {
	Rows         int     `json:"rows"`
	PayloadBytes float64 `json:"payload_bytes_avg"`
	WALBytes     int64   `json:"wal_bytes"`
	AckMode      string  `json:"ack_mode"`
	// InsertSeconds is the INSERT … SELECT until its commit returned.
	InsertSeconds float64 `json:"insert_seconds"`
	// DrainSeconds runs from the commit's return until every record was
	// acked and the slot confirmed the transaction; KafkaSeconds until every
	// record was acked.
	DrainSeconds float64 `json:"drain_seconds"`
	KafkaSeconds float64 `json:"kafka_seconds"`
	EventsPerSec float64 `json:"events_per_sec"`
	// Memory of the relay process: VmRSS when idle before the insert, and
	// the peak (VmHWM) at the end, in MB (10^6 bytes).
	IdleRSSMB float64 `json:"idle_rss_mb"`
	PeakRSSMB float64 `json:"peak_rss_mb"`
	// MaxInflightMB is the largest outbox_relay_inflight_bytes sampled;
	// MaxHeapMB the largest go_memstats_heap_inuse_bytes (the Go heap in
	// use, the part of RSS the in-flight cap is meant to bound).
	MaxInflightMB float64 `json:"max_inflight_mb"`
	MaxHeapMB     float64 `json:"max_heap_inuse_mb"`
	// Profiles (-profile): CPU over the drain, the heap when in-flight
	// bytes first passed half the cap, allocations and heap at the end.
	Profiles       []string `json:"profiles,omitempty"`
	RecordsInKafka int64    `json:"records_in_kafka"`
	// Stalls are runs whose relay stopped making progress and were repeated.
	Stalls []*stallError `json:"stalls,omitempty"`
}

// defaultMaxInflight is the relay's default MAX_INFLIGHT_BYTES (64 MiB).
const defaultMaxInflight = 64 << 20

// largeTransaction runs scenario 4, repeating a run whose relay stalled.
func (b *bench) largeTransaction(ctx context.Context) (*LargeResult, error) {
	var stalls []*stallError
	for {
		res, err := b.largeTransactionOnce(ctx)
		var stall *stallError
		if errors.As(err, &stall) && len(stalls) < maxStallRetries {
			stalls = append(stalls, stall)
			b.logf("repeating the run in a fresh database")
			continue
		}
		if res != nil {
			res.Stalls = stalls
		}
		return res, err
	}
}

// largeTransactionOnce runs scenario 4 against a relay that is already
// streaming when the transaction is written.
func (b *bench) largeTransactionOnce(ctx context.Context) (*LargeResult, error) {
	res := &LargeResult{Rows: b.o.largeRows, AckMode: "delete"}
	db, err := b.freshDatabase(ctx, "large", "delete")
	if err != nil {
		return nil, err
	}
	defer b.drop(db)
	brokers, release, err := b.broker.fresh(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	vars := map[string]string{
		"PG_URL":        db.url,
		"KAFKA_BROKERS": strings.Join(brokers, ","),
		"ACK_MODE":      "delete",
	}
	if b.o.profile {
		vars["PPROF"] = "true"
	}
	relay, err := startRelay(b.o.relayBin, vars, b.o.relayExtraEnv, filepath.Join(b.o.outDir, "logs", db.name+".log"))
	if err != nil {
		return nil, err
	}
	defer relay.stop()
	if err := relay.waitReady(ctx, time.Minute); err != nil {
		return nil, err
	}
	res.IdleRSSMB = kbToMB(processMemKB(relay.pid(), "VmRSS"))

	// Sample in-flight bytes while the relay works (RSS peaks are in VmHWM).
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var maxInflight, maxHeap float64
	profileDir := filepath.Join(b.o.outDir, "profile")
	peakHeap := filepath.Join(profileDir, "large-heap-peak.pb.gz")
	var peakTaken bool
	wg.Go(func() {
		for i := 0; sampleCtx.Err() == nil && i < 20000; i++ {
			m, err := relay.metrics(sampleCtx, "outbox_relay_inflight_bytes", "go_memstats_heap_inuse_bytes")
			if err == nil {
				maxInflight = max(maxInflight, m["outbox_relay_inflight_bytes"])
				maxHeap = max(maxHeap, m["go_memstats_heap_inuse_bytes"])
				if b.o.profile && !peakTaken && m["outbox_relay_inflight_bytes"] >= defaultMaxInflight*95/100 {
					os.MkdirAll(profileDir, 0o755)
					peakTaken = relay.fetch(sampleCtx, "/debug/pprof/heap?gc=1", peakHeap) == nil
				}
			}
			sleep(sampleCtx, 100*time.Millisecond)
		}
	})
	defer func() {
		stopSampling()
		wg.Wait()
	}()

	startLSN, err := db.walLSN(ctx)
	if err != nil {
		return nil, err
	}
	var prof *cpuProfiler
	if b.o.profile {
		prof = startCPUProfiler(ctx, relay, profileDir, "large")
	}
	b.logf("%s: one transaction of %d rows (INSERT … SELECT generate_series)", db.name, b.o.largeRows)
	t0 := time.Now()
	_, err = db.conn.Exec(ctx, fmt.Sprintf(`INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
		SELECT '%s', (g %% 1000)::text, 'bench.created', %s FROM generate_series(1, $1::int) g`,
		aggregateType, b.payloadSQL("g")), b.o.largeRows)
	if err != nil {
		return nil, fmt.Errorf("insert the large transaction: %w", err)
	}
	committed := time.Now()
	res.InsertSeconds = committed.Sub(t0).Seconds()
	endLSN, err := db.walLSN(ctx)
	if err != nil {
		return nil, err
	}
	db.conn.QueryRow(ctx, "SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint", endLSN, startLSN).Scan(&res.WALBytes)
	b.logf("%s: committed after %.1fs (%.0f MB of WAL); draining", db.name, res.InsertSeconds, float64(res.WALBytes)/1e6)

	timeout := drainTimeout(b.o.largeRows)
	deadline := time.Now().Add(timeout)
	var kafkaAt time.Time
	var progress progressWatch
	var published, settling float64
	for {
		if err := relay.alive(); err != nil {
			return nil, err
		}
		if m, err := relay.metrics(ctx, "outbox_relay_events_published_total", "outbox_relay_inflight_records"); err == nil {
			published, settling = m["outbox_relay_events_published_total"], m["outbox_relay_inflight_records"]
			if kafkaAt.IsZero() && published >= float64(b.o.largeRows) {
				kafkaAt = time.Now()
			}
		}
		st, err := db.slotState(ctx, slotName, endLSN)
		if err != nil {
			return nil, err
		}
		if time.Now().After(deadline) || progress.stalled(fmt.Sprint(published, settling, st.confirmed)) {
			return nil, b.stallDiagnose(ctx, db, relay, prof, endLSN)
		}
		if st.reachedEnd && !kafkaAt.IsZero() {
			break
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}
	res.DrainSeconds = time.Since(committed).Seconds()
	res.KafkaSeconds = kafkaAt.Sub(committed).Seconds()
	res.EventsPerSec = float64(b.o.largeRows) / res.DrainSeconds
	res.PeakRSSMB = kbToMB(processMemKB(relay.pid(), "VmHWM"))
	stopSampling()
	wg.Wait()
	res.MaxInflightMB, res.MaxHeapMB = maxInflight/1e6, maxHeap/1e6
	if prof != nil {
		res.Profiles = prof.finish(ctx)
		if peakTaken {
			res.Profiles = append(res.Profiles, peakHeap)
		}
	}
	// The rows are deleted by now: measure what the generator makes.
	db.conn.QueryRow(ctx, "SELECT avg(octet_length(("+b.payloadSQL("g")+")::text)) FROM generate_series(1, 1000) g").Scan(&res.PayloadBytes)
	if err := relay.stop(); err != nil {
		b.logf("%s: relay stop: %v", db.name, err)
	}
	res.RecordsInKafka, err = recordsIn(ctx, brokers)
	b.logf("%s: drained in %.1fs after commit; peak RSS %.0f MB", db.name, res.DrainSeconds, res.PeakRSSMB)
	return res, err
}

func kbToMB(kb int64) float64 {
	if kb < 0 {
		return -1
	}
	return float64(kb) * 1024 / 1e6
}
