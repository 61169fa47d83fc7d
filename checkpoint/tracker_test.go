package checkpoint

import (
	"slices"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

func TestTracker(t *testing.T) {
	tests := []struct {
		name  string
		start outbox.LSN
		// zeroValue uses a Tracker literal instead of New(start).
		zeroValue bool
		steps     []step
	}{
		{
			name:  "new tracker is idle at start",
			start: 0x10,
			steps: []step{watermark(0x10), idle(true), pending(0, 0)},
		},
		{
			name:  "in-order acks",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 2), commit(1, 0x20),
				watermark(0x10), pending(1, 2), idle(false),
				ack(1, 1), watermark(0x10),
				ack(1, 1), watermark(0x20), pending(0, 0), idle(true),
				begin(2), add(2, 1), commit(2, 0x30), ack(2, 1),
				watermark(0x30), idle(true),
			},
		},
		{
			name:  "acks before commit move the watermark at commit",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 3), ack(1, 2), add(1, 1), ack(1, 2),
				watermark(0x10), pending(1, 0), idle(false),
				commit(1, 0x20), watermark(0x20), pending(0, 0), idle(true),
			},
		},
		{
			name:  "later transaction fully acked first waits for the earlier one",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 2), commit(1, 0x20),
				begin(2), add(2, 1), commit(2, 0x30),
				ack(2, 1), watermark(0x10), pending(2, 2),
				ack(1, 1), watermark(0x10), pending(2, 1),
				ack(1, 1), watermark(0x30), pending(0, 0), idle(true),
			},
		},
		{
			name:  "out-of-order acks across three transactions",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 2), commit(1, 0x20),
				begin(2), add(2, 2), commit(2, 0x30),
				begin(3), add(3, 2), commit(3, 0x40),
				ack(3, 1), ack(2, 1), ack(3, 1), watermark(0x10),
				ack(1, 2), watermark(0x20), pending(2, 1),
				ack(2, 1), watermark(0x40), pending(0, 0),
			},
		},
		{
			name:  "open transaction blocks the watermark while its records are acked",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 1), commit(1, 0x20), ack(1, 1), watermark(0x20),
				begin(2), add(2, 2), ack(2, 2),
				watermark(0x20), pending(1, 0), idle(false),
				add(2, 1), commit(2, 0x30), watermark(0x20), pending(1, 1),
				ack(2, 1), watermark(0x30), idle(true),
			},
		},
		{
			name:  "open transaction behind an unacked one",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 1), commit(1, 0x20),
				begin(2), add(2, 1), ack(2, 1),
				ack(1, 1), watermark(0x20), pending(1, 0),
				commit(2, 0x30), watermark(0x30),
			},
		},
		{
			name:  "empty transaction completes at commit",
			start: 0x10,
			steps: []step{
				begin(1), watermark(0x10), idle(false), pending(1, 0),
				commit(1, 0x20), watermark(0x20), idle(true), pending(0, 0),
			},
		},
		{
			name:  "empty transactions behind an unacked one fold with it",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 1), commit(1, 0x20),
				begin(2), commit(2, 0x30),
				begin(3), add(3, 0), commit(3, 0x40),
				watermark(0x10), pending(3, 1),
				ack(1, 1), watermark(0x40), pending(0, 0),
			},
		},
		{
			name:  "empty transaction between unacked ones",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 1), commit(1, 0x20),
				begin(2), commit(2, 0x30),
				begin(3), add(3, 1), commit(3, 0x40),
				ack(1, 1), watermark(0x30), pending(1, 1),
				ack(3, 1), watermark(0x40),
			},
		},
		{
			name:  "large transaction acked in many small chunks",
			start: 0x10,
			steps: slices.Concat(
				[]step{begin(1)},
				slices.Repeat([]step{add(1, 100)}, 10),
				[]step{commit(1, 0x20)},
				slices.Repeat([]step{ack(1, 1), watermark(0x10)}, 999),
				[]step{pending(1, 1), ack(1, 1), watermark(0x20), pending(0, 0)},
			),
		},
		{
			name:  "many transactions in flight grow the ring",
			start: 0x10,
			steps: slices.Concat(
				manyTxns(1, 100, 0x100),
				[]step{watermark(0x10), pending(100, 100)},
				ackEach(100, 2, 1), // every transaction but the first
				[]step{watermark(0x10), pending(100, 1), ack(1, 1), watermark(0x100 + 99*0x10), idle(true)},
			),
		},
		{
			// Growth copies from the middle of a wrapped ring.
			name:  "ring wraps before it grows",
			start: 0x10,
			steps: slices.Concat(
				manyTxns(1, 5, 0x100),
				ackEach(5, 1, 1),
				[]step{watermark(0x140)},
				manyTxns(6, 20, 0x200),
				[]step{pending(20, 20), ack(6, 1), watermark(0x200)},
				ackEach(25, 8, 1),
				[]step{watermark(0x200), ack(7, 1), watermark(0x200 + 19*0x10), idle(true)},
			),
		},
		{
			name:      "zero value starts at 0",
			zeroValue: true,
			steps: []step{
				watermark(0), idle(true),
				begin(1), add(1, 1), commit(1, 0x20), ack(1, 1), watermark(0x20),
			},
		},

		{
			name:  "advance idle from start",
			start: 0x10,
			steps: []step{
				advanceIdle(0x20, true), watermark(0x20),
				advanceIdle(0x20, false), advanceIdle(0x18, false), watermark(0x20),
				advanceIdle(0x30, true), watermark(0x30), idle(true),
			},
		},
		{
			name:  "advance idle after the last transaction completes",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 1), commit(1, 0x20), ack(1, 1),
				advanceIdle(0x20, false), advanceIdle(0x28, true), watermark(0x28),
			},
		},
		{
			name:  "no idle advance with an open transaction",
			start: 0x10,
			steps: []step{
				begin(1), advanceIdle(0x100, false), watermark(0x10),
				add(1, 1), ack(1, 1), advanceIdle(0x100, false), watermark(0x10),
				commit(1, 0x20), advanceIdle(0x100, true), watermark(0x100),
			},
		},
		{
			name:  "no idle advance with unacked records",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 1), commit(1, 0x20),
				advanceIdle(0x100, false), watermark(0x10),
				ack(1, 1), watermark(0x20), advanceIdle(0x100, true), watermark(0x100),
			},
		},
		{
			name:  "commit after an idle advance must end above it",
			start: 0x10,
			steps: []step{
				advanceIdle(0x50, true), begin(1), add(1, 1),
				commit(1, 0x40).fails(errLSNOrder),
				commit(1, 0x50).fails(errLSNOrder),
				commit(1, 0x60), ack(1, 1), watermark(0x60),
			},
		},

		{
			name:  "begin while a transaction is open",
			start: 0x10,
			steps: []step{
				begin(1), begin(0).fails(errTxnOpen),
				add(1, 1), begin(0).fails(errTxnOpen),
				commit(1, 0x20), begin(2),
			},
		},
		{
			name:  "add to a transaction that is not open",
			start: 0x10,
			steps: []step{
				add(1, 1).fails(errNotOpen),
				add(0, 1).fails(errNotOpen),
				begin(1), add(1, 1),
				add(0, 1).fails(errNotOpen),
				add(2, 1).fails(errNotOpen),
				commit(1, 0x20),
				add(1, 1).fails(errNotOpen), // committed, unacked
				ack(1, 1),
				add(1, 1).fails(errNotOpen), // folded
				begin(2),
				add(1, 1).fails(errNotOpen), // an older one
				add(2, 1), pending(1, 1),
			},
		},
		{
			name:  "negative counts",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 2),
				add(1, -1).fails(errNegativeCount),
				ack(1, -1).fails(errNegativeCount),
				pending(1, 2),
			},
		},
		{
			name:  "commit of a transaction that is not open",
			start: 0x10,
			steps: []step{
				commit(1, 0x20).fails(errNotOpen),
				commit(0, 0x20).fails(errNotOpen),
				begin(1), add(1, 1),
				commit(2, 0x20).fails(errNotOpen),
				commit(1, 0x20),
				commit(1, 0x30).fails(errNotOpen), // twice
				begin(2),
				commit(1, 0x30).fails(errNotOpen), // an older one
				commit(2, 0x30),
			},
		},
		{
			name:  "commit end not above the previous one",
			start: 0x10,
			steps: []step{
				begin(1),
				commit(1, 0x10).fails(errLSNOrder), // equal to start
				commit(1, 0x08).fails(errLSNOrder), // below start
				commit(1, 0x20),
				begin(2), add(2, 1),
				commit(2, 0x20).fails(errLSNOrder), // equal to the previous commit
				commit(2, 0x18).fails(errLSNOrder), // below it
				pending(1, 1),
				commit(2, 0x21), ack(2, 1), watermark(0x21),
			},
		},
		{
			name:  "ack of an unknown transaction",
			start: 0x10,
			steps: []step{
				ack(1, 0).fails(errUnknownTxn),
				ack(0, 1).fails(errUnknownTxn),
				begin(1), add(1, 1),
				ack(0, 1).fails(errUnknownTxn),
				ack(2, 1).fails(errUnknownTxn),
				ack(^uint64(0), 1).fails(errUnknownTxn),
				ack(1, 1),
			},
		},
		{
			name:  "ack of a folded transaction",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 1), commit(1, 0x20), ack(1, 1),
				ack(1, 1).fails(errTxnComplete),
				ack(1, 0).fails(errTxnComplete),
				begin(2), commit(2, 0x30), // empty: folded at commit
				ack(2, 0).fails(errTxnComplete),
			},
		},
		{
			name:  "ack of more records than added",
			start: 0x10,
			steps: []step{
				begin(1),
				ack(1, 1).fails(errOverAck), // open, none added
				add(1, 3),
				ack(1, 4).fails(errOverAck), // open
				ack(1, 2),
				ack(1, 2).fails(errOverAck), // open, partly acked
				commit(1, 0x20),
				ack(1, 2).fails(errOverAck), // committed
				begin(2), add(2, 1), commit(2, 0x30), ack(2, 1),
				ack(2, 1).fails(errOverAck), // complete but not folded
				watermark(0x10), pending(2, 1),
				ack(1, 1), watermark(0x30),
			},
		},
		{
			name:  "zero acks and adds are no-ops",
			start: 0x10,
			steps: []step{
				begin(1), add(1, 0), ack(1, 0), pending(1, 0),
				commit(1, 0x20), watermark(0x20),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(tt.start)
			if tt.zeroValue {
				tr = &Tracker{}
			}
			run(t, tr, tt.steps)
		})
	}
}

func TestErrorsSayWhich(t *testing.T) {
	tr := New(0x10)
	txn, _ := tr.Begin()
	err := tr.Ack(txn, 2)
	want := "ack 2 records of txn 1, 0 unacked: more records acked than added"
	if err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
	err = tr.Commit(txn, 0x10)
	want = "commit txn 1 at 0/10, previous 0/10: commit end lsn not above the previous position"
	if err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
}
