package decoder

import (
	"strings"
	"testing"
	"time"
)

func TestTimestampNanos(t *testing.T) {
	at := func(s string) int64 {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm.UnixNano()
	}
	tests := []struct {
		text   string
		want   int64
		wantOK bool
	}{
		{"2024-05-06 07:08:09.123456+00", at("2024-05-06T07:08:09.123456Z"), true},
		{"2024-05-06 07:08:09+00", at("2024-05-06T07:08:09Z"), true},
		{"2024-05-06 07:08:09.5-03", at("2024-05-06T10:08:09.5Z"), true},
		{"2024-05-06 07:08:09+05:30", at("2024-05-06T01:38:09Z"), true},
		{"1900-01-01 00:00:00+00:09:21", at("1899-12-31T23:50:39Z"), true},
		{"2262-01-01 00:00:00+00", 0, false}, // beyond int64 nanoseconds
		{"0044-03-15 12:00:00+00 BC", 0, false},
		{"infinity", 0, false},
		{"-infinity", 0, false},
		{"Mon May 06 07:08:09.123456 2024 UTC", 0, false}, // DateStyle Postgres
		{"2024-05-06 07:08:09.+00", 0, false},
		{"2024-05-06 07:08:09", 0, false},
		{"2024-13-06 07:08:09+00", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := timestampNanos(tupleValue{kind: 't', data: []byte(tt.text)})
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("timestampNanos(%q) = %d, %v; want %d, %v", tt.text, got, ok, tt.want, tt.wantOK)
		}
	}
	for _, b := range [][]byte{{0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, {0x80, 0, 0, 0, 0, 0, 0, 0}, {1, 2, 3}} {
		if got, ok := timestampNanos(tupleValue{kind: 'b', data: b}); ok {
			t.Errorf("timestampNanos(binary %x) = %d, true; want false", b, got)
		}
	}
}

// TestDaysFromCivil checks the calendar arithmetic against package time for
// every day the decoder accepts a timestamp on, in steps of 13 days.
func TestDaysFromCivil(t *testing.T) {
	for d := time.Date(1678, 1, 1, 0, 0, 0, 0, time.UTC); d.Year() < 2262; d = d.AddDate(0, 0, 13) {
		if got, want := daysFromCivil(d.Year(), int(d.Month()), d.Day()), d.Unix()/86400; got != want {
			t.Fatalf("daysFromCivil(%s) = %d, want %d", d.Format(time.DateOnly), got, want)
		}
	}
}

func BenchmarkTimestampNanos(b *testing.B) {
	v := tupleValue{kind: 't', data: []byte("2024-05-06 07:08:09.123456+00")}
	for b.Loop() {
		timestampNanos(v)
	}
}

// FuzzTimestampNanos: no input makes the parser panic, and what it accepts
// is an instant package time agrees with.
func FuzzTimestampNanos(f *testing.F) {
	for _, s := range []string{"2024-05-06 07:08:09.123456+00", "2024-05-06 07:08:09+05:30", "1900-01-01 00:00:00+00:09:21", "infinity", "2024-05-06 07:08:09.+00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := timestampNanos(tupleValue{kind: 't', data: []byte(s)})
		if !ok {
			return
		}
		// Postgres's offset has the sign of "east of UTC"; time wants a zone name.
		layout := "2006-01-02 15:04:05.999999999-07"
		switch strings.Count(s[19:], ":") {
		case 1:
			layout += ":00"
		case 2:
			layout += ":00:00"
		}
		want, err := time.Parse(layout, s)
		if err != nil {
			return // time refuses some forms Postgres never writes (a day 31 in February)
		}
		if want.UnixNano() != got {
			t.Errorf("timestampNanos(%q) = %d, time.Parse says %d", s, got, want.UnixNano())
		}
	})
}
