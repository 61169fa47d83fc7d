package decoder

import (
	"encoding/binary"
	"time"
)

// Type OIDs of the timestamp column.
const (
	oidTimestamp   = 1114
	oidTimestampTZ = 1184
)

// maxUnixMicros keeps a Unix time in nanoseconds within int64 (years 1678
// to 2261).
const maxUnixMicros = 9_200_000_000_000_000

// timestampNanos converts a timestamptz value to Unix nanoseconds. ok is
// false for a value that is not an instant the record can carry (infinity,
// a year before 1 or after 9999, a DateStyle other than ISO): the record
// then takes its transaction's commit time, which is never wrong, only less
// precise about when the application wrote the row.
//
// Text form is timestamptz_out under DateStyle ISO (the replication
// connection sets it): "2006-01-02 15:04:05[.ffffff]±hh[:mm[:ss]]".
// Binary form is int64 microseconds since 2000-01-01 UTC.
func timestampNanos(v tupleValue) (int64, bool) {
	if v.kind == 'b' {
		if len(v.data) != 8 {
			return 0, false
		}
		micros := int64(binary.BigEndian.Uint64(v.data))
		// ±infinity and instants int64 nanoseconds cannot hold.
		if unix := micros + postgresEpochMicros; micros > 1<<62 || micros < -1<<62 || unix > maxUnixMicros || unix < -maxUnixMicros {
			return 0, false
		}
		return unixNanos(uint64(micros)), true
	}
	s := v.data
	p := 0
	num := func(n int) (int, bool) {
		if len(s)-p < n {
			return 0, false
		}
		x := 0
		for _, c := range s[p : p+n] {
			if c < '0' || c > '9' {
				return 0, false
			}
			x = x*10 + int(c-'0')
		}
		p += n
		return x, true
	}
	sep := func(c byte) bool {
		if p < len(s) && s[p] == c {
			p++
			return true
		}
		return false
	}
	year, ok1 := num(4)
	ok2 := sep('-')
	month, ok3 := num(2)
	ok4 := sep('-')
	day, ok5 := num(2)
	ok6 := sep(' ')
	hour, ok7 := num(2)
	ok8 := sep(':')
	minute, ok9 := num(2)
	ok10 := sep(':')
	sec, ok11 := num(2)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 && ok8 && ok9 && ok10 && ok11) {
		return 0, false
	}
	nanos := 0
	if sep('.') {
		digits := 0
		for p < len(s) && s[p] >= '0' && s[p] <= '9' {
			if digits < 9 {
				nanos = nanos*10 + int(s[p]-'0')
				digits++
			}
			p++
		}
		if digits == 0 {
			return 0, false
		}
		for ; digits < 9; digits++ {
			nanos *= 10
		}
	}
	if p >= len(s) || (s[p] != '+' && s[p] != '-') {
		return 0, false
	}
	sign := 1
	if s[p] == '-' {
		sign = -1
	}
	p++
	offH, ok := num(2)
	if !ok {
		return 0, false
	}
	offset := offH * 3600
	if sep(':') {
		offM, ok := num(2)
		if !ok {
			return 0, false
		}
		offset += offM * 60
		if sep(':') {
			offS, ok := num(2)
			if !ok {
				return 0, false
			}
			offset += offS
		}
	}
	if p != len(s) || year < 1678 || year > 2261 || month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || sec > 60 {
		return 0, false
	}
	secs := daysFromCivil(year, month, day)*86400 + int64(hour*3600+minute*60+sec) - int64(sign*offset)
	return secs*int64(time.Second) + int64(nanos), true
}

// daysFromCivil is the number of days from 1970-01-01 to the given date of
// the proleptic Gregorian calendar (Howard Hinnant's days_from_civil), so
// that a row's timestamp costs a few integer operations, not a time.Date.
func daysFromCivil(y, m, d int) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400 // y >= 1678 here, never negative
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return int64(era*146097 + doe - 719468)
}
