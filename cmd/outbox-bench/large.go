package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
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
	// MaxInflightMB is the largest outbox_relay_inflight_bytes sampled.
	MaxInflightMB  float64 `json:"max_inflight_mb"`
	RecordsInKafka int64   `json:"records_in_kafka"`
}

// largeTransaction runs scenario 4 against a relay that is already
// streaming when the transaction is written.
func (b *bench) largeTransaction(ctx context.Context) (*LargeResult, error) {
	res := &LargeResult{Rows: b.o.largeRows, AckMode: "delete"}
	db, err := b.freshDatabase(ctx, "large", "delete")
	if err != nil {
		return nil, err
	}
	defer b.drop(db)
	kafka, err := devenv.StartKafka(kfake.SeedTopics(3, topicName))
	if err != nil {
		return nil, err
	}
	defer kafka.Close()
	relay, err := startRelay(b.o.relayBin, map[string]string{
		"PG_URL":        db.url,
		"KAFKA_BROKERS": strings.Join(kafka.Addrs(), ","),
		"ACK_MODE":      "delete",
	}, filepath.Join(b.o.outDir, "logs", db.name+".log"))
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
	var maxInflight float64
	wg.Go(func() {
		for i := 0; sampleCtx.Err() == nil && i < 20000; i++ {
			if v, err := relay.metric(sampleCtx, "outbox_relay_inflight_bytes"); err == nil {
				maxInflight = max(maxInflight, v)
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

	deadline := time.Now().Add(10 * time.Minute)
	var kafkaAt time.Time
	for {
		if err := relay.alive(); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("relay did not drain the transaction within 10 minutes (see %s)", relay.log.Name())
		}
		if kafkaAt.IsZero() {
			if n, err := relay.metric(ctx, "outbox_relay_events_published_total"); err == nil && n >= float64(b.o.largeRows) {
				kafkaAt = time.Now()
			}
		}
		confirmed, _, err := db.slotState(ctx, slotName, endLSN)
		if err != nil {
			return nil, err
		}
		if confirmed && !kafkaAt.IsZero() {
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
	res.MaxInflightMB = maxInflight / 1e6
	// The rows are deleted by now: measure what the generator makes.
	db.conn.QueryRow(ctx, "SELECT avg(octet_length(("+b.payloadSQL("g")+")::text)) FROM generate_series(1, 1000) g").Scan(&res.PayloadBytes)
	if err := relay.stop(); err != nil {
		b.logf("%s: relay stop: %v", db.name, err)
	}
	res.RecordsInKafka, err = recordsIn(ctx, kafka)
	b.logf("%s: drained in %.1fs after commit; peak RSS %.0f MB", db.name, res.DrainSeconds, res.PeakRSSMB)
	return res, err
}

func kbToMB(kb int64) float64 {
	if kb < 0 {
		return -1
	}
	return float64(kb) * 1024 / 1e6
}
