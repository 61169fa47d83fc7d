// Package replication owns the replication connection: it checks the server,
// creates the publication and slot when missing, streams pgoutput messages
// from the slot, answers keepalives and reports the flush position the
// consumer allows.
//
// It never confirms a position on its own: the flush LSN sent to Postgres is
// always the one the Consumer returns, so only acked work is ever confirmed.
// It never drops or recreates a slot.
package replication

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Consumer takes the stream's messages. The stream calls it from one
// goroutine only.
type Consumer interface {
	// Message handles one pgoutput message; data is valid only during the call.
	Message(ctx context.Context, walStart outbox.LSN, data []byte) error
	// Keepalive passes the server's WAL end from a keepalive: every message
	// before it has been handed to Message, so the consumer may move its
	// position there when nothing is in flight.
	Keepalive(walEnd outbox.LSN)
	// Position returns the flush position to confirm.
	Position() outbox.LSN
	// Throttle returns nil when the consumer takes more messages, or a
	// channel that receives when it may have room again.
	Throttle() <-chan struct{}
	// InTransaction reports whether a transaction is open: a graceful stop
	// waits for its Commit so that no half-delivered transaction is re-sent.
	InTransaction() bool
	// Drain is called once when the stream stops reading; the returned
	// channel is closed when everything handed over is settled.
	Drain() <-chan struct{}
}

// receiveBuffer is the socket receive buffer of the replication connection.
const receiveBuffer = 4 << 20

// readBuffer is the user-space read buffer of the replication connection.
const readBuffer = 256 << 10

// silenceLimit is how long the stream may deliver nothing while the relay is
// reading before it reconnects. The walsender sends a keepalive at least every
// wal_sender_timeout/2 (30 s by default), and the relay's heartbeat adds a
// message every HEARTBEAT_INTERVAL, so silence this long means a stuck
// connection; reconnecting loses nothing.
const silenceLimit = 3 * time.Minute

// Conn is a replication connection (replication=database).
type Conn struct {
	conn *pgconn.PgConn
	log  zerolog.Logger
}

// Connect opens a replication connection to the database named in pgURL.
func Connect(ctx context.Context, pgURL string, log zerolog.Logger) (*Conn, error) {
	cfg, err := pgconn.ParseConfig(pgURL)
	if err != nil {
		return nil, fmt.Errorf("parse OUTBOX_RELAY_PG_URL: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	// A receive buffer well above the loopback MSS (64 KiB): with the
	// kernel's small default, the advertised window was seen to shrink
	// below one segment and stay there, the walsender blocked with megabytes
	// queued and the relay idle (a silly-window stall, about 1 drain in 12
	// in the benchmarks).
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if tcp, ok := conn.(*net.TCPConn); ok && err == nil {
			_ = tcp.SetReadBuffer(receiveBuffer)
		}
		return conn, err
	}
	// pgproto3 reads the socket in 8 KiB pieces (read(2) was the largest
	// item of the relay's CPU profile in a backlog drain); a buffered reader
	// in front of it takes whatever the socket holds, up to readBuffer, in
	// one call. Every read still goes through pgconn's reader, so deadlines
	// and cancellation work as before.
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		return pgproto3.NewFrontend(bufio.NewReaderSize(r, readBuffer), w)
	}
	// pgoutput sends text values in the walsender's DateStyle; the decoder
	// reads timestamps in ISO form, whatever the server's default.
	cfg.RuntimeParams["DateStyle"] = "ISO"
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "outbox-relay"
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	return &Conn{conn: conn, log: log}, nil
}

// Close closes the connection.
func (c *Conn) Close(ctx context.Context) error { return c.conn.Close(ctx) }

// CreatedSlot is the result of creating a slot.
type CreatedSlot struct {
	ConsistentPoint outbox.LSN
	SnapshotName    string // set when the snapshot was exported
}

// CreateSlot creates a logical slot with the pgoutput plugin. With
// exportSnapshot the slot's snapshot is exported and stays valid until the
// next command on this connection, so rows present before the slot can be
// read consistently (SET TRANSACTION SNAPSHOT).
func (c *Conn) CreateSlot(ctx context.Context, name string, exportSnapshot bool) (CreatedSlot, error) {
	return c.createSlot(ctx, name, exportSnapshot, false)
}

// CreateTemporarySlot creates a temporary logical slot for name (its name
// is TemporarySlotName(name)) and exports its snapshot. It lives only as
// long as this connection: work that must finish before a slot may exist
// (a backfill of the rows behind the slot's consistent point) is done
// under it, and PersistSlot then turns it into the slot name, at the same
// position. A crash before that leaves no slot behind.
func (c *Conn) CreateTemporarySlot(ctx context.Context, name string) (CreatedSlot, error) {
	return c.createSlot(ctx, TemporarySlotName(name), true, true)
}

func (c *Conn) createSlot(ctx context.Context, name string, exportSnapshot, temporary bool) (CreatedSlot, error) {
	if !ValidSlotName(name) {
		return CreatedSlot{}, refuse("slot name %q is invalid: use lower-case letters, digits and underscores", name)
	}
	action := "NOEXPORT_SNAPSHOT"
	if exportSnapshot {
		action = "EXPORT_SNAPSHOT"
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, c.conn, name, Plugin,
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: action, Temporary: temporary})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42501" {
			return CreatedSlot{}, refuse("create slot %q: %s", name, pgErr.Message)
		}
		if errors.As(err, &pgErr) && pgErr.Code == "42710" && temporary {
			// Another session's backfill holds it: a previous leader's.
			return CreatedSlot{}, &SlotActiveError{Slot: name, Detail: "a temporary slot of another session's backfill: " + pgErr.Message}
		}
		return CreatedSlot{}, fmt.Errorf("create slot %q: %w", name, err)
	}
	point, err := outbox.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return CreatedSlot{}, fmt.Errorf("create slot %q: %w", name, err)
	}
	return CreatedSlot{ConsistentPoint: point, SnapshotName: res.SnapshotName}, nil
}

// PersistSlot copies the temporary slot CreateTemporarySlot made for name
// into a permanent slot called name, at the same position (its consistent
// point, with the catalog horizon it holds), then drops the temporary one.
// It ends the exported snapshot. sql is a normal connection.
func (c *Conn) PersistSlot(ctx context.Context, sql *pgx.Conn, name string) error {
	temp := TemporarySlotName(name)
	if _, err := sql.Exec(ctx, "SELECT pg_copy_logical_replication_slot($1, $2, false)", temp, name); err != nil {
		return fmt.Errorf("copy temporary slot %q to slot %q: %w", temp, name, err)
	}
	if err := pglogrepl.DropReplicationSlot(ctx, c.conn, temp, pglogrepl.DropReplicationSlotOptions{}); err != nil {
		return fmt.Errorf("drop temporary slot %q after copying it to %q: %w", temp, name, err)
	}
	return nil
}

// TemporarySlotName is the name of the temporary slot that stands in for
// slot name until it may exist.
func TemporarySlotName(name string) string {
	const suffix = "_tmp"
	if len(name)+len(suffix) > maxSlotName {
		name = name[:maxSlotName-len(suffix)]
	}
	return name + suffix
}

// Options tune a stream.
type Options struct {
	Slot        string
	Publication string
	// StatusInterval is how often a standby status is sent even when the
	// server asks for none.
	StatusInterval time.Duration
	// DrainTimeout bounds a graceful stop: finishing the open transaction
	// and waiting for everything in flight to settle.
	DrainTimeout time.Duration
}

// ErrDrainTimeout is returned by Stream when a graceful stop did not settle
// everything in flight within DrainTimeout. Nothing is lost: the unconfirmed
// transactions are streamed again on the next start.
var ErrDrainTimeout = errors.New("shutdown timed out before every record in flight was acked")

// Stream starts streaming the slot from its confirmed position and feeds c
// until ctx ends (an abrupt stop: the error is returned at once) or stop is
// closed (a graceful stop: it finishes the open transaction, drains c, sends
// the final position and returns nil).
func (c *Conn) Stream(ctx context.Context, stop <-chan struct{}, opts Options, consumer Consumer) error {
	// messages 'true' brings the relay's heartbeats (pg_logical_emit_message)
	// back through the stream, which proves the stream end to end.
	args := []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", opts.Publication), "messages 'true'"}
	err := pglogrepl.StartReplication(ctx, c.conn, opts.Slot, 0,
		pglogrepl.StartReplicationOptions{Mode: pglogrepl.LogicalReplication, PluginArgs: args})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			return &SlotActiveError{Slot: opts.Slot, Detail: pgErr.Message}
		}
		return fmt.Errorf("start replication on slot %q: %w", opts.Slot, err)
	}
	s := streamState{conn: c, opts: opts, consumer: consumer}
	if err := s.read(ctx, stop); err != nil {
		return err
	}
	return s.drain(ctx)
}

// SlotActiveError reports that another process streams from the slot.
type SlotActiveError struct {
	Slot   string
	Detail string
}

func (e *SlotActiveError) Error() string {
	return fmt.Sprintf("slot %q is in use by another process: %s", e.Slot, e.Detail)
}

type streamState struct {
	conn       *Conn
	opts       Options
	consumer   Consumer
	confirmed  outbox.LSN
	nextStatus time.Time
}

// read receives messages until ctx ends or a graceful stop may begin.
func (s *streamState) read(ctx context.Context, stop <-chan struct{}) error {
	stopCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-stopCtx.Done():
		}
	}()

	s.nextStatus = time.Now().Add(s.opts.StatusInterval)
	lastReceived := time.Now()
	// The receive ends at the next status time or when the stop is asked
	// for; after that, to reach the Commit of the open transaction, only
	// when ctx ends.
	dl := readDeadline{conn: s.conn.conn.Conn()}
	defer dl.close()
	dl.watch(stopCtx)
	stopping := false
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(s.nextStatus) {
			if err := s.sendStatus(false); err != nil {
				return err
			}
		}
		if stopCtx.Err() != nil {
			if !s.consumer.InTransaction() {
				return nil
			}
			if !stopping {
				// After a graceful stop was asked for, keep reading (to
				// reach the Commit of the open transaction) without the
				// stop ending the receive.
				stopping = true
				dl.watch(ctx)
			}
		}
		if throttle := s.consumer.Throttle(); throttle != nil {
			if err := s.wait(ctx, throttle); err != nil {
				return err
			}
			lastReceived = time.Now() // not reading is not silence
			continue
		}
		dl.set(s.nextStatus)
		// context.Background: pgconn then watches no context (a
		// context.AfterFunc and a channel per message); the deadline above
		// does the same job once per status period.
		msg, err := s.conn.conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() == nil && pgconn.Timeout(err) {
				if silent := time.Since(lastReceived); silent > silenceLimit {
					return fmt.Errorf("slot %q: nothing received for %s while reading (confirmed %s): reconnecting",
						s.opts.Slot, silent.Round(time.Second), s.confirmed)
				}
				continue // status deadline or graceful stop
			}
			if ctxErr := ctx.Err(); ctxErr != nil {
				return ctxErr
			}
			return fmt.Errorf("receive from slot %q (confirmed %s): %w", s.opts.Slot, s.confirmed, err)
		}
		lastReceived = time.Now()
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.handle(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("slot %q: server error: %w", s.opts.Slot, pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return fmt.Errorf("slot %q: server ended the replication stream", s.opts.Slot)
		}
	}
}

// readDeadline bounds the replication connection's receives by a read
// deadline on its socket, and ends a blocked receive when a watched context
// ends by moving that deadline into the past: what pgconn does for a context
// passed to ReceiveMessage, but once per status period instead of once per
// message (pgconn's watch costs a context.AfterFunc and a channel per call,
// the largest allocation of a backlog drain).
type readDeadline struct {
	conn net.Conn
	stop func() bool
	done chan struct{}
	at   time.Time // the deadline set last, by the reading goroutine

	mu    sync.Mutex
	ended bool // the watched context ended: the deadline stays in the past
}

// watch ends receives when ctx ends, in place of the context watched before.
func (d *readDeadline) watch(ctx context.Context) {
	d.unwatch()
	d.mu.Lock()
	d.ended = false
	d.mu.Unlock()
	d.at = time.Time{} // the socket's deadline may be in the past: set it again
	done := make(chan struct{})
	d.done = done
	d.stop = context.AfterFunc(ctx, func() {
		d.mu.Lock()
		d.ended = true
		_ = d.conn.SetReadDeadline(time.Unix(1, 0))
		d.mu.Unlock()
		close(done)
	})
}

func (d *readDeadline) unwatch() {
	if d.stop == nil {
		return
	}
	if !d.stop() {
		<-d.done // the function ran or is running: let it finish
	}
	d.stop = nil
}

// set makes receives time out at t, unless the watched context has ended.
// Called before every receive, it costs a comparison when t is unchanged.
func (d *readDeadline) set(t time.Time) {
	if t.Equal(d.at) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.ended {
		_ = d.conn.SetReadDeadline(t)
		d.at = t
	}
}

// close stops watching and clears the deadline for the connection's next use.
func (d *readDeadline) close() {
	d.unwatch()
	_ = d.conn.SetReadDeadline(time.Time{})
}

func (s *streamState) handle(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.XLogDataByteID:
		if len(data) < 25 {
			return fmt.Errorf("slot %q: XLogData of %d bytes", s.opts.Slot, len(data))
		}
		walStart := outbox.LSN(binary.BigEndian.Uint64(data[1:]))
		if err := s.consumer.Message(ctx, walStart, data[25:]); err != nil {
			return fmt.Errorf("message at %s: %w", walStart, err)
		}
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("slot %q: %w", s.opts.Slot, err)
		}
		s.consumer.Keepalive(outbox.LSN(k.ServerWALEnd))
		if k.ReplyRequested {
			return s.sendStatus(true)
		}
	}
	return nil
}

// wait blocks while the consumer is over its in-flight cap, still sending
// status so the server does not time the connection out.
func (s *streamState) wait(ctx context.Context, throttle <-chan struct{}) error {
	timer := time.NewTimer(time.Until(s.nextStatus))
	defer timer.Stop()
	select {
	case <-throttle:
		return nil
	case <-timer.C:
		return s.sendStatus(false)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drain stops reading, waits for the consumer to settle and confirms the
// final position.
func (s *streamState) drain(ctx context.Context) error {
	drained := s.consumer.Drain()
	deadline := time.NewTimer(s.opts.DrainTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(s.opts.StatusInterval)
	defer tick.Stop()
	for {
		select {
		case <-drained:
			return s.sendStatus(false)
		case <-tick.C:
			if err := s.sendStatus(false); err != nil {
				return err
			}
		case <-deadline.C:
			if err := s.sendStatus(false); err != nil {
				return err
			}
			return fmt.Errorf("slot %q: confirmed %s: %w", s.opts.Slot, s.confirmed, ErrDrainTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *streamState) sendStatus(replyRequested bool) error {
	pos := s.consumer.Position()
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), s.conn.conn,
		pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(pos)})
	if err != nil {
		return fmt.Errorf("slot %q: send standby status at %s: %w", s.opts.Slot, pos, err)
	}
	if pos != s.confirmed {
		s.conn.log.Debug().Str("lsn", pos.String()).Bool("reply_requested", replyRequested).Msg("confirmed position")
	}
	s.confirmed = pos
	s.nextStatus = time.Now().Add(s.opts.StatusInterval)
	return nil
}
