package relay

import (
	"github.com/prometheus/client_golang/prometheus"

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
	oldestUnacked prometheus.Gauge
	heartbeats    prometheus.Counter
	ackMissing    prometheus.Counter
}

// newMetrics creates the collectors and registers them with reg.
func newMetrics(reg prometheus.Registerer) *Metrics {
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
		m.oldestUnacked, m.heartbeats)
	return m
}
