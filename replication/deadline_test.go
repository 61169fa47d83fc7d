package replication

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// readErr reads once from c and returns the error and how long it took.
func readErr(c net.Conn) (error, time.Duration) {
	t0 := time.Now()
	_, err := c.Read(make([]byte, 1))
	return err, time.Since(t0)
}

// pipeDeadline returns a readDeadline on one end of a pipe, and both ends.
func pipeDeadline(t *testing.T) (d *readDeadline, a, b net.Conn) {
	a, b = net.Pipe()
	d = &readDeadline{conn: a}
	t.Cleanup(func() {
		d.close()
		a.Close()
		b.Close()
	})
	return d, a, b
}

func TestReadDeadlineEndsReadAtDeadline(t *testing.T) {
	d, a, _ := pipeDeadline(t)
	d.watch(context.Background())
	d.set(time.Now().Add(50 * time.Millisecond))
	err, took := readErr(a)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v, want a deadline error", err)
	}
	if took < 40*time.Millisecond || took > 2*time.Second {
		t.Fatalf("read returned after %s, want about 50ms", took)
	}
}

func TestReadDeadlineEndsBlockedReadWhenContextEnds(t *testing.T) {
	d, a, b := pipeDeadline(t)
	ctx, cancel := context.WithCancel(context.Background())
	d.watch(ctx)
	d.set(time.Now().Add(time.Hour))
	time.AfterFunc(50*time.Millisecond, cancel)
	err, took := readErr(a)
	if !errors.Is(err, os.ErrDeadlineExceeded) || took > 2*time.Second {
		t.Fatalf("read: %v after %s, want a deadline error soon after the cancel", err, took)
	}
	// The ended context wins over a later deadline: the stop is not lost.
	d.set(time.Now().Add(time.Hour))
	if err, took := readErr(a); !errors.Is(err, os.ErrDeadlineExceeded) || took > time.Second {
		t.Fatalf("read after set: %v after %s, want the deadline to stay in the past", err, took)
	}
	// Watching another context makes deadlines count again.
	d.watch(context.Background())
	d.set(time.Now().Add(50 * time.Millisecond))
	go func() { b.Write([]byte{1}) }()
	if err, _ := readErr(a); err != nil {
		t.Fatalf("read after watching a live context: %v", err)
	}
}
