package checkpoint

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// step is one call on a Tracker, or one check of its state, in a table test.
type step struct {
	desc string
	// call makes the call and returns its error; nil for a pure check.
	call    func(*Tracker) error
	wantErr error
	// check returns a failure message, or "" when the state is as expected.
	check func(*Tracker) string
}

// fails expects the call to fail with want and to leave the tracker unchanged.
func (s step) fails(want error) step {
	s.wantErr = want
	return s
}

func begin(want uint64) step {
	var got uint64
	return step{
		desc: "Begin()",
		call: func(tr *Tracker) (err error) {
			got, err = tr.Begin()
			return err
		},
		check: func(*Tracker) string {
			if got != want {
				return fmt.Sprintf("handle = %d, want %d", got, want)
			}
			return ""
		},
	}
}

func add(txn uint64, n int) step {
	return step{
		desc: fmt.Sprintf("Add(%d, %d)", txn, n),
		call: func(tr *Tracker) error { return tr.Add(txn, n) },
	}
}

func commit(txn uint64, end outbox.LSN) step {
	return step{
		desc: fmt.Sprintf("Commit(%d, %v)", txn, end),
		call: func(tr *Tracker) error { return tr.Commit(txn, end) },
	}
}

func ack(txn uint64, n int) step {
	return step{
		desc: fmt.Sprintf("Ack(%d, %d)", txn, n),
		call: func(tr *Tracker) error { return tr.Ack(txn, n) },
	}
}

func advanceIdle(lsn outbox.LSN, wantMoved bool) step {
	return step{
		desc: fmt.Sprintf("AdvanceIdle(%v)", lsn),
		check: func(tr *Tracker) string {
			if got := tr.AdvanceIdle(lsn); got != wantMoved {
				return fmt.Sprintf("moved = %t, want %t", got, wantMoved)
			}
			return ""
		},
	}
}

func watermark(want outbox.LSN) step {
	return step{
		desc: "Watermark()",
		check: func(tr *Tracker) string {
			if got := tr.Watermark(); got != want {
				return fmt.Sprintf("watermark = %v, want %v", got, want)
			}
			return ""
		},
	}
}

func idle(want bool) step {
	return step{
		desc: "Idle()",
		check: func(tr *Tracker) string {
			if got := tr.Idle(); got != want {
				return fmt.Sprintf("idle = %t, want %t", got, want)
			}
			return ""
		},
	}
}

func pending(wantTxns, wantRecords int) step {
	return step{
		desc: "Pending()",
		check: func(tr *Tracker) string {
			if txns, records := tr.Pending(); txns != wantTxns || records != wantRecords {
				return fmt.Sprintf("pending = (%d txns, %d records), want (%d, %d)", txns, records, wantTxns, wantRecords)
			}
			return ""
		},
	}
}

// snapshot copies the tracker deeply enough to compare it after a failed call.
func snapshot(tr *Tracker) Tracker {
	s := *tr
	s.ring = slices.Clone(tr.ring)
	return s
}

func run(t *testing.T, tr *Tracker, steps []step) {
	t.Helper()
	for i, s := range steps {
		if s.call != nil {
			before := snapshot(tr)
			err := s.call(tr)
			switch {
			case s.wantErr == nil && err != nil:
				t.Fatalf("step %d %s: error = %v, want nil", i, s.desc, err)
			case s.wantErr != nil && !errors.Is(err, s.wantErr):
				t.Fatalf("step %d %s: error = %v, want %v", i, s.desc, err, s.wantErr)
			case s.wantErr != nil && !reflect.DeepEqual(snapshot(tr), before):
				t.Fatalf("step %d %s: failed call changed the tracker:\n got %+v\nwant %+v", i, s.desc, snapshot(tr), before)
			}
		}
		if s.check != nil && s.wantErr == nil {
			if msg := s.check(tr); msg != "" {
				t.Fatalf("step %d %s: %s", i, s.desc, msg)
			}
		}
	}
}

// manyTxns returns steps that begin n transactions of one record each,
// handles from first on, committed at end, end+0x10, and so on.
func manyTxns(first uint64, n int, end outbox.LSN) []step {
	var steps []step
	for i := range n {
		txn := first + uint64(i)
		steps = append(steps, begin(txn), add(txn, 1), commit(txn, end+outbox.LSN(i)*0x10))
	}
	return steps
}

// ackEach returns steps that ack one record of each transaction from first
// through last, newest first.
func ackEach(last, first uint64, n int) []step {
	var steps []step
	for txn := last; txn >= first; txn-- {
		steps = append(steps, ack(txn, n))
	}
	return steps
}
