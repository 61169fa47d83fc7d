package dlq

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Listing summarises the dead-letter topic as it was when List started.
type Listing struct {
	Topic string `json:"topic"`
	// Exists is false when the topic does not exist (no record was ever
	// dead-lettered).
	Exists bool `json:"exists"`
	Total  int  `json:"total"`
	// ByReason counts the records by outbox.dlq.reason (NoReason when absent).
	ByReason map[string]int `json:"by_reason"`
	// Newest are the most recently dead-lettered records, newest first.
	Newest []Entry `json:"newest"`
	// Table is the dead-letter table in Postgres (rows kept whole because
	// their record is a stub); nil when it was not read.
	Table *TableListing `json:"table,omitempty"`
}

// List reads the whole dead-letter topic, from the start of every partition
// to the end it had when List was called, without a consumer group (it
// commits nothing), and returns the counts by reason and the newest records
// (at most newest of them).
func List(ctx context.Context, cfg Config, newest int) (Listing, error) {
	listing := Listing{Topic: cfg.Topic, ByReason: map[string]int{}, Newest: []Entry{}}
	if err := cfg.check(); err != nil {
		return listing, err
	}
	opts, err := cfg.clientOpts()
	if err != nil {
		return listing, err
	}
	admin, err := kgo.NewClient(opts...)
	if err != nil {
		return listing, fmt.Errorf("kafka client: %w", err)
	}
	defer admin.Close()
	partitions, exists, err := spans(ctx, admin, cfg.Topic)
	if err != nil || !exists {
		return listing, err
	}
	listing.Exists = true

	// remaining maps each partition still to read to its end offset.
	remaining := map[int32]int64{}
	start := map[int32]kgo.Offset{}
	for p, s := range partitions {
		if s.start < s.end {
			remaining[p] = s.end
			start[p] = kgo.NewOffset().At(s.start)
		}
	}
	if len(remaining) == 0 {
		return listing, nil
	}
	cl, err := kgo.NewClient(append(opts, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{cfg.Topic: start}))...)
	if err != nil {
		return listing, fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()

	var newestHeap entryHeap
	for len(remaining) > 0 {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return listing, fmt.Errorf("read dead-letter topic %q: %w", cfg.Topic, err)
		}
		if err := fetchError(fetches); err != nil {
			return listing, fmt.Errorf("read dead-letter topic %q: %w", cfg.Topic, err)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			end, ok := remaining[r.Partition]
			if !ok || r.Offset >= end {
				return // produced after List started
			}
			e := entryOf(r)
			listing.Total++
			listing.ByReason[e.Reason]++
			if newest > 0 {
				heap.Push(&newestHeap, e)
				if newestHeap.Len() > newest {
					heap.Pop(&newestHeap)
				}
			}
			if r.Offset >= end-1 {
				delete(remaining, r.Partition)
			}
		})
	}
	listing.Newest = append(listing.Newest, newestHeap...)
	sort.Slice(listing.Newest, func(i, j int) bool { return newer(listing.Newest[i], listing.Newest[j]) })
	return listing, nil
}

// fetchError returns the first error of a poll. The client retries what can
// be retried, so what it reports stops the read.
func fetchError(fetches kgo.Fetches) error {
	var errs []error
	for _, fe := range fetches.Errors() {
		errs = append(errs, fmt.Errorf("%s[%d]: %w", fe.Topic, fe.Partition, fe.Err))
	}
	return errors.Join(errs...)
}

// newer orders entries by time, then partition and offset, newest first.
func newer(a, b Entry) bool {
	if !a.Time.Equal(b.Time) {
		return a.Time.After(b.Time)
	}
	if a.Partition != b.Partition {
		return a.Partition > b.Partition
	}
	return a.Offset > b.Offset
}

// entryHeap is a min-heap of entries, oldest on top, so that keeping the N
// newest of a long topic costs N entries of memory.
type entryHeap []Entry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return newer(h[j], h[i]) }
func (h entryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *entryHeap) Push(x any)        { *h = append(*h, x.(Entry)) }
func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
