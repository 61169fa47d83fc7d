package relay

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Metrics are the relay's Prometheus collectors. Names are a public
// interface: dashboards and alerts depend on them.
type Metrics struct {
	published     prometheus.Counter
	deadLettered  *prometheus.CounterVec
	transactions  prometheus.Counter
	commitToAck   prometheus.Histogram
	inflightBytes prometheus.Gauge
	inflightRecs  prometheus.Gauge
	confirmedLSN  prometheus.Gauge
	brokerErrors  *prometheus.CounterVec
	reconnects    prometheus.Counter
	leader        prometheus.Gauge
	slotRetained  prometheus.Gauge
	confirmedLag  prometheus.Gauge
	backfillRows  prometheus.Gauge
	backfillDone  prometheus.Gauge
	oldestUnacked prometheus.Gauge
	heartbeats    prometheus.Counter
	ackMissing    prometheus.Counter
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_relay_events_published_total",
			Help: "Outbox rows published to their topic and acked by Kafka.",
		}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outbox_relay_events_dead_lettered_total",
			Help: "Outbox rows published to the dead-letter topic, by reason.",
		}, []string{"reason"}),
		transactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_relay_transactions_total",
			Help: "Transactions received from the replication stream.",
		}),
		commitToAck: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "outbox_relay_commit_to_ack_seconds",
			Help:    "Time from a transaction's commit in Postgres to Kafka's ack of its records.",
			Buckets: []float64{.001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		inflightBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_inflight_bytes",
			Help: "Bytes of records handed to the publisher and not yet acked.",
		}),
		inflightRecs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_inflight_records",
			Help: "Records handed to the publisher and not yet acked.",
		}),
		confirmedLSN: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_confirmed_lsn",
			Help: "Flush position last confirmed to Postgres, as a number.",
		}),
		brokerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outbox_relay_broker_errors_total",
			Help: "Kafka errors, by kind: a permanent rejection's reason, or a retried error's Kafka code name, network or timeout.",
		}, []string{"kind"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_relay_reconnects_total",
			Help: "Streaming sessions restarted after an error.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_leader",
			Help: "1 while this instance holds the leader lock and streams, 0 otherwise.",
		}),
		slotRetained: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_slot_retained_wal_bytes",
			Help: "WAL the replication slot keeps on the server (pg_current_wal_lsn() - restart_lsn).",
		}),
		confirmedLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_slot_confirmed_lag_bytes",
			Help: "WAL written but not yet confirmed by the relay (pg_current_wal_lsn() - confirmed_flush_lsn), sampled by the leader.",
		}),
		backfillRows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_backfill_rows",
			Help: "Unacked rows the last backfill (after creating the slot) found in the slot's snapshot; 0 before any backfill.",
		}),
		backfillDone: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_backfill_rows_done",
			Help: "Rows of the last backfill published and acked so far; equals outbox_relay_backfill_rows when it finished.",
		}),
		oldestUnacked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_oldest_unacked_age_seconds",
			Help: "Age of the oldest outbox row whose delivery is not recorded yet (ACK_MODE delete/mark).",
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_relay_heartbeats_total",
			Help: "Heartbeat messages written with pg_logical_emit_message.",
		}),
		ackMissing: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_relay_ack_rows_missing_total",
			Help: "Delivered rows that were already deleted or marked when the relay recorded their delivery (re-sent after a restart).",
		}),
	}
	// Series exist from the start, so rate() and increase() see the first event.
	for _, reason := range []string{outbox.ReasonMessageTooLarge, outbox.ReasonUnknownTopic, outbox.ReasonInvalidTopic, outbox.ReasonTopicAuthFailed,
		outbox.ReasonInvalidRecord, outbox.ReasonRejected, outbox.ReasonDecodeError, outbox.ReasonUnackedAfterGrace} {
		m.deadLettered.WithLabelValues(reason)
		m.brokerErrors.WithLabelValues(reason)
	}
	for _, kind := range []string{"network", "timeout", "unknown_topic_or_partition"} {
		m.brokerErrors.WithLabelValues(kind)
	}
	reg.MustRegister(m.ackMissing, m.published, m.deadLettered, m.transactions, m.commitToAck, m.inflightBytes,
		m.inflightRecs, m.confirmedLSN, m.brokerErrors, m.reconnects, m.leader, m.slotRetained,
		m.oldestUnacked, m.heartbeats, m.confirmedLag, m.backfillRows, m.backfillDone)
	return m
}

// NewRegistry returns the registry the relay process serves on /metrics:
// the Go runtime and process collectors and outbox_relay_build_info. The
// relay's own collectors are added by New (NewMetrics).
func NewRegistry(version string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "outbox_relay_build_info",
		Help: "Always 1; the labels say which build runs: version, Go version and VCS revision.",
	}, []string{"version", "goversion", "revision"})
	buildInfo.WithLabelValues(version, runtime.Version(), vcsRevision()).Set(1)
	reg.MustRegister(buildInfo)
	return reg
}

// NewReadiness returns the gauge outbox_relay_ready: 1 while h is ready
// (what /readyz answers 200 for), 0 otherwise, read at each scrape.
func NewReadiness(h *Health) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "outbox_relay_ready",
		Help: "1 while the relay is ready (/readyz answers 200: streaming and keeping up, or a healthy standby), 0 otherwise.",
	}, func() float64 {
		if ready, _ := h.Ready(); ready {
			return 1
		}
		return 0
	})
}

// vcsRevision is the commit the binary was built from, "" when unknown.
func vcsRevision() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			return s.Value
		}
	}
	return ""
}
