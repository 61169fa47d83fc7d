// Package checkpoint decides which WAL position the relay may confirm to
// Postgres: the end of the newest transaction that, together with every
// transaction before it, has committed and had each of its records acked by
// Kafka ("LSN after ack").
//
// It is pure bookkeeping. It must never do I/O, log, read a clock or lock:
// the relay owns a Tracker, serialises every call to it, and decides what to
// do with the watermark.
package checkpoint

import (
	"errors"
	"fmt"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Misuse of a Tracker. Each one is a bug in the caller, never a condition of
// the stream or the broker, so they are not exported for branching; the
// wrapped message says which call and which transaction.
var (
	errTxnOpen       = errors.New("a transaction is already open")
	errNotOpen       = errors.New("transaction is not the open one")
	errUnknownTxn    = errors.New("unknown transaction")
	errTxnComplete   = errors.New("transaction is already complete")
	errOverAck       = errors.New("more records acked than added")
	errNegativeCount = errors.New("negative record count")
	errLSNOrder      = errors.New("commit end lsn not above the previous position")
)

// Tracker computes the watermark: the end LSN of the newest transaction that
// is committed and fully acked together with every transaction before it.
// Only the watermark may be confirmed to Postgres; confirming anything past it
// would let the server discard a row Kafka never acknowledged.
//
// Transactions are registered in the order the replication stream delivers
// them, which with protocol v1 is commit order: Begin opens one, Add counts
// its records as they are handed to the publisher, and Commit closes it with
// its end LSN. Acks come back in any order, across transactions, in chunks of
// any size. A fully acked transaction waits until every earlier one is
// complete before the watermark moves past it, and an open transaction holds
// the watermark even when every record it has so far is acked, because more
// may follow. A committed transaction with no records is complete as soon as
// the ones before it are, so empty transactions never pin the watermark.
//
// Transactions are identified by handles that Begin returns: increasing
// numbers starting at 1, so the zero handle is never valid. Memory grows with
// the number of transactions in flight (open, or committed and not yet folded
// into the watermark), never with their records, and is kept at its peak for
// reuse. Add and Ack are O(1) and do not allocate; Begin allocates only when
// more transactions are in flight than ever before.
//
// A method that returns an error leaves the Tracker unchanged. The zero
// Tracker is ready to use with a watermark of 0. A Tracker is not safe for
// concurrent use.
type Tracker struct {
	watermark outbox.LSN
	// lastEnd is the end LSN of the newest commit, or the watermark when
	// that was set later by New or AdvanceIdle. The next commit must end
	// above it: the stream delivers transactions in commit order, and a
	// commit at or below a confirmed position would be one the server
	// should never have sent again.
	lastEnd outbox.LSN

	// ring holds the transactions not yet folded into the watermark, oldest
	// first, starting at ring[head]; its length is zero or a power of two.
	ring  []entry
	head  int
	count int
	// folded is the handle of the newest transaction folded into the
	// watermark, so ring[head] has handle folded+1.
	folded uint64
	// open reports whether the newest transaction in ring is still open.
	open bool
	// unacked is the number of records added and not yet acked, across all
	// transactions in ring.
	unacked int
}

// entry is one transaction in flight.
type entry struct {
	end       outbox.LSN
	added     int
	acked     int
	committed bool
}

// New returns a tracker whose watermark starts at start (the slot's
// confirmed_flush_lsn).
func New(start outbox.LSN) *Tracker {
	return &Tracker{watermark: start, lastEnd: start}
}

// Begin opens a transaction and returns its handle. Only one transaction may
// be open at a time; Begin while one is open returns an error.
func (t *Tracker) Begin() (uint64, error) {
	if t.open {
		return 0, fmt.Errorf("begin: txn %d: %w", t.newest(), errTxnOpen)
	}
	if t.count == len(t.ring) {
		t.grow()
	}
	t.ring[(t.head+t.count)&(len(t.ring)-1)] = entry{}
	t.count++
	t.open = true
	return t.newest(), nil
}

// Add registers n more records of the open transaction txn; each must be
// acked later. It returns an error if txn is not the open transaction.
func (t *Tracker) Add(txn uint64, n int) error {
	if n < 0 {
		return fmt.Errorf("add %d records to txn %d: %w", n, txn, errNegativeCount)
	}
	if !t.open || txn != t.newest() {
		return fmt.Errorf("add %d records to txn %d: %w", n, txn, errNotOpen)
	}
	t.at(t.count - 1).added += n
	t.unacked += n
	return nil
}

// Commit closes the open transaction txn; end is its end LSN (the Commit
// message's TransactionEndLSN). It returns an error if txn is not open or end
// is not above the previous commit's end (or the start or AdvanceIdle
// position, when that is newer).
func (t *Tracker) Commit(txn uint64, end outbox.LSN) error {
	if !t.open || txn != t.newest() {
		return fmt.Errorf("commit txn %d at %v: %w", txn, end, errNotOpen)
	}
	if end <= t.lastEnd {
		return fmt.Errorf("commit txn %d at %v, previous %v: %w", txn, end, t.lastEnd, errLSNOrder)
	}
	e := t.at(t.count - 1)
	e.end = end
	e.committed = true
	t.open = false
	t.lastEnd = end
	t.fold()
	return nil
}

// Ack marks n records of transaction txn acked; txn may be open or committed.
// It returns an error if more records are acked than were added, or if txn is
// unknown or already folded into the watermark.
func (t *Tracker) Ack(txn uint64, n int) error {
	if n < 0 {
		return fmt.Errorf("ack %d records of txn %d: %w", n, txn, errNegativeCount)
	}
	if txn == 0 || txn > t.newest() {
		return fmt.Errorf("ack %d records of txn %d: %w", n, txn, errUnknownTxn)
	}
	if txn <= t.folded {
		return fmt.Errorf("ack %d records of txn %d: %w", n, txn, errTxnComplete)
	}
	e := t.at(int(txn - t.folded - 1))
	if n > e.added-e.acked {
		return fmt.Errorf("ack %d records of txn %d, %d unacked: %w", n, txn, e.added-e.acked, errOverAck)
	}
	e.acked += n
	t.unacked -= n
	t.fold()
	return nil
}

// Watermark returns the end LSN of the newest transaction that is committed
// and fully acked together with every earlier one, or the start or last
// AdvanceIdle position when that is newer.
func (t *Tracker) Watermark() outbox.LSN { return t.watermark }

// Idle reports whether no transaction is open and no record is unacked. Then
// every transaction seen is folded into the watermark.
func (t *Tracker) Idle() bool { return !t.open && t.unacked == 0 }

// AdvanceIdle moves the watermark to lsn when the tracker is Idle and lsn is
// above the watermark, and reports whether it moved. The relay passes a
// keepalive's WAL end, so that a slot with no outbox traffic does not pin
// WAL; while anything is in flight, only the acks may move the watermark.
func (t *Tracker) AdvanceIdle(lsn outbox.LSN) bool {
	if !t.Idle() || lsn <= t.watermark {
		return false
	}
	t.watermark = lsn
	t.lastEnd = lsn
	return true
}

// Pending returns the number of transactions not yet folded into the
// watermark (open, or committed and not yet complete together with every
// earlier one) and the number of unacked records.
func (t *Tracker) Pending() (txns int, records int) { return t.count, t.unacked }

// fold pops every complete transaction from the head of the ring and moves
// the watermark to the end of the last one popped. It runs after every
// Commit and Ack; the head is never complete between calls, so a change to
// any other entry cannot make it pop anything.
func (t *Tracker) fold() {
	for t.count > 0 {
		e := &t.ring[t.head]
		if !e.committed || e.acked < e.added {
			return
		}
		t.watermark = e.end
		t.head = (t.head + 1) & (len(t.ring) - 1)
		t.count--
		t.folded++
	}
}

// newest returns the handle of the newest transaction in flight, or of the
// newest folded one when none is in flight.
func (t *Tracker) newest() uint64 { return t.folded + uint64(t.count) }

// at returns the i-th transaction in flight, oldest first.
func (t *Tracker) at(i int) *entry { return &t.ring[(t.head+i)&(len(t.ring)-1)] }

// grow doubles the ring, keeping the transactions in order from index 0.
func (t *Tracker) grow() {
	ring := make([]entry, max(8, 2*len(t.ring)))
	for i := range t.count {
		ring[i] = *t.at(i)
	}
	t.ring = ring
	t.head = 0
}
