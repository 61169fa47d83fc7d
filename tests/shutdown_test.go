package tests

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// TestGracefulStopUnconfirmedExitsNonZero asks the relay to stop while
// records are in flight and breaks its replication connection before they
// are acked: the final position cannot be confirmed, so the stop is not
// clean and the exit code must say so.
func TestGracefulStopUnconfirmedExitsNonZero(t *testing.T) {
	requireRelay(t)
	e := newEnv(t)
	e.createTable()
	r := e.startRelay()
	block := holdProduce(e.kafka.Cluster())
	t.Cleanup(block.release)
	e.insert(orderEvents(0, 5)...)
	e.waitFor(30*time.Second, "the records to be in flight", func() (bool, string) {
		return block.attempts() > 0, fmt.Sprintf("%d produce requests held", block.attempts())
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var walsender int32
	if err := e.db.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", e.name).Scan(&walsender); err != nil {
		t.Fatal(err)
	}
	r.signalled.Store(true)
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	e.waitFor(10*time.Second, "the relay to start draining", func() (bool, string) {
		n := len(logEntries(r, "stopping: draining in-flight records"))
		return n > 0, fmt.Sprintf("%d lines", n)
	})
	e.exec("SELECT pg_terminate_backend($1)", walsender)
	time.Sleep(200 * time.Millisecond) // the walsender is gone before the acks come
	block.release()
	code, exited := r.wait(60 * time.Second)
	if !exited {
		t.Fatal("the relay did not exit within 60s of SIGTERM")
	}
	t.Logf("exit %d; error lines:\n%s", code, errorLines(r.stderr.String()))
	if code == 0 {
		t.Errorf("the relay exited 0 after a graceful stop whose final position it could not confirm, want non-zero; stderr:\n%s", r.stderr.Tail(20))
	}
}
