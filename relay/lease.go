package relay

import (
	"context"
	"sync/atomic"
	"time"
)

// leaseEpoch anchors lease times to the monotonic clock, so a wall-clock
// step cannot lengthen a lease.
var leaseEpoch = time.Now()

// leaderLease fences delivery by the leader lock session. Postgres ends a
// lock session that stayed idle for lockIdleTimeout; a query that started at
// t therefore proves the session, and the lock, last at least until
// t + lockIdleTimeout. Each successful ping renews the lease from its start;
// records are handed to Kafka only while it runs. A leader that was frozen
// (SIGSTOP, a paused VM) longer than the lease wakes up with it expired and
// publishes nothing more, not even what its socket buffered while it slept,
// until a ping succeeds — which it cannot once its session was ended and the
// lock passed on.
type leaderLease struct {
	until atomic.Int64 // nanoseconds since leaseEpoch; 0: not leading
	span  time.Duration
}

// leaseMargin is kept off the session's idle timeout for the time between
// the ping's start and the server's receipt of it.
const leaseMargin = time.Second

func newLeaderLease(idleTimeout time.Duration) *leaderLease {
	return &leaderLease{span: idleTimeout - leaseMargin}
}

// renew extends the lease from the start of a query that succeeded.
func (l *leaderLease) renew(queryStart time.Time) {
	l.until.Store(int64(queryStart.Sub(leaseEpoch) + l.span))
}

// end revokes the lease at once.
func (l *leaderLease) end() { l.until.Store(0) }

func (l *leaderLease) valid() bool {
	return int64(time.Since(leaseEpoch)) < l.until.Load()
}

// wait returns once the lease is valid, or with ctx's error (the leader's
// context ends when its lock session broke). A nil lease never waits.
func (l *leaderLease) wait(ctx context.Context) error {
	if l == nil {
		return nil
	}
	for !l.valid() {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}
