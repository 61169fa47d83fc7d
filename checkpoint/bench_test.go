package checkpoint

import (
	"fmt"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// BenchmarkTrackerSteadyState measures the tracker's cost per record in the
// relay's steady state: transactions of eight records added one at a time and
// committed, acked in chunks a fixed number of transactions later, with each
// pair of transactions acked newest first so that half the acks cannot move
// the watermark. One op is one transaction. The cost should not depend on the
// number in flight and there should be no allocations.
func BenchmarkTrackerSteadyState(b *testing.B) {
	const records = 8
	chunks := []int{1, 2, 1, 4} // sums to records
	for _, inflight := range []int{1, 64, 4096} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) {
			tr := New(0)
			var txn uint64
			// next begins, fills and commits one transaction, then acks the
			// one that was committed inflight transactions earlier, or its
			// partner in the pair (2k-1, 2k), newer one first.
			next := func() {
				var err error
				if txn, err = tr.Begin(); err != nil {
					b.Fatal(err)
				}
				for range records {
					if err := tr.Add(txn, 1); err != nil {
						b.Fatal(err)
					}
				}
				if err := tr.Commit(txn, outbox.LSN(txn)*0x100); err != nil {
					b.Fatal(err)
				}
				if txn <= uint64(inflight) {
					return
				}
				target := txn - uint64(inflight)
				if target%2 == 1 {
					target++
				} else {
					target--
				}
				for _, n := range chunks {
					if err := tr.Ack(target, n); err != nil {
						b.Fatal(err)
					}
				}
			}
			// Warm up past the first fold so the ring has its final size.
			for range inflight + 2 {
				next()
			}
			b.ReportAllocs()
			for b.Loop() {
				next()
			}
			if txns, _ := tr.Pending(); txns > inflight+2 {
				b.Fatalf("pending = %d txns, want at most %d", txns, inflight+2)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*records), "ns/record")
		})
	}
}
