package reconciler_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/reconciler"
)

// syncBuffer is a log sink the Run goroutine and the test share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestRun: Run sweeps every interval, logs a failed sweep and retries it at
// the next one, logs the sweep that found rows, and returns nil when its
// context ends.
func TestRun(t *testing.T) {
	e := newEnv(t)
	id := e.insertAged(time.Hour)
	dl := &recorder{fail: errors.New("broker unavailable")}
	var logs syncBuffer
	connect := func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, e.url) }
	r, err := reconciler.New(reconciler.Config{
		Table: outboxTable, Mapping: outbox.DefaultMapping(), AckMode: outbox.AckMark,
		Interval: 20 * time.Millisecond,
	}, connect, dl, at(e.now()), zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(testContext(t))
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	waitFor(t, "a failed sweep to be logged", func() bool { return strings.Contains(logs.String(), "broker unavailable") })
	if got := e.state(id); got != "unacked" {
		t.Fatalf("row after failed sweeps: %s, want unacked", got)
	}
	dl.setFail(nil)
	waitFor(t, "the row to be swept", func() bool { return e.state(id) == "marked" })
	waitFor(t, "the sweep to be logged", func() bool { return strings.Contains(logs.String(), `"rows":1`) })

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil when its context ends", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if n := len(dl.ids()); n != 1 {
		t.Errorf("dead-lettered %d times, want once", n)
	}
	out := logs.String()
	for _, want := range []string{`"component":"reconciler"`, `"level":"error"`, `"oldest_age"`, `"level":"warn"`} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %s:\n%s", want, out)
		}
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
