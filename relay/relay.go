// Package relay wires the stages into a running relay: it checks and prepares
// Postgres, streams the slot through the decoder and the publisher, records
// deliveries in the outbox table, and confirms only what the checkpoint
// tracker allows.
//
// It must never confirm a position the tracker did not produce, and never
// drop or recreate a slot.
package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/internal/kafkaauth"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/publisher"
	"github.com/outbox-relay/outbox-relay/reconciler"
	"github.com/outbox-relay/outbox-relay/replication"
)

// FatalError is an error that retrying cannot fix: the relay stops.
type FatalError struct{ Err error }

func (e *FatalError) Error() string { return e.Err.Error() }
func (e *FatalError) Unwrap() error { return e.Err }

func fatalf(format string, args ...any) error {
	return &FatalError{Err: fmt.Errorf(format, args...)}
}

// IsFatal reports whether err should stop the relay rather than be retried.
func IsFatal(err error) bool {
	var f *FatalError
	return errors.As(err, &f) || errors.Is(err, replication.ErrRefused) || errors.Is(err, publisher.ErrAuthentication)
}

// Relay streams the outbox to Kafka.
type Relay struct {
	cfg     Config
	log     zerolog.Logger
	metrics *Metrics
	health  *Health
	pub     *publisher.Publisher

	reconcilerOffLogged bool
}

// New creates a relay. reg receives its metrics (nil for a private registry).
func New(cfg Config, log zerolog.Logger, reg prometheus.Registerer) (*Relay, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	tlsConfig, err := kafkaauth.TLSConfig(cfg.KafkaTLS, cfg.KafkaTLSCAFile, cfg.KafkaTLSSkipVerify)
	if err != nil {
		return nil, fmt.Errorf("%sKAFKA_TLS_CA_FILE: %w", EnvPrefix, err)
	}
	mechanism, err := kafkaauth.Mechanism(cfg.KafkaSASLMechanism, cfg.KafkaSASLUser, cfg.KafkaSASLPassword)
	if err != nil {
		return nil, fmt.Errorf("%sKAFKA_SASL_MECHANISM: %w", EnvPrefix, err)
	}
	metrics := NewMetrics(reg)
	pubCfg := publisher.Config{Brokers: trimmed(cfg.KafkaBrokers), TopicTemplate: cfg.Topic, TLS: tlsConfig,
		OnRetry: func(err error) { metrics.brokerErrors.WithLabelValues(publisher.ErrorKind(err)).Inc() }}
	if mechanism != nil {
		pubCfg.SASL = kafkaauth.ForKafkaGo(mechanism)
	}
	pub, err := publisher.New(pubCfg, log.With().Str("component", "publisher").Logger())
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	return &Relay{cfg: cfg, log: log, metrics: metrics, health: NewHealth(cfg.HeartbeatInterval), pub: pub}, nil
}

func trimmed(ss []string) []string {
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Close releases the Kafka producer.
func (r *Relay) Close() error { return r.pub.Close() }

// Health returns the state /readyz reports.
func (r *Relay) Health() *Health { return r.health }

// Run streams until ctx ends (abrupt stop) or stop is closed (graceful stop:
// finish the open transaction, wait for in-flight acks, confirm the final
// position). Only the holder of the leader lock streams; others stand by and
// take over when it goes. It retries broken connections with backoff and
// returns only on a stop or a fatal error.
func (r *Relay) Run(ctx context.Context, stop <-chan struct{}) error {
	log := r.log.With().Str("component", "leader").Logger()
	for {
		lock, err := r.acquireLeadership(ctx, stop, log)
		if err != nil || lock == nil {
			r.health.setRole(RoleStopping, "")
			return err
		}
		err = r.lead(ctx, stop, lock, log)
		lock.Close(context.WithoutCancel(ctx))
		r.metrics.leader.Set(0)
		if errors.Is(err, errLostLeadership) {
			r.health.setRole(RoleStandby, "lost the leader lock")
			log.Warn().Err(err).Msg("leadership lost; standing by")
			continue
		}
		r.health.setRole(RoleStopping, "")
		if err == nil {
			log.Info().Msg("stopped cleanly")
		}
		return err
	}
}

// lead streams while this instance holds the leader lock.
func (r *Relay) lead(ctx context.Context, stop <-chan struct{}, lock *pgx.Conn, log zerolog.Logger) error {
	r.metrics.leader.Set(1)
	leaderCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watchDone := make(chan error, 1)
	go func() {
		err := r.watchLeadership(leaderCtx, lock, log)
		if err != nil {
			cancel(err)
		}
		watchDone <- err
	}()
	err := r.stream(leaderCtx, stop)
	cancel(nil)
	if werr := <-watchDone; werr != nil {
		return werr
	}
	return err
}

// stream runs streaming sessions, reconnecting with backoff after errors
// that a retry can fix.
func (r *Relay) stream(ctx context.Context, stop <-chan struct{}) error {
	log := r.log.With().Str("component", "relay").Logger()
	backoff := newBackoff(200*time.Millisecond, 10*time.Second)
	var busySince time.Time
	for {
		started := time.Now()
		err := r.session(ctx, stop)
		if err == nil {
			return nil
		}
		if IsFatal(err) || errors.Is(err, replication.ErrDrainTimeout) {
			return err
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		select {
		case <-stop:
			return nil
		default:
		}
		if time.Since(started) > time.Minute {
			backoff = newBackoff(200*time.Millisecond, 10*time.Second)
		}
		delay := backoff.next()
		r.metrics.reconnects.Inc()
		var active *replication.SlotActiveError
		if errors.As(err, &active) {
			if busySince.IsZero() {
				busySince = time.Now()
			}
			r.health.setRole(RoleStarting, err.Error())
			log.Warn().Err(err).Dur("retry_in", delay).Dur("busy_for", time.Since(busySince)).
				Msg("holding the leader lock but the slot is still active (a previous leader's walsender?); waiting")
			if time.Since(busySince) > staleWalsenderAfter {
				r.terminateStaleWalsender(ctx, log)
			}
		} else {
			busySince = time.Time{}
			r.health.setRole(RoleStarting, err.Error())
			log.Error().Err(err).Dur("retry_in", delay).Msg("streaming session failed; reconnecting")
		}
		select {
		case <-time.After(delay):
		case <-stop:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// staleWalsenderAfter is how long the leader waits for a slot to become
// inactive before it terminates the walsender holding it: longer than the
// default wal_sender_timeout (60 s), after which Postgres would have ended a
// walsender whose client is truly gone.
const staleWalsenderAfter = 75 * time.Second

// terminateStaleWalsender ends the walsender still holding our slot. Only the
// leader calls it, so the process on the other end cannot be a live leader.
func (r *Relay) terminateStaleWalsender(ctx context.Context, log zerolog.Logger) {
	conn, err := pgx.Connect(ctx, r.cfg.PGURL)
	if err != nil {
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var pid *int32
	var ok *bool
	err = conn.QueryRow(ctx, `SELECT active_pid, pg_terminate_backend(active_pid)
		FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, r.cfg.Slot).Scan(&pid, &ok)
	if err != nil {
		log.Warn().Err(err).Msg("cannot terminate the stale walsender")
		return
	}
	log.Warn().Int32("pid", *pid).Bool("terminated", ok != nil && *ok).Msg("terminated the stale walsender holding the slot")
}

// session runs one streaming session: connect, check, stream until it ends.
func (r *Relay) session(ctx context.Context, stop <-chan struct{}) error {
	cfg := r.cfg
	log := r.log.With().Str("component", "replication").Logger()
	table := cfg.TableName()
	mapping := outbox.DefaultMapping()

	conn, err := pgx.Connect(ctx, cfg.PGURL)
	if err != nil {
		return fmt.Errorf("connect to Postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	if err := replication.CheckServer(ctx, conn); err != nil {
		return err
	}
	ackColumn := ""
	if cfg.AckMode == AckMark {
		ackColumn = mapping.PublishedAt
	}
	cols, err := replication.CheckTable(ctx, conn, table, mapping, ackColumn)
	if err != nil {
		return err
	}
	created, err := replication.EnsurePublication(ctx, conn, cfg.Publication, table)
	if err != nil {
		return err
	}
	if created {
		log.Info().Str("publication", cfg.Publication).Str("table", table.String()).Msg("created publication")
	}

	repl, err := replication.Connect(ctx, cfg.PGURL, log)
	if err != nil {
		return err
	}
	defer repl.Close(context.WithoutCancel(ctx))

	var acker rowAcker
	switch cfg.AckMode {
	case AckDelete, AckMark:
		acker = newTableAcker(conn, table, mapping, cols[mapping.ID].Type, cfg.AckMode, log, r.metrics.ackMissing)
	}
	slot, err := r.ensureSlot(ctx, conn, repl, acker, log)
	if err != nil {
		return err
	}
	// Records a previous session left in flight are re-sent by this one.
	r.metrics.inflightRecs.Set(0)
	r.metrics.inflightBytes.Set(0)
	tracker := checkpoint.New(slot.ConfirmedFlushLSN)
	p := newPipeline(pipelineDeps{
		log:         log,
		decoder:     decoder.New(table, mapping),
		publisher:   r.pub,
		acker:       acker,
		tracker:     tracker,
		metrics:     r.metrics,
		health:      r.health,
		maxInflight: cfg.MaxInflightBytes,
		dlqTopic:    cfg.DLQTopic,
	})
	r.metrics.confirmedLSN.Set(float64(slot.ConfirmedFlushLSN))

	log.Info().Str("slot", cfg.Slot).Str("publication", cfg.Publication).Str("table", table.String()).
		Str("lsn", slot.ConfirmedFlushLSN.String()).Str("ack_mode", string(cfg.AckMode)).Msg("streaming")
	if acker == nil && !r.reconcilerOffLogged {
		r.reconcilerOffLogged = true
		log.Info().Msg("ACK_MODE none: the reconciler is off (the relay records no deliveries, so it cannot tell which rows are stuck)")
	}
	r.health.setRole(RoleStreaming, "")

	g, gctx := errgroup.WithContext(ctx)
	pipeCtx, stopPipeline := context.WithCancel(gctx)
	defer stopPipeline()
	g.Go(func() error {
		defer stopPipeline()
		return repl.Stream(gctx, stop, replication.Options{
			Slot:           cfg.Slot,
			Publication:    cfg.Publication,
			StatusInterval: cfg.StatusInterval,
			DrainTimeout:   cfg.ShutdownTimeout,
		}, p)
	})
	g.Go(func() error { return p.publishLoop(pipeCtx) })
	if acker != nil {
		g.Go(func() error { return p.ackLoop(pipeCtx) })
		rec, err := reconciler.New(reconciler.Config{
			Table:    table,
			Mapping:  mapping,
			AckMode:  string(cfg.AckMode),
			Grace:    cfg.ReconcileGrace,
			Interval: cfg.ReconcileInterval,
			Batch:    cfg.ReconcileBatch,
		}, func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, cfg.PGURL) },
			p, p.SettledCommitTime, r.log)
		if err != nil {
			return fatalf("reconciler: %w", err)
		}
		g.Go(func() error {
			defer rec.Close(context.WithoutCancel(pipeCtx))
			return rec.Run(pipeCtx)
		})
	}
	err = g.Wait()
	if err == nil {
		log.Info().Str("lsn", tracker.Watermark().String()).Msg("final position confirmed")
	}
	return err
}

// ensureSlot returns the slot, creating it when missing and refusing one the
// relay must not use. An existing slot is never dropped or recreated.
func (r *Relay) ensureSlot(ctx context.Context, conn *pgx.Conn, repl *replication.Conn, acker rowAcker, log zerolog.Logger) (replication.Slot, error) {
	name := r.cfg.Slot
	slot, ok, err := replication.LookupSlot(ctx, conn, name)
	if err != nil {
		return slot, err
	}
	if !ok {
		if err := r.createSlot(ctx, conn, repl, acker, log); err != nil {
			return slot, err
		}
		if slot, ok, err = replication.LookupSlot(ctx, conn, name); err != nil || !ok {
			return slot, fmt.Errorf("read slot %q after creating it: found=%v: %w", name, ok, err)
		}
	}
	if err := replication.CheckSlot(ctx, conn, slot); err != nil {
		return slot, err
	}
	if slot.Active {
		return slot, &replication.SlotActiveError{Slot: name, Detail: fmt.Sprintf("active_pid %d", slot.ActivePID)}
	}
	return slot, nil
}

// tableAcker deletes or marks delivered rows with one statement per batch.
type tableAcker struct {
	conn    *pgx.Conn
	sql     string
	log     zerolog.Logger
	missing prometheus.Counter
}

func newTableAcker(conn *pgx.Conn, table outbox.Table, m outbox.Mapping, idType string, mode AckMode, log zerolog.Logger, missing prometheus.Counter) *tableAcker {
	// The ids travel as text[] (pgx encodes []string to it directly; asking
	// for uuid[] made it try and fail a binary encoding per call) and are cast
	// to the id column's own type so the primary key index is used.
	ids := fmt.Sprintf("%s = ANY($1::text[]::%s[])", outbox.QuoteIdent(m.ID), strings.TrimSuffix(idType, "[]"))
	sql := fmt.Sprintf("DELETE FROM %s WHERE %s", table.Quoted(), ids)
	if mode == AckMark {
		published := outbox.QuoteIdent(m.PublishedAt)
		sql = fmt.Sprintf("UPDATE %s SET %s = now() WHERE %s AND %s IS NULL", table.Quoted(), published, ids, published)
	}
	return &tableAcker{conn: conn, sql: sql, log: log, missing: missing}
}

// ackVisibilityWait bounds how long Ack waits for rows it could not find.
// The walsender may send a transaction a moment before its commit is visible
// to other sessions (the commit record is flushed before the committing
// backend leaves the proc array), so a delete right after the Kafka ack can
// miss a row that is about to appear. Ack retries the statement until every
// row matched or this much time passed; a row still missing then was deleted
// or marked before (a transaction re-sent after a restart).
const ackVisibilityWait = 2 * time.Second

func (a *tableAcker) Ack(ctx context.Context, ids []string) error {
	matched := int64(0)
	delay := time.Millisecond
	deadline := time.Now().Add(ackVisibilityWait)
	for {
		tag, err := a.conn.Exec(ctx, a.sql, ids)
		if err != nil {
			return fmt.Errorf("record delivery of %d rows: %w", len(ids), err)
		}
		matched += tag.RowsAffected()
		if matched >= int64(len(ids)) {
			return nil
		}
		if time.Now().Add(delay).After(deadline) {
			missing := int64(len(ids)) - matched
			a.missing.Add(float64(missing))
			a.log.Debug().Int64("rows", missing).Msg("delivered rows already deleted or marked (re-sent after a restart?)")
			return nil
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
		delay *= 2
	}
}

// backoff grows a delay exponentially between min and max.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	return b.cur
}
