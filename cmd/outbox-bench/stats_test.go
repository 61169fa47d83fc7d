package main

import "testing"

func TestPercentile(t *testing.T) {
	sorted := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	tests := []struct {
		name string
		p    float64
		want float64
	}{
		{"p50", 0.50, 5},
		{"p99", 0.99, 10},
		{"p10", 0.10, 1},
		{"p11", 0.11, 2},
	}
	for _, tt := range tests {
		if got := percentile(sorted, tt.p); got != tt.want {
			t.Errorf("%s: percentile = %v, want %v", tt.name, got, tt.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile(nil) = %v, want 0", got)
	}
}

func TestEventIDRoundTrip(t *testing.T) {
	for _, seq := range []int{0, 1, 299_999, 1 << 40} {
		id := eventID(runTag, seq)
		tag, got, ok := parseEventID([]byte(id))
		if !ok || tag != runTag || got != seq {
			t.Errorf("parseEventID(%q) = %x, %d, %v, want %x, %d, true", id, tag, got, ok, runTag, seq)
		}
	}
	if _, _, ok := parseEventID([]byte("not-a-bench-id")); ok {
		t.Errorf("parseEventID of a foreign id: ok = true, want false")
	}
}

func TestLagSummary(t *testing.T) {
	lags := []int64{10, 30, 20, 10, 20, 900, 10, 500, 600, 700, 800, 550, 650, 750, 850, 950, 600, 700, 800, 900}
	start, end, most := lagSummary(lags)
	if start != 20 || end != 800 || most != 950 {
		t.Errorf("lagSummary = %d, %d, %d, want 20, 800, 950", start, end, most)
	}
}

func TestNum(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567"} {
		if got := num(in); got != want {
			t.Errorf("num(%v) = %q, want %q", in, got, want)
		}
	}
}
