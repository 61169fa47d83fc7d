package tests

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// outboxTopics matches the default template's topics.
var outboxTopics = []string{`^outbox\.event\.`}

// header returns the value of the first header named key.
func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// readEvents reads topics until a record carries each id in want (as its
// "id" header), failing the test after timeout with what is missing.
func (e *testEnv) readEvents(timeout time.Duration, topics []string, want map[string]bool) []*kgo.Record {
	e.t.Helper()
	ctx, cancel := e.context(timeout)
	defer cancel()
	seen := make(map[string]bool, len(want))
	read := 0
	records, err := devenv.ReadRecords(ctx, e.brokers, topics, func(got []*kgo.Record) bool {
		for _, r := range got[read:] {
			if id, _ := header(r, "id"); want[id] {
				seen[id] = true
			}
		}
		read = len(got)
		return len(seen) == len(want)
	})
	if err != nil {
		var missing []string
		for id := range want {
			if !seen[id] {
				missing = append(missing, id)
			}
		}
		sort.Strings(missing)
		if len(missing) > 5 {
			missing = append(missing[:5], "…")
		}
		e.t.Fatalf("%v: %d of %d events arrived (%d records read); missing ids: %s",
			err, len(seen), len(want), len(records), strings.Join(missing, ", "))
	}
	return records
}

// readAll reads every record the topics hold now.
func (e *testEnv) readAll(topics []string) []*kgo.Record {
	e.t.Helper()
	ctx, cancel := e.context(time.Minute)
	defer cancel()
	records, err := devenv.ReadAll(ctx, e.brokers, topics)
	if err != nil {
		e.t.Fatal(err)
	}
	return records
}

// idSet is the set of the events' ids.
func idSet(events []*event) map[string]bool {
	m := make(map[string]bool, len(events))
	for _, ev := range events {
		m[ev.id] = true
	}
	return m
}

// checkKeyOrder checks that, for every key, the first occurrences of the
// records come in commit order (seq ascending). Records of one key share a
// partition, and a partition is read in offset order; duplicates of earlier
// records may follow, but no record may overtake one committed before it.
func checkKeyOrder(t *testing.T, records []*kgo.Record, seqOf func(*kgo.Record) (int, bool)) {
	t.Helper()
	first := make(map[string]bool)
	last := make(map[string]int) // key → seq of the latest first occurrence
	bad := 0
	for _, r := range records {
		seq, ok := seqOf(r)
		if !ok {
			continue
		}
		id, _ := header(r, "id")
		if first[id] {
			continue // a duplicate: allowed after a crash
		}
		first[id] = true
		k := string(r.Key)
		if prev, ok := last[k]; ok && seq < prev {
			if bad++; bad <= 5 {
				t.Errorf("key %q: event seq %d arrived (%s[%d]@%d) after seq %d, want commit order",
					k, seq, r.Topic, r.Partition, r.Offset, prev)
			}
			continue
		}
		last[k] = seq
	}
	if bad > 5 {
		t.Errorf("… %d order violations in all", bad)
	}
}

// countByID counts the records of each id.
func countByID(records []*kgo.Record) map[string]int {
	n := make(map[string]int)
	for _, r := range records {
		id, _ := header(r, "id")
		n[id]++
	}
	return n
}

// javaPartition is the partition the Java client's default partitioner
// picks for a non-null key: toPositive(murmur2(key)) % n.
func javaPartition(key []byte, n int) int32 {
	return int32(murmur2(key)&0x7fffffff) % int32(n)
}

// murmur2 is Kafka's Utils.murmur2, the Java client's key hash.
func murmur2(data []byte) int32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	length := len(data)
	h := seed ^ uint32(length)
	for i := 0; i+4 <= length; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := data[length&^3:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// TestMurmur2 pins the reference hash to the Java client's test vectors
// (UtilsTest.testMurmur2), so the partition check below it means something.
func TestMurmur2(t *testing.T) {
	tests := []struct {
		key  string
		want int32
	}{
		{"21", -973932308},
		{"foobar", -790332482},
		{"a-little-bit-long-string", -985981536},
		{"a-little-bit-longer-string", -1486304829},
		{"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
		{"abc", 479470107},
	}
	for _, tt := range tests {
		if got := murmur2([]byte(tt.key)); got != tt.want {
			t.Errorf("murmur2(%q) = %d, want %d", tt.key, got, tt.want)
		}
	}
}

func describeRecord(r *kgo.Record) string {
	var hs []string
	for _, h := range r.Headers {
		hs = append(hs, h.Key+"="+string(h.Value))
	}
	return fmt.Sprintf("%s[%d]@%d key=%q headers=[%s]", r.Topic, r.Partition, r.Offset, r.Key, strings.Join(hs, " "))
}

// endOffsetsTotal is the number of records the topics hold.
func (e *testEnv) endOffsetsTotal(topics []string) int64 {
	e.t.Helper()
	ctx, cancel := e.context(30 * time.Second)
	defer cancel()
	ends, err := devenv.EndOffsets(ctx, e.brokers, topics)
	if err != nil {
		e.t.Fatal(err)
	}
	var total int64
	for _, end := range ends {
		total += end
	}
	return total
}
