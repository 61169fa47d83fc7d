package relay

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/internal/rows"
	"github.com/outbox-relay/outbox-relay/replication"
)

// errLostLeadership ends a leader's streaming when its lock session broke.
var errLostLeadership = errors.New("lost the leader lock")

// lockKey derives the advisory lock key from the slot name, so relays of
// different slots in one database do not exclude each other.
func lockKey(slot string) int64 {
	h := fnv.New64a()
	h.Write([]byte("outbox-relay:" + slot))
	return int64(h.Sum64())
}

// lockIdleTimeout is the idle_session_timeout of the lock session: Postgres
// ends the session of a leader that stopped talking to it for this long,
// which releases the lock. A frozen process (SIGSTOP, a paused VM or
// container) still answers TCP keepalives from its kernel, so keepalives
// alone never pass the lock on. The leader pings every second and a standby
// tries the lock every LEADER_RETRY, so the timeout is a few of those; with
// the default retry of 2s it is 5s, which leaves a standby the rest of a
// 10 s takeover budget to acquire the lock and start streaming.
func lockIdleTimeout(leaderRetry time.Duration) time.Duration {
	return max(5*time.Second, 2*leaderRetry+time.Second)
}

// connectLockSession opens the dedicated session that holds the leader lock.
// TCP keepalives make a dead peer visible within seconds, in both directions,
// and idle_session_timeout makes a frozen one visible (lockIdleTimeout).
func connectLockSession(ctx context.Context, pgURL string, idleTimeout time.Duration, log zerolog.Logger) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(pgURL)
	if err != nil {
		return nil, fmt.Errorf("parse OUTBOX_RELAY_PG_URL: %w", err)
	}
	dialer := &net.Dialer{
		Timeout:         10 * time.Second,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3},
	}
	cfg.DialFunc = dialer.DialContext
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "outbox-relay-lock"
	}
	// Server-side keepalives let Postgres release the lock of a partitioned
	// leader instead of waiting for the kernel's default of hours.
	cfg.RuntimeParams["tcp_keepalives_idle"] = "5"
	cfg.RuntimeParams["tcp_keepalives_interval"] = "2"
	cfg.RuntimeParams["tcp_keepalives_count"] = "3"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open leader lock session: %w", err)
	}
	// Set after connecting, not as a startup parameter, so that a server
	// older than Postgres 14 (no idle_session_timeout) still lets the relay
	// run, with a warning that a frozen leader keeps the lock there.
	if _, err := conn.Exec(ctx, fmt.Sprintf("SET idle_session_timeout = %d", idleTimeout.Milliseconds())); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42704" { // undefined_object: no such setting
			conn.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("set idle_session_timeout on the leader lock session: %w", err)
		}
		log.Warn().Msg("this Postgres has no idle_session_timeout (before 14): a frozen leader keeps the leader lock until it is killed")
	}
	return conn, nil
}

// acquireLeadership blocks until this instance holds the leader lock (it
// returns the lock session) or the relay stops (nil, nil).
func (r *Relay) acquireLeadership(ctx context.Context, stop <-chan struct{}, log zerolog.Logger) (*pgx.Conn, error) {
	key := lockKey(r.cfg.Slot)
	var conn *pgx.Conn
	standbyLogged := false
	retry := newBackoff(r.cfg.LeaderRetry, 30*time.Second)
	for {
		if conn == nil {
			c, err := connectLockSession(ctx, r.cfg.PGURL, lockIdleTimeout(r.cfg.LeaderRetry), log)
			if err != nil {
				r.health.setRole(RoleStandby, "")
				r.health.setLockHealthy(false, err.Error())
				log.Error().Err(err).Msg("cannot open the leader lock session; retrying")
			} else {
				conn = c
				retry = newBackoff(r.cfg.LeaderRetry, 30*time.Second)
			}
		}
		if conn != nil {
			var got bool
			asked := time.Now()
			err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got)
			switch {
			case err != nil:
				log.Error().Err(err).Msg("leader lock session broke; reconnecting")
				r.health.setLockHealthy(false, err.Error())
				conn.Close(context.WithoutCancel(ctx))
				conn = nil
			case got:
				r.delivery.lease.renew(asked)
				log.Info().Str("slot", r.cfg.Slot).Int64("lock_key", key).Msg("leader lock acquired")
				return conn, nil
			default:
				if !standbyLogged {
					log.Info().Str("slot", r.cfg.Slot).Dur("retry", r.cfg.LeaderRetry).Msg("another instance leads; standing by")
					standbyLogged = true
				}
				r.health.setRole(RoleStandby, "")
				r.health.setLockHealthy(true, "")
				r.metrics.leader.Set(0)
			}
		}
		delay := r.cfg.LeaderRetry
		if conn == nil {
			delay = retry.next()
		}
		select {
		case <-time.After(delay):
		case <-stop:
			if conn != nil {
				conn.Close(context.WithoutCancel(ctx))
			}
			return nil, nil
		case <-ctx.Done():
			if conn != nil {
				conn.Close(context.WithoutCancel(ctx))
			}
			return nil, ctx.Err()
		}
	}
}

// watchLeadership runs beside the leader's streaming on the lock session: it
// checks the session every second (a broken session means another instance
// may already lead, so it returns errLostLeadership at once), emits
// heartbeats, and watches the slot and the outbox table.
func (r *Relay) watchLeadership(ctx context.Context, conn *pgx.Conn, log zerolog.Logger) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastHeartbeat, lastSlotCheck, lastAgeCheck time.Time
	for {
		now := time.Now()
		pingCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := conn.Ping(pingCtx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.delivery.lease.end()
			log.Error().Err(err).Msg("leader lock session broke: stopping the stream at once")
			return fmt.Errorf("%w: %v", errLostLeadership, err)
		}
		r.delivery.lease.renew(now)
		if r.cfg.HeartbeatInterval > 0 && now.Sub(lastHeartbeat) >= r.cfg.HeartbeatInterval {
			lastHeartbeat = now
			if err := r.heartbeat(ctx, conn); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Msg("heartbeat failed")
			}
		}
		// The session checks the slot when it starts (and may create it); the
		// watch takes over once it streams.
		if r.health.Role() == RoleStreaming && now.Sub(lastSlotCheck) >= slotCheckInterval {
			lastSlotCheck = now
			if err := r.checkSlotWAL(ctx, conn, log); err != nil {
				return err
			}
		}
		if r.cfg.AckMode.RecordsDelivery() && now.Sub(lastAgeCheck) >= 5*time.Second {
			lastAgeCheck = now
			if err := r.measureOldestUnacked(ctx, conn); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Msg("cannot measure the oldest unacked row")
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// slotCheckInterval is how often the leader reads the slot's WAL retention.
const slotCheckInterval = 10 * time.Second

// heartbeatPrefix marks the relay's own logical messages.
const heartbeatPrefix = "outbox-relay"

// heartbeat writes a transactional logical message: a commit in the
// outbox's database, so the walsender has something to send, the slot's
// position moves even when the only writes are in other databases, and the
// commit time at the confirmed position (the reconciler's clock) stays fresh.
func (r *Relay) heartbeat(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, "SELECT pg_logical_emit_message(true, $1, $2)", heartbeatPrefix, time.Now().UTC().Format(time.RFC3339Nano))
	if err != nil {
		return fmt.Errorf("emit heartbeat: %w", err)
	}
	r.health.heartbeatSent(time.Now())
	r.metrics.heartbeats.Inc()
	return nil
}

// checkSlotWAL reads how much WAL the slot retains and warns before Postgres
// invalidates it; a lost slot stops the relay.
func (r *Relay) checkSlotWAL(ctx context.Context, conn *pgx.Conn, log zerolog.Logger) error {
	slot, ok, err := replication.LookupSlot(ctx, conn, r.cfg.Slot)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn().Err(err).Msg("cannot read the slot's WAL status")
		}
		return nil
	}
	if !ok {
		return fatalf("slot %q disappeared while streaming: someone dropped it; run `outbox-relay setup --recreate-slot`", r.cfg.Slot)
	}
	if slot.RetainedBytes != nil {
		r.metrics.slotRetained.Set(float64(*slot.RetainedBytes))
	}
	if slot.LagBytes != nil {
		r.metrics.confirmedLag.Set(float64(max(*slot.LagBytes, 0)))
	}
	ev := log.Debug()
	switch slot.WALStatus {
	case "lost":
		return fatalf("slot %q is lost (its WAL was removed): run `outbox-relay setup --recreate-slot`", r.cfg.Slot)
	case "unreserved":
		ev = log.Warn()
	}
	if slot.SafeWALSize != nil && *slot.SafeWALSize < 1<<30 {
		ev = log.Warn()
	}
	e := ev.Str("slot", r.cfg.Slot).Str("wal_status", slot.WALStatus)
	if slot.RetainedBytes != nil {
		e = e.Int64("retained_wal_bytes", *slot.RetainedBytes)
	}
	if slot.SafeWALSize != nil {
		e = e.Int64("safe_wal_size", *slot.SafeWALSize)
	}
	e.Msg("slot WAL status")
	return nil
}

// measureOldestUnacked sets the age of the oldest row whose delivery is not
// recorded yet.
func (r *Relay) measureOldestUnacked(ctx context.Context, conn *pgx.Conn) error {
	cols, err := replication.TableColumns(ctx, conn, r.table)
	if err != nil {
		return err
	}
	var commitTimestamps bool
	if err := conn.QueryRow(ctx, "SELECT current_setting('track_commit_timestamp')::bool").Scan(&commitTimestamps); err != nil {
		return fmt.Errorf("read track_commit_timestamp: %w", err)
	}
	// The start check refuses a table with neither (see checkColumns).
	created := rows.TimeExpr(hasColumn(cols, r.mapping.CreatedAt), r.mapping.CreatedAt, commitTimestamps)
	if created == "" {
		return fmt.Errorf("table %s has no column %q and track_commit_timestamp is off: no row age to measure", r.table, r.mapping.CreatedAt)
	}
	var age float64
	err = conn.QueryRow(ctx, fmt.Sprintf("SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(%s)), 0)::float8 FROM %s WHERE %s",
		created, r.table.Quoted(), r.mapping.Unacked(hasColumn(cols, r.mapping.PublishedAt)))).Scan(&age)
	if err != nil {
		return err
	}
	r.metrics.oldestUnacked.Set(max(age, 0))
	return nil
}
