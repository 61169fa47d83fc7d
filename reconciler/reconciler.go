// Package reconciler is the relay's fallback sweep: it finds outbox rows
// whose delivery was never confirmed long after they were written (a row
// the stream gave up on, rows missed while a slot was lost), publishes them
// to the dead-letter topic, and only then deletes or marks them.
//
// It must never touch a row the stream may still deliver. A row is swept
// only if
//
//	created_at < now() - Grace  AND  created_at < watermarkCommitTime - Grace
//
// where now() is the database's clock and watermarkCommitTime is the commit
// time of the transaction at the relay's confirmed position: every row
// committed before that the stream has already delivered and deleted or
// marked, so an older row still unacknowledged is one the stream will never
// deliver. A row merely in flight, or behind a lagging slot, is newer than
// the watermark and is left alone.
//
// created_at is set by the application (by default now(), the start of the
// inserting transaction), not at commit, so the rule holds only if Grace is
// longer than the longest transaction that writes to the outbox: a
// transaction open for longer than Grace could commit a row that already
// looks old enough. A table without the column (Debezium's shape) is swept
// by its rows' commit times instead (pg_xact_commit_timestamp(xmin), which
// needs track_commit_timestamp = on), for which the rule holds exactly.
//
// The reconciler runs only in the process that streams (the leader); it
// works with ACK_MODE delete and mark, and not at all with none, where a
// present row says nothing about its delivery.
package reconciler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Defaults of the Config fields left zero.
const (
	DefaultGrace    = 5 * time.Minute
	DefaultInterval = 30 * time.Second
	DefaultBatch    = 500
)

// ErrDisabled is returned by New for ACK_MODE none: the relay leaves rows in
// place after delivery, so the reconciler cannot tell an unacknowledged row
// from a delivered one and must not run.
var ErrDisabled = errors.New("reconciler disabled: ACK_MODE none leaves delivered rows in place, so undelivered ones cannot be told apart")

// Config configures a Reconciler. Zero durations and batch take the defaults.
type Config struct {
	// Table is the outbox table and Mapping its columns; without the
	// Mapping.CreatedAt column, track_commit_timestamp must be on, and with
	// AckMode mark Mapping.PublishedAt must name a column. A row whose
	// created_at (or commit time) is NULL is never swept.
	Table   outbox.Table
	Mapping outbox.Mapping
	// AckMode is the relay's ACK_MODE, delete or mark. Which rows are
	// unacknowledged is outbox.Mapping.Unacked in either mode.
	AckMode outbox.AckMode
	// Grace is how long after being written a row may stay unacknowledged
	// (OUTBOX_RELAY_RECONCILE_GRACE, default 5m). It must exceed the longest
	// transaction that writes to the outbox.
	Grace time.Duration
	// Interval is the time between sweeps (OUTBOX_RELAY_RECONCILE_INTERVAL,
	// default 30s).
	Interval time.Duration
	// Batch is the most rows one transaction of a sweep locks, dead-letters
	// and removes (OUTBOX_RELAY_RECONCILE_BATCH, default 500).
	Batch int
}

// DeadLetterer publishes rows to the dead-letter topic with the given reason
// (outbox.HeaderDLQReason) and error text (outbox.HeaderDLQError), and
// returns once the broker acknowledged all of them, or an error, in which
// case none of the rows is deleted or marked and they are swept again later.
// The events' LSN is zero: the rows were found with SQL, not in the WAL. The
// reconciler reuses the events' memory after DeadLetter returns, so it must
// not keep them.
type DeadLetterer interface {
	DeadLetter(ctx context.Context, events []outbox.Event, reason string, errText string) error
}

// Position returns the commit time of the transaction at the relay's
// current confirmed position (its watermark), as the server recorded it; the
// zero time when it is not known yet, and then nothing is swept.
type Position func() time.Time

// Connect opens a connection to the outbox database, which the reconciler
// then owns: it closes it when it fails, and in Close.
type Connect func(ctx context.Context) (*pgx.Conn, error)

// Reconciler sweeps the outbox table for rows never acknowledged. Its
// methods are safe for concurrent use; sweeps run one at a time.
type Reconciler struct {
	cfg     Config
	connect Connect
	dl      DeadLetterer
	pos     Position
	log     zerolog.Logger

	mu      sync.Mutex // held by a sweep; guards everything below
	conn    *pgx.Conn  // nil until the first sweep and after a failure
	queries *queries   // built for conn's table
	events  []outbox.Event
	found   []foundRow
}

// New returns a Reconciler; it does no I/O. It returns ErrDisabled for
// ACK_MODE none.
func New(cfg Config, connect Connect, dl DeadLetterer, pos Position, log zerolog.Logger) (*Reconciler, error) {
	switch cfg.AckMode {
	case outbox.AckDelete, outbox.AckMark:
	case outbox.AckNone:
		return nil, ErrDisabled
	default:
		return nil, fmt.Errorf("reconciler: ack mode %q is not one of delete, mark", cfg.AckMode)
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Batch == 0 {
		cfg.Batch = DefaultBatch
	}
	var errs []error
	if cfg.Grace < 0 || cfg.Interval < 0 || cfg.Batch < 0 {
		errs = append(errs, fmt.Errorf("reconciler: grace %s, interval %s and batch %d must be positive", cfg.Grace, cfg.Interval, cfg.Batch))
	}
	if cfg.AckMode == outbox.AckMark && cfg.Mapping.PublishedAt == "" {
		errs = append(errs, errors.New("reconciler: ack mode mark and the column mapping names no published_at column"))
	}
	if connect == nil || dl == nil || pos == nil {
		errs = append(errs, errors.New("reconciler: connect, dead-letterer and position are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Reconciler{
		cfg:     cfg,
		connect: connect,
		dl:      dl,
		pos:     pos,
		log:     log.With().Str("component", "reconciler").Logger(),
	}, nil
}

// Run sweeps every Interval until ctx ends, then closes the connection and
// returns nil. A failed sweep is logged and retried at the next interval;
// nothing it did not finish was deleted or marked.
func (r *Reconciler) Run(ctx context.Context) error {
	defer r.Close(context.WithoutCancel(ctx))
	r.log.Info().Str("table", r.cfg.Table.String()).Str("ack_mode", string(r.cfg.AckMode)).
		Dur("grace", r.cfg.Grace).Dur("interval", r.cfg.Interval).Int("batch", r.cfg.Batch).
		Msg("reconciler started")
	ticker := time.NewTicker(r.cfg.Interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		if _, err := r.Sweep(ctx); err != nil && ctx.Err() == nil {
			r.log.Error().Err(err).Dur("retry_in", r.cfg.Interval).Msg("sweep failed; retrying at the next interval")
		}
	}
}

// Close closes the connection, waiting for a sweep in progress.
func (r *Reconciler) Close(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closeConnLocked(ctx)
}

func (r *Reconciler) closeConnLocked(ctx context.Context) error {
	if r.conn == nil {
		return nil
	}
	err := r.conn.Close(ctx)
	r.conn, r.queries = nil, nil
	return err
}
