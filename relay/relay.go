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
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/publisher"
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
	return errors.As(err, &f) || errors.Is(err, replication.ErrRefused)
}

// Relay streams the outbox to Kafka.
type Relay struct {
	cfg     Config
	log     zerolog.Logger
	metrics *Metrics
	pub     *publisher.Publisher
}

// New creates a relay. reg receives its metrics (nil for a private registry).
func New(cfg Config, log zerolog.Logger, reg prometheus.Registerer) (*Relay, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	pub, err := publisher.New(publisher.Config{
		Brokers:       cfg.KafkaBrokers,
		TopicTemplate: cfg.Topic,
	}, log.With().Str("component", "publisher").Logger())
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	return &Relay{cfg: cfg, log: log, metrics: NewMetrics(reg), pub: pub}, nil
}

// Close releases the Kafka producer.
func (r *Relay) Close() error { return r.pub.Close() }

// Run streams until ctx ends (abrupt stop) or stop is closed (graceful stop:
// finish the open transaction, wait for in-flight acks, confirm the final
// position). It retries broken connections with backoff and returns only on a
// stop or a fatal error.
func (r *Relay) Run(ctx context.Context, stop <-chan struct{}) error {
	log := r.log.With().Str("component", "relay").Logger()
	backoff := newBackoff(200*time.Millisecond, 10*time.Second)
	for {
		err := r.session(ctx, stop)
		if err == nil {
			log.Info().Msg("stopped cleanly")
			return nil
		}
		if IsFatal(err) || errors.Is(err, replication.ErrDrainTimeout) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-stop:
			return nil
		default:
		}
		delay := backoff.next()
		r.metrics.reconnects.Inc()
		var active *replication.SlotActiveError
		if errors.As(err, &active) {
			log.Warn().Err(err).Dur("retry_in", delay).Msg("slot is busy; waiting for the other process to let go")
		} else {
			log.Error().Err(err).Dur("retry_in", delay).Msg("streaming session failed; reconnecting")
		}
		select {
		case <-time.After(delay):
		case <-stop:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
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

	slot, err := r.ensureSlot(ctx, conn, repl, log)
	if err != nil {
		return err
	}

	var acker rowAcker
	switch cfg.AckMode {
	case AckDelete, AckMark:
		acker = newTableAcker(conn, table, mapping, cols[mapping.ID].Type, cfg.AckMode)
	}
	tracker := checkpoint.New(slot.ConfirmedFlushLSN)
	p := newPipeline(log, decoder.New(table, mapping), r.pub, acker, tracker, cfg.MaxInflightBytes, r.metrics)
	r.metrics.confirmedLSN.Set(float64(slot.ConfirmedFlushLSN))

	log.Info().Str("slot", cfg.Slot).Str("publication", cfg.Publication).Str("table", table.String()).
		Str("lsn", slot.ConfirmedFlushLSN.String()).Str("ack_mode", string(cfg.AckMode)).Msg("streaming")

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
	}
	err = g.Wait()
	if err == nil {
		log.Info().Str("lsn", tracker.Watermark().String()).Msg("final position confirmed")
	}
	return err
}

// ensureSlot returns the slot, creating it when missing and refusing one the
// relay must not use. An existing slot is never dropped or recreated.
func (r *Relay) ensureSlot(ctx context.Context, conn *pgx.Conn, repl *replication.Conn, log zerolog.Logger) (replication.Slot, error) {
	name := r.cfg.Slot
	slot, ok, err := replication.LookupSlot(ctx, conn, name)
	if err != nil {
		return slot, err
	}
	if !ok {
		created, err := repl.CreateSlot(ctx, name, false)
		if err != nil {
			return slot, err
		}
		log.Info().Str("slot", name).Str("lsn", created.ConsistentPoint.String()).Msg("created replication slot")
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
	conn *pgx.Conn
	sql  string
}

func newTableAcker(conn *pgx.Conn, table outbox.Table, m outbox.Mapping, idType string, mode AckMode) *tableAcker {
	// The array is cast to the id column's own type so the primary key index is used.
	ids := fmt.Sprintf("%s = ANY($1::%s[])", outbox.QuoteIdent(m.ID), strings.TrimSuffix(idType, "[]"))
	sql := fmt.Sprintf("DELETE FROM %s WHERE %s", table.Quoted(), ids)
	if mode == AckMark {
		sql = fmt.Sprintf("UPDATE %s SET %s = now() WHERE %s", table.Quoted(), outbox.QuoteIdent(m.PublishedAt), ids)
	}
	return &tableAcker{conn: conn, sql: sql}
}

func (a *tableAcker) Ack(ctx context.Context, ids []string) error {
	if _, err := a.conn.Exec(ctx, a.sql, ids); err != nil {
		return fmt.Errorf("record delivery of %d rows: %w", len(ids), err)
	}
	return nil
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
