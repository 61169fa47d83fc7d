package checkpoint

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

var seedFlag = flag.Uint64("seed", 0, "run TestTrackerProperty with only this seed")

// model is the reference the Tracker is checked against: it keeps every
// transaction ever begun and recomputes the watermark from scratch, the
// slowest and plainest way to say what the watermark is.
type model struct {
	// base is the start position or the last idle advance.
	base outbox.LSN
	// txns holds every transaction begun; handle = index+1.
	txns []modelTxn
}

type modelTxn struct {
	end       outbox.LSN
	added     int
	acked     int
	committed bool
}

func (x modelTxn) complete() bool { return x.committed && x.acked == x.added }

// prefix returns the number of transactions in the longest complete prefix.
func (m *model) prefix() int {
	n := 0
	for n < len(m.txns) && m.txns[n].complete() {
		n++
	}
	return n
}

func (m *model) watermark() outbox.LSN {
	if n := m.prefix(); n > 0 && m.txns[n-1].end > m.base {
		return m.txns[n-1].end
	}
	return m.base
}

func (m *model) open() bool { return len(m.txns) > 0 && !m.txns[len(m.txns)-1].committed }

// lastEnd returns the position the next commit must end above.
func (m *model) lastEnd() outbox.LSN {
	for i := len(m.txns) - 1; i >= 0; i-- {
		if m.txns[i].committed {
			return max(m.txns[i].end, m.base)
		}
	}
	return m.base
}

func (m *model) pending() (txns, records int) {
	for _, x := range m.txns {
		records += x.added - x.acked
	}
	return len(m.txns) - m.prefix(), records
}

func (m *model) idle() bool {
	_, records := m.pending()
	return !m.open() && records == 0
}

// walk drives a Tracker and a model through the same random sequence of
// calls and checks after every call that they agree, that the watermark never
// decreases and that it never passes a transaction with an unacked record.
type walk struct {
	t    testing.TB
	seed uint64
	rng  *rand.Rand
	tr   *Tracker
	m    model
	// unacked lists the handles that still have unacked records.
	unacked []uint64
	// calls is a trace of the calls made, printed on failure.
	calls []string
	prev  outbox.LSN
	// folded is the model's complete prefix at the last check.
	folded int
	// seen counts what the walk exercised, so that a generator gone
	// degenerate fails the test instead of passing it vacuously.
	seen coverage
}

type coverage struct {
	maxPending int // most transactions in flight at once
	jumps      int // calls that folded several transactions at once
	idleMoves  int // AdvanceIdle calls that moved the watermark
	misuses    int // calls that had to fail
}

func (c *coverage) merge(o coverage) {
	c.maxPending = max(c.maxPending, o.maxPending)
	c.jumps += o.jumps
	c.idleMoves += o.idleMoves
	c.misuses += o.misuses
}

func newWalk(t testing.TB, seed uint64) *walk {
	rng := rand.New(rand.NewPCG(seed, 0x6f7574626f78))
	start := outbox.LSN(0x1000 + rng.Uint64N(1<<40))
	return &walk{t: t, seed: seed, rng: rng, tr: New(start), m: model{base: start}, prev: start}
}

func (w *walk) fatalf(format string, args ...any) {
	w.t.Helper()
	trace := w.calls[max(0, len(w.calls)-40):]
	w.t.Fatalf("seed %d, after %d calls (rerun: go test ./checkpoint -run TestTrackerProperty -seed %d)\nlast calls:\n  %s\n%s",
		w.seed, len(w.calls), w.seed, strings.Join(trace, "\n  "), fmt.Sprintf(format, args...))
}

func (w *walk) logf(format string, args ...any) {
	w.calls = append(w.calls, fmt.Sprintf(format, args...))
}

// run makes steps random calls. The weights change from seed to seed so that
// some walks keep few transactions in flight and others pile up hundreds of
// them, with acks trailing far behind.
func (w *walk) run(steps int) {
	ackWeight := 1 + w.rng.IntN(16)
	maxAdd := 1 + w.rng.IntN(20)
	for range steps {
		switch k := w.rng.IntN(16 + ackWeight); {
		case k < 4:
			w.begin()
		case k < 9:
			w.add(maxAdd)
		case k < 13:
			w.commit()
		case k < 14:
			w.advanceIdle()
		case k < 16:
			w.misuse()
		default:
			w.ack()
		}
		w.check()
	}
	// Drain: commit the open transaction and ack everything, in random
	// order, and the tracker must end idle at the last commit.
	if w.m.open() {
		w.commit()
		w.check()
	}
	for len(w.unacked) > 0 {
		w.ack()
		w.check()
	}
	if !w.tr.Idle() {
		w.fatalf("idle = false after draining, want true")
	}
	if got, want := w.tr.Watermark(), w.m.lastEnd(); got != want {
		w.fatalf("watermark = %v after draining, want the last commit %v", got, want)
	}
}

func (w *walk) begin() {
	if w.m.open() {
		w.expectFail("Begin()", errTxnOpen, func() error { _, err := w.tr.Begin(); return err })
		return
	}
	got, err := w.tr.Begin()
	w.logf("Begin() = %d, %v", got, err)
	w.m.txns = append(w.m.txns, modelTxn{})
	if want := uint64(len(w.m.txns)); err != nil || got != want {
		w.fatalf("Begin() = %d, %v, want %d, nil", got, err, want)
	}
}

func (w *walk) add(maxAdd int) {
	if !w.m.open() {
		return
	}
	txn := uint64(len(w.m.txns))
	n := w.rng.IntN(maxAdd + 1)
	if w.rng.IntN(50) == 0 {
		n = 1000 + w.rng.IntN(1000)
	}
	err := w.tr.Add(txn, n)
	w.logf("Add(%d, %d) = %v", txn, n, err)
	if err != nil {
		w.fatalf("Add(%d, %d) = %v, want nil", txn, n, err)
	}
	x := &w.m.txns[txn-1]
	if x.added == x.acked && n > 0 {
		w.unacked = append(w.unacked, txn)
	}
	x.added += n
}

func (w *walk) commit() {
	if !w.m.open() {
		return
	}
	txn := uint64(len(w.m.txns))
	end := w.m.lastEnd() + 1 + outbox.LSN(w.rng.IntN(0x1000))
	err := w.tr.Commit(txn, end)
	w.logf("Commit(%d, %v) = %v", txn, end, err)
	if err != nil {
		w.fatalf("Commit(%d, %v) = %v, want nil", txn, end, err)
	}
	x := &w.m.txns[txn-1]
	x.end, x.committed = end, true
}

// ack acks a random chunk of the records of a random transaction, mostly
// small chunks, sometimes all that is left.
func (w *walk) ack() {
	if len(w.unacked) == 0 {
		return
	}
	i := w.rng.IntN(len(w.unacked))
	txn := w.unacked[i]
	x := &w.m.txns[txn-1]
	left := x.added - x.acked
	n := 1 + w.rng.IntN(min(left, 1+w.rng.IntN(8)))
	if w.rng.IntN(10) == 0 {
		n = left
	}
	err := w.tr.Ack(txn, n)
	w.logf("Ack(%d, %d) = %v", txn, n, err)
	if err != nil {
		w.fatalf("Ack(%d, %d) = %v, want nil", txn, n, err)
	}
	x.acked += n
	if x.acked == x.added {
		w.unacked[i] = w.unacked[len(w.unacked)-1]
		w.unacked = w.unacked[:len(w.unacked)-1]
	}
}

// advanceIdle offers a keepalive position a little below or above the
// watermark.
func (w *walk) advanceIdle() {
	wm := w.m.watermark()
	lsn := wm + outbox.LSN(w.rng.IntN(0x200)) - 0x100
	got := w.tr.AdvanceIdle(lsn)
	w.logf("AdvanceIdle(%v) = %t", lsn, got)
	want := w.m.idle() && lsn > wm
	if got != want {
		w.fatalf("AdvanceIdle(%v) = %t, want %t (idle %t, watermark %v)", lsn, got, want, w.m.idle(), wm)
	}
	if got {
		w.m.base = lsn
		w.seen.idleMoves++
	}
}

// misuse makes one call that must fail and leave the tracker unchanged.
func (w *walk) misuse() {
	newest := uint64(len(w.m.txns))
	switch w.rng.IntN(6) {
	case 0: // ack one record more than is left
		if newest == 0 {
			return
		}
		txn := newest - uint64(w.rng.IntN(min(len(w.m.txns), 4)))
		x := w.m.txns[txn-1]
		if x.complete() && int(txn) <= w.m.prefix() {
			w.expectFail(fmt.Sprintf("Ack(%d, 1)", txn), errTxnComplete, func() error { return w.tr.Ack(txn, 1) })
			return
		}
		n := x.added - x.acked + 1
		w.expectFail(fmt.Sprintf("Ack(%d, %d)", txn, n), errOverAck, func() error { return w.tr.Ack(txn, n) })
	case 1: // ack a transaction never begun
		txn := newest + 1 + uint64(w.rng.IntN(3))
		w.expectFail(fmt.Sprintf("Ack(%d, 1)", txn), errUnknownTxn, func() error { return w.tr.Ack(txn, 1) })
	case 2: // ack a folded transaction
		if p := w.m.prefix(); p > 0 {
			txn := uint64(1 + w.rng.IntN(p))
			w.expectFail(fmt.Sprintf("Ack(%d, 0)", txn), errTxnComplete, func() error { return w.tr.Ack(txn, 0) })
		}
	case 3: // add to a transaction that is not open
		txn := newest + 1
		if !w.m.open() && newest > 0 {
			txn = newest
		}
		w.expectFail(fmt.Sprintf("Add(%d, 1)", txn), errNotOpen, func() error { return w.tr.Add(txn, 1) })
	case 4: // commit a transaction that is not open
		txn := newest + 1
		if !w.m.open() && newest > 0 {
			txn = newest - uint64(w.rng.IntN(int(newest)))
		}
		end := w.m.lastEnd() + 1
		w.expectFail(fmt.Sprintf("Commit(%d, %v)", txn, end), errNotOpen, func() error { return w.tr.Commit(txn, end) })
	case 5: // commit the open transaction at or below the previous end
		if !w.m.open() {
			return
		}
		txn := newest
		end := w.m.lastEnd() - outbox.LSN(w.rng.IntN(2))
		w.expectFail(fmt.Sprintf("Commit(%d, %v)", txn, end), errLSNOrder, func() error { return w.tr.Commit(txn, end) })
	}
}

func (w *walk) expectFail(desc string, want error, call func() error) {
	before := snapshot(w.tr)
	err := call()
	w.logf("%s = %v", desc, err)
	w.seen.misuses++
	if !errors.Is(err, want) {
		w.fatalf("%s: error = %v, want %v", desc, err, want)
	}
	if !reflect.DeepEqual(snapshot(w.tr), before) {
		w.fatalf("%s: failed call changed the tracker:\n got %+v\nwant %+v", desc, snapshot(w.tr), before)
	}
}

func (w *walk) check() {
	w.t.Helper()
	if folded := w.m.prefix(); folded > w.folded+1 {
		w.seen.jumps++
	}
	w.folded = w.m.prefix()

	got := w.tr.Watermark()
	if want := w.m.watermark(); got != want {
		w.fatalf("watermark = %v, want %v (longest complete prefix: %d of %d txns)", got, want, w.m.prefix(), len(w.m.txns))
	}
	if got < w.prev {
		w.fatalf("watermark = %v, went back from %v", got, w.prev)
	}
	w.prev = got
	for i, x := range w.m.txns {
		if x.committed && x.end <= got && !x.complete() {
			w.fatalf("watermark = %v, passes txn %d (end %v) with %d of %d records acked", got, i+1, x.end, x.acked, x.added)
		}
	}
	txns, records := w.tr.Pending()
	wantTxns, wantRecords := w.m.pending()
	if txns != wantTxns || records != wantRecords {
		w.fatalf("pending = (%d txns, %d records), want (%d, %d)", txns, records, wantTxns, wantRecords)
	}
	w.seen.maxPending = max(w.seen.maxPending, txns)
	if got, want := w.tr.Idle(), w.m.idle(); got != want {
		w.fatalf("idle = %t, want %t", got, want)
	}
}

func TestTrackerProperty(t *testing.T) {
	const firstSeed, steps = 20260101, 400
	if *seedFlag != 0 {
		newWalk(t, *seedFlag).run(steps)
		return
	}
	walks := 2000
	if testing.Short() {
		walks = 200
	}
	var seen coverage
	for i := range walks {
		w := newWalk(t, firstSeed+uint64(i))
		w.run(steps)
		seen.merge(w.seen)
	}
	t.Logf("%d walks from seed %d: up to %d transactions in flight, %d multi-transaction folds, %d idle advances, %d rejected calls",
		walks, firstSeed, seen.maxPending, seen.jumps, seen.idleMoves, seen.misuses)
	if seen.maxPending < 40 || seen.jumps == 0 || seen.idleMoves == 0 || seen.misuses == 0 {
		t.Errorf("walks exercised too little: %+v", seen)
	}
}

func FuzzTracker(f *testing.F) {
	f.Add(uint64(1), uint16(100))
	f.Add(uint64(20260101), uint16(2000))
	f.Fuzz(func(t *testing.T, seed uint64, steps uint16) {
		newWalk(t, seed).run(int(steps))
	})
}
