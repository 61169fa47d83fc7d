package faults

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

func TestCheckKeyOrder(t *testing.T) {
	txns := []committedTxn{{ids: []string{"a", "b"}, keys: []string{"k", "k"}, seqs: []int{0, 1}}, {ids: []string{"c"}, keys: []string{"k"}, seqs: []int{2}}}
	rec := func(id string) *kgo.Record {
		return &kgo.Record{Topic: "outbox.event.order", Key: []byte("k"), Headers: []kgo.RecordHeader{{Key: "id", Value: []byte(id)}}}
	}
	tests := []struct {
		name  string
		order []string
		want  int
	}{
		{"in order", []string{"a", "b", "c"}, 0},
		{"a new attempt repeats older records", []string{"a", "b", "a", "b", "c"}, 0},
		{"overtaken", []string{"a", "c", "b"}, 1},
	}
	for _, tt := range tests {
		var records []*kgo.Record
		for _, id := range tt.order {
			records = append(records, rec(id))
		}
		if got := checkKeyOrder(records, txns); got != tt.want {
			t.Errorf("%s: checkKeyOrder = %d, want %d", tt.name, got, tt.want)
		}
	}
}
