package relay

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestLeaderLeaseFencesDelivery(t *testing.T) {
	l := newLeaderLease(200*time.Millisecond + leaseMargin)
	if l.valid() {
		t.Fatal("a lease never renewed is valid")
	}
	l.renew(time.Now())
	if !l.valid() {
		t.Fatal("a lease renewed now is not valid")
	}
	if err := l.wait(context.Background()); err != nil {
		t.Fatalf("wait on a valid lease: %v", err)
	}
	// A renewal from a query that started longer ago than the span (the
	// process was frozen meanwhile) is already expired.
	l.renew(time.Now().Add(-250 * time.Millisecond))
	if l.valid() {
		t.Fatal("a lease renewed from a query older than its span is valid")
	}
	l.renew(time.Now())
	time.Sleep(250 * time.Millisecond)
	if l.valid() {
		t.Fatal("the lease outlived its span")
	}
	lost := errors.New("lost the lock")
	ctx, cancel := context.WithCancelCause(context.Background())
	time.AfterFunc(50*time.Millisecond, func() { cancel(lost) })
	if err := l.wait(ctx); !errors.Is(err, lost) {
		t.Fatalf("wait on an expired lease returned %v, want the leader context's cause", err)
	}
	l.renew(time.Now())
	l.end()
	if l.valid() {
		t.Fatal("an ended lease is valid")
	}
	var unfenced *leaderLease
	if err := unfenced.wait(context.Background()); err != nil {
		t.Fatalf("a nil lease waits: %v", err)
	}
}
