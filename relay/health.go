package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Role is what this instance is doing.
type Role string

// The roles an instance goes through.
const (
	RoleStarting  Role = "starting"
	RoleStandby   Role = "standby"
	RoleStreaming Role = "streaming"
	RoleStopping  Role = "stopping"
)

// Health is the state /readyz judges, updated by the running relay.
type Health struct {
	mu           sync.Mutex
	role         Role
	reason       string
	lastReceived time.Time // last message or keepalive from the walsender
	lastProgress time.Time // last time the confirmed position moved or nothing was in flight
	confirmed    outbox.LSN
	now          func() time.Time
	// silence is how long the stream may be quiet before the relay is not
	// ready: the walsender sends a keepalive at least every
	// wal_sender_timeout/2 (30 s by default).
	silence time.Duration
	// stall is how long records may be in flight without the confirmed
	// position moving before the relay is not ready.
	stall time.Duration

	lockHealthy bool
	lockProblem string
	// heartbeatPending is when the oldest heartbeat not yet seen coming back
	// through the stream was sent (zero when none is pending).
	heartbeatPending time.Time
	heartbeatWait    time.Duration
}

// NewHealth returns the health of a starting instance. heartbeatInterval is
// OUTBOX_RELAY_HEARTBEAT_INTERVAL: a heartbeat not back within three
// intervals (at least 30 s) makes the relay not ready.
func NewHealth(heartbeatInterval time.Duration) *Health {
	return &Health{role: RoleStarting, now: time.Now, silence: 75 * time.Second, stall: 2 * time.Minute,
		heartbeatWait: max(3*heartbeatInterval, 30*time.Second)}
}

func (h *Health) setRole(role Role, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.role == role && h.reason == reason {
		return
	}
	h.role, h.reason = role, reason
	now := h.now()
	h.lastReceived, h.lastProgress = now, now
	h.heartbeatPending = time.Time{}
}

func (h *Health) setLockHealthy(ok bool, problem string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lockHealthy, h.lockProblem = ok, problem
}

// heartbeatSent records a heartbeat written to the WAL.
func (h *Health) heartbeatSent(t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.heartbeatPending.IsZero() {
		h.heartbeatPending = t
	}
}

// heartbeatReceived records a heartbeat that came back through the stream.
func (h *Health) heartbeatReceived() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.heartbeatPending = time.Time{}
	h.lastReceived = h.now()
}

// received records that the stream delivered something.
func (h *Health) received() {
	h.mu.Lock()
	h.lastReceived = h.now()
	h.mu.Unlock()
}

// progress records the confirmed position and whether records are in flight.
func (h *Health) progress(confirmed outbox.LSN, inflight bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if confirmed != h.confirmed || !inflight {
		h.lastProgress = h.now()
	}
	h.confirmed = confirmed
}

// Ready reports whether the instance does its job end to end, and if not, why.
func (h *Health) Ready() (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	switch h.role {
	case RoleStandby:
		if !h.lockHealthy {
			return false, "standby: leader lock session broken: " + h.lockProblem
		}
		return true, "standby: leader lock session healthy"
	case RoleStreaming:
		if !h.heartbeatPending.IsZero() && h.heartbeatWait > 0 {
			if d := now.Sub(h.heartbeatPending); d > h.heartbeatWait {
				return false, fmt.Sprintf("a heartbeat written %s ago has not come back through the replication stream", d.Round(time.Second))
			}
		}
		if d := now.Sub(h.lastReceived); d > h.silence {
			return false, fmt.Sprintf("nothing received from the replication stream for %s", d.Round(time.Second))
		}
		if d := now.Sub(h.lastProgress); d > h.stall {
			return false, fmt.Sprintf("records in flight but the confirmed position %s has not moved for %s", h.confirmed, d.Round(time.Second))
		}
		return true, "streaming"
	default:
		if h.reason != "" {
			return false, string(h.role) + ": " + h.reason
		}
		return false, string(h.role)
	}
}

// Role returns the current role.
func (h *Health) Role() Role {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.role
}

// ServeHTTP serves /metrics, /healthz and /readyz on addr until ctx ends.
// A listen failure is returned at once, so a misconfigured address stops the
// relay at start instead of leaving it unobservable.
func ServeHTTP(ctx context.Context, addr string, gatherer prometheus.Gatherer, health *Health, pprofOn bool, log zerolog.Logger) (net.Addr, <-chan error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("OUTBOX_RELAY_HTTP_ADDR %q: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeStatus(w, http.StatusOK, map[string]string{"status": "alive", "role": string(health.Role())})
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ready, reason := health.Ready()
		code := http.StatusOK
		if !ready {
			code = http.StatusServiceUnavailable
		}
		writeStatus(w, code, map[string]any{"ready": ready, "reason": reason, "role": string(health.Role())})
	})
	if pprofOn {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	log.Info().Str("addr", ln.Addr().String()).Msg("serving /metrics, /healthz, /readyz")
	return ln.Addr(), done, nil
}

func writeStatus(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}
