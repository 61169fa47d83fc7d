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
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/decoder"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/reconciler"
	"github.com/outbox-relay/outbox-relay/replication"
	"github.com/outbox-relay/outbox-relay/sql"
)

// fatalError is an error that retrying cannot fix: the relay stops.
type fatalError struct{ Err error }

func (e *fatalError) Error() string { return e.Err.Error() }
func (e *fatalError) Unwrap() error { return e.Err }

func fatalf(format string, args ...any) error {
	return &fatalError{Err: fmt.Errorf(format, args...)}
}

// isFatal reports whether err should stop the relay rather than be retried.
func isFatal(err error) bool {
	var f *fatalError
	return errors.As(err, &f) || errors.Is(err, replication.ErrRefused) || errors.Is(err, outbox.ErrAuthentication)
}

// Relay streams the outbox to Kafka.
type Relay struct {
	cfg      Config
	log      zerolog.Logger
	metrics  *Metrics
	health   *Health
	pub      Producer
	delivery *deliverer
	// table and mapping are the outbox table and its columns, resolved once
	// from the configuration.
	table   outbox.Table
	mapping outbox.Mapping
	// lockPID is the backend pid of the leader lock session while this
	// instance leads: the backfill, which no walsender fences, checks
	// before each batch that this session still holds the lock.
	lockPID uint32

	reconcilerOffLogged bool
	// slotSeen is set once this process found or created its slot; a slot
	// missing after that was dropped, and is not recreated silently.
	slotSeen bool
	// lastConfirmed is the slot's confirmed position when a session last
	// started, for the error that reports a dropped slot.
	lastConfirmed outbox.LSN
}

// New creates a relay that sends through the producer newProducer builds.
// reg receives its metrics (nil for a private registry).
func New(cfg Config, log zerolog.Logger, reg prometheus.Registerer, newProducer NewProducer) (*Relay, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	metrics := NewMetrics(reg)
	pub, err := newProducer(func(kind string) { metrics.brokerErrors.WithLabelValues(kind).Inc() })
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	return &Relay{cfg: cfg, log: log, metrics: metrics, health: NewHealth(cfg.HeartbeatInterval), pub: pub,
		delivery: &deliverer{log: log.With().Str("component", "delivery").Logger(), pub: pub, metrics: metrics, dlqTopic: cfg.DLQTopic,
			lease: newLeaderLease(lockIdleTimeout(cfg.LeaderRetry))},
		table: cfg.TableName(), mapping: cfg.Mapping()}, nil
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
	// A relay that cannot reach Kafka at start, or whose credentials are
	// refused, stops before it creates or reads anything.
	if err := r.pub.Check(ctx, brokerCheckTimeout); err != nil {
		r.health.setRole(RoleStopping, "")
		return fatalf("kafka: %w", err)
	}
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
	r.lockPID = lock.PgConn().PID()
	defer func() { r.lockPID = 0; r.delivery.lease.end() }()
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
	for {
		started := time.Now()
		err := r.session(ctx, stop)
		if err == nil {
			return nil
		}
		if pub := droppedPublication(err); pub != "" {
			// Postgres decodes each change with the publications of its
			// own time, so a slot whose WAL spans a dropped publication
			// can never move past it. Every undelivered row is still in
			// the table (ACK_MODE delete/mark), so a new slot and a
			// backfill from its snapshot lose nothing.
			if !r.cfg.AckMode.RecordsDelivery() {
				return fatalf("publication %q was dropped while the slot had changes to stream, and the slot cannot move past them; "+
					"with ACK_MODE none the relay cannot tell which rows were delivered, so it does not recreate the slot itself: "+
					"run `outbox-relay setup --recreate-slot` and start the relay (%w)", pub, err)
			}
			log.Error().Err(err).Str("publication", pub).
				Msg("publication was dropped under the slot: recreating the slot and backfilling the unacked rows from the table")
			if derr := r.dropOwnSlot(ctx); derr != nil {
				return fatalf("publication %q was dropped under the slot and the slot could not be dropped to recreate it: %w; "+
					"run `outbox-relay setup --recreate-slot` and start the relay", pub, derr)
			}
			r.metrics.reconnects.Inc()
			continue
		}
		if isFatal(err) || errors.Is(err, replication.ErrDrainTimeout) || errors.Is(err, errLostLeadership) {
			return err
		}
		select {
		case <-stop:
			// The session ended in error during a graceful stop: its final
			// position was not confirmed, which is not a clean stop.
			return fmt.Errorf("graceful stop: %w", err)
		default:
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
			r.health.setRole(RoleStarting, err.Error())
			// This instance holds the leader lock, so whoever holds the slot
			// is a previous leader that lost it (frozen, partitioned, or
			// gone while its walsender has not noticed yet): end it now
			// rather than wait for wal_sender_timeout.
			log.Warn().Err(err).Dur("retry_in", delay).
				Msg("holding the leader lock but the slot is still active (a previous leader's walsender); terminating it")
			r.terminateStaleWalsender(ctx, active.Slot, log, false)
		} else {
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

// brokerCheckTimeout bounds the wait for a broker to answer at start.
const brokerCheckTimeout = 20 * time.Second

// dropOwnSlot drops this relay's slot once its walsender has let go of it,
// so that the next session recreates it and backfills.
func (r *Relay) dropOwnSlot(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, r.cfg.PGURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	deadline := time.Now().Add(staleWalsenderExit)
	for {
		_, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
			WHERE slot_name = $1 AND NOT active`, r.cfg.Slot)
		if err != nil {
			return fmt.Errorf("drop slot %q: %w", r.cfg.Slot, err)
		}
		slot, ok, err := replication.LookupSlot(ctx, conn, r.cfg.Slot)
		if err != nil {
			return err
		}
		if !ok {
			r.slotSeen = false // dropped on purpose: the next session recreates it
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slot %q is still in use by pid %d", r.cfg.Slot, slot.ActivePID)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// droppedPublication returns the publication named by a walsender's
// "publication … does not exist" error, "" for any other error.
func droppedPublication(err error) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42704" { // undefined_object
		return ""
	}
	name, ok := strings.CutPrefix(pgErr.Message, `publication "`)
	if !ok {
		return ""
	}
	name, _, _ = strings.Cut(name, `"`)
	return name
}

// terminateStaleWalsender ends the walsender still holding our slot. Only the
// leader calls it, so the process on the other end cannot be a live leader.
// again marks a repeated signal, logged at debug level.
func (r *Relay) terminateStaleWalsender(ctx context.Context, slot string, log zerolog.Logger, again bool) {
	conn, err := pgx.Connect(ctx, r.cfg.PGURL)
	if err != nil {
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var pid *int32
	var ok *bool
	err = conn.QueryRow(ctx, `SELECT active_pid, pg_terminate_backend(active_pid)
		FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, slot).Scan(&pid, &ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return // it ended by itself meanwhile
	}
	if err != nil {
		log.Warn().Err(err).Msg("cannot terminate the stale walsender")
		return
	}
	level := zerolog.WarnLevel
	if again {
		level = zerolog.DebugLevel
	}
	log.WithLevel(level).Int32("pid", *pid).Str("slot", slot).Bool("terminated", ok != nil && *ok).Msg("terminated the stale walsender holding the slot")
}

// staleWalsenderExit bounds the wait for a terminated walsender to let go of
// the slot; past it the session goes on and ensureSlot reports the slot as
// active, which retries.
const staleWalsenderExit = 5 * time.Second

// staleWalsenderResignal is how often the stale walsender is signalled again
// while it holds the slot.
const staleWalsenderResignal = 500 * time.Millisecond

// releaseSlot ends the walsender of a previous leader that still holds the
// slot, and waits until the slot is free. Only the leader calls it.
func (r *Relay) releaseSlot(ctx context.Context, conn *pgx.Conn, log zerolog.Logger) error {
	// The temporary slot of a previous leader's backfill counts too: it
	// would keep this leader from creating its own.
	for _, name := range []string{r.cfg.Slot, replication.TemporarySlotName(r.cfg.Slot)} {
		if err := r.releaseSlotNamed(ctx, conn, name, log); err != nil {
			return err
		}
	}
	return nil
}

func (r *Relay) releaseSlotNamed(ctx context.Context, conn *pgx.Conn, name string, log zerolog.Logger) error {
	deadline := time.Now().Add(staleWalsenderExit)
	var signalled time.Time
	for terminated := false; ; {
		slot, ok, err := replication.LookupSlot(ctx, conn, name)
		if err != nil {
			return err
		}
		if !ok || !slot.Active || time.Now().After(deadline) {
			return nil
		}
		if !terminated {
			log.Warn().Int32("pid", slot.ActivePID).Str("slot", name).Str("lsn", slot.ConfirmedFlushLSN.String()).
				Msg("holding the leader lock but the slot is still active (a previous leader's walsender); terminating it")
		}
		// A walsender whose client froze can block, while it exits, in
		// sending its FATAL message to a socket nobody reads; another
		// SIGTERM interrupts that send. Seen on this machine: one signal,
		// and the slot stayed active for the whole 5 s wait.
		if time.Since(signalled) >= staleWalsenderResignal {
			r.terminateStaleWalsender(ctx, name, log, terminated)
			terminated, signalled = true, time.Now()
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// session runs one streaming session: connect, check, stream until it ends.
func (r *Relay) session(ctx context.Context, stop <-chan struct{}) error {
	cfg := r.cfg
	log := r.log.With().Str("component", "replication").Logger()
	table, mapping := r.table, r.mapping

	conn, err := pgx.Connect(ctx, cfg.PGURL)
	if err != nil {
		return fmt.Errorf("connect to Postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	if err := replication.CheckServer(ctx, conn); err != nil {
		return err
	}
	if err := checkColumns(ctx, conn, cfg); err != nil {
		return err
	}
	cols, err := replication.CheckTable(ctx, conn, table, mapping, cfg.AckMode)
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

	// A previous leader's walsender still holding the slot is ended before
	// this session opens its own replication connection, so two walsenders
	// never serve the slot's stream side by side.
	if err := r.releaseSlot(ctx, conn, log); err != nil {
		return err
	}
	repl, err := replication.Connect(ctx, cfg.PGURL, log)
	if err != nil {
		return err
	}
	defer repl.Close(context.WithoutCancel(ctx))

	// A table partitioned by one column: each row's value of it narrows
	// the ack to the partitions that can hold the row.
	partitionKey, _, err := replication.PartitionKey(ctx, conn, table)
	if err != nil {
		return err
	}
	var acker rowAcker
	if cfg.AckMode.RecordsDelivery() {
		if err := ensureDeadLetterTable(ctx, conn, table, mapping.ID, log); err != nil {
			return err
		}
		acker = newTableAcker(conn, table, mapping, cols[mapping.ID].Type, partitionKey, cfg.AckMode, log, r.metrics.ackMissing)
	}
	slot, err := r.ensureSlot(ctx, conn, repl, acker, log)
	if err != nil {
		return err
	}
	// Records a previous session left in flight are re-sent by this one.
	r.metrics.inflightRecs.Set(0)
	r.metrics.inflightBytes.Set(0)
	r.lastConfirmed = slot.ConfirmedFlushLSN
	tracker := checkpoint.New(slot.ConfirmedFlushLSN)
	batchRecords, batchBytes := r.pub.BatchLimits()
	p := newPipeline(pipelineDeps{
		log:          log,
		decoder:      decoder.New(table, mapping).WithPartitionKey(partitionKey.Name),
		delivery:     r.delivery,
		acker:        acker,
		tracker:      tracker,
		metrics:      r.metrics,
		health:       r.health,
		maxInflight:  cfg.MaxInflightBytes,
		batchRecords: batchRecords,
		batchBytes:   batchBytes,
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
			AckMode:  cfg.AckMode,
			Grace:    cfg.ReconcileGrace,
			Interval: cfg.ReconcileInterval,
			Batch:    cfg.ReconcileBatch,
		}, func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, cfg.PGURL) },
			r.delivery, p.SettledCommitTime, r.log)
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
		err = r.checkConfirmed(ctx, conn, tracker.Watermark())
	}
	if err == nil {
		log.Info().Str("lsn", tracker.Watermark().String()).Msg("final position confirmed")
	}
	var broken *decoder.MappingError
	if errors.As(err, &broken) {
		return mappingBroken(broken, tracker.Watermark())
	}
	return err
}

// mappingBroken is the error that stops the relay when the outbox table,
// as the WAL describes it from some point on, no longer fits the column
// mapping. Retrying cannot help: every restart meets the same Relation
// message again. Nothing is lost by stopping: the rows written since are
// still in the table, unacked.
func mappingBroken(e *decoder.MappingError, confirmed outbox.LSN) error {
	column, variable := e.Column, ColumnVariables[e.Field]
	if column == "" {
		return fatalf("%v; the way out: map a column for %s in %s, then start the relay again", e, e.Field, variable)
	}
	return fatalf("%v (the table was altered after position %s); the way out: rename or retype column %q back "+
		"(ALTER TABLE %s RENAME COLUMN … TO %s, or ALTER COLUMN %s TYPE …) or map the new column in %s, then start the relay again; "+
		"if it stops here again (rows were written while the column was changed, and the WAL describes them with the old table), "+
		"run `outbox-relay setup --recreate-slot` and start it: the backfill delivers those rows from the table",
		e, confirmed, column, e.Table, outbox.QuoteIdent(column), outbox.QuoteIdent(column), variable)
}

// finalConfirmWait bounds how long a graceful stop waits for the server to
// show the final position it was sent.
const finalConfirmWait = 5 * time.Second

// checkConfirmed makes sure, after a graceful stop, that the slot shows the
// final position: a standby status written to a connection that broke
// meanwhile is not a confirmation, and a stop that says "confirmed" must
// not leave the next start to repeat what was delivered.
func (r *Relay) checkConfirmed(ctx context.Context, conn *pgx.Conn, final outbox.LSN) error {
	deadline := time.Now().Add(finalConfirmWait)
	for {
		slot, ok, err := replication.LookupSlot(ctx, conn, r.cfg.Slot)
		if err != nil {
			return fmt.Errorf("graceful stop: check the final position %s: %w", final, err)
		}
		if !ok {
			return fatalf("graceful stop: slot %q disappeared before its final position %s was confirmed", r.cfg.Slot, final)
		}
		if slot.ConfirmedFlushLSN >= final {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("graceful stop: slot %q shows %s, not the final position %s, %s after it was sent: %w",
				r.cfg.Slot, slot.ConfirmedFlushLSN, final, finalConfirmWait, errFinalUnconfirmed)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// errFinalUnconfirmed marks a graceful stop whose final position the server
// never showed; the records after the shown one are sent again next time.
var errFinalUnconfirmed = errors.New("final position not confirmed")

// ensureSlot returns the slot, creating it when missing and refusing one the
// relay must not use. An existing slot is never dropped or recreated.
func (r *Relay) ensureSlot(ctx context.Context, conn *pgx.Conn, repl *replication.Conn, acker rowAcker, log zerolog.Logger) (replication.Slot, error) {
	name := r.cfg.Slot
	slot, ok, err := replication.LookupSlot(ctx, conn, name)
	if err != nil {
		return slot, err
	}
	if !ok && r.slotSeen {
		// The slot this process streamed from is gone: an operator (or
		// max_slot_wal_keep_size) dropped it. Recreating it here would skip,
		// silently, every row committed since it went.
		return slot, fatalf("replication slot %q was dropped while the relay was using it (last confirmed %s): "+
			"rows committed since it went are not in any stream. Run `outbox-relay setup --recreate-slot`, then start the relay: "+
			"it recreates the slot and backfills the unacked rows from the table", name, r.lastConfirmed)
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
	r.slotSeen = true
	if slot.Active {
		return slot, &replication.SlotActiveError{Slot: name, Detail: fmt.Sprintf("active_pid %d", slot.ActivePID)}
	}
	return slot, nil
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

// ensureDeadLetterTable creates the dead-letter table next to the outbox if
// it is missing, or refuses to stream: without it a row whose dead-letter
// record is a stub could not be recorded, and the relay would stop on it.
func ensureDeadLetterTable(ctx context.Context, conn *pgx.Conn, table outbox.Table, idColumn string, log zerolog.Logger) error {
	dead := table.DeadLetterTable()
	if _, err := replication.TableColumns(ctx, conn, dead); err == nil {
		return nil
	}
	if _, err := conn.Exec(ctx, sql.DeadLetterTable(table, idColumn)); err != nil {
		return fatalf("dead-letter table %s does not exist and cannot be created (%v): run `outbox-relay setup` or the DDL in sql/outbox.sql as an admin, then grant the relay's role SELECT, INSERT, DELETE on it (sql/roles.sql)", dead, err)
	}
	log.Info().Str("table", dead.String()).Msg("created the dead-letter table")
	return nil
}
