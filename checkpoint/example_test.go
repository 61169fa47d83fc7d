package checkpoint_test

import (
	"fmt"

	"github.com/outbox-relay/outbox-relay/checkpoint"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// Two transactions are published back to back; the second is acked first,
// so the watermark waits for the first.
func Example() {
	tr := checkpoint.New(0x1000) // the slot's confirmed_flush_lsn

	first, _ := tr.Begin()
	_ = tr.Add(first, 2) // two rows handed to the publisher
	_ = tr.Commit(first, 0x1100)

	second, _ := tr.Begin()
	_ = tr.Add(second, 1)
	_ = tr.Commit(second, 0x1200)

	_ = tr.Ack(second, 1)
	fmt.Println(tr.Watermark()) // the first is not acked yet
	_ = tr.Ack(first, 2)
	fmt.Println(tr.Watermark())

	// Nothing in flight: a keepalive's WAL end may be confirmed.
	tr.AdvanceIdle(outbox.LSN(0x1300))
	fmt.Println(tr.Watermark(), tr.Idle())
	// Output:
	// 0/1000
	// 0/1200
	// 0/1300 true
}
