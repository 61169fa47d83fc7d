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
	// Fixed positions: "2006-01-02 15:04:05" is 19 bytes (4-digit years
	// only, which the range below requires anyway).
	s := v.data
	if len(s) < 22 || s[4] != '-' || s[7] != '-' || s[10] != ' ' || s[13] != ':' || s[16] != ':' {
		return 0, false
	}
	year, ok1 := digits(s[0:4])
	month, ok2 := digits(s[5:7])
	day, ok3 := digits(s[8:10])
	hour, ok4 := digits(s[11:13])
	minute, ok5 := digits(s[14:16])
	sec, ok6 := digits(s[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) {
		return 0, false
	}
	p := 19
	nanos := 0
	if s[p] == '.' {
		p++
		n := 0
		for p < len(s) && s[p] >= '0' && s[p] <= '9' {
			if n < 9 {
				nanos = nanos*10 + int(s[p]-'0')
				n++
			}
			p++
		}
		if n == 0 {
			return 0, false
		}
		for ; n < 9; n++ {
			nanos *= 10
		}
	}
	// The offset: ±hh, ±hh:mm or ±hh:mm:ss.
	if p+3 > len(s) || (s[p] != '+' && s[p] != '-') {
		return 0, false
	}
	sign := 1
	if s[p] == '-' {
		sign = -1
	}
	offset := 0
	for i, unit := range [3]int{3600, 60, 1} {
		if i > 0 {
			if p == len(s) {
				break
			}
			if s[p] != ':' {
				return 0, false
			}
		}
		if p+3 > len(s) {
			return 0, false
		}
		n, ok := digits(s[p+1 : p+3])
		if !ok {
			return 0, false
		}
		offset += n * unit
		p += 3
	}
	if p != len(s) || year < 1678 || year > 2261 || month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || sec > 60 {
		return 0, false
	}
	secs := daysFromCivil(year, month, day)*86400 + int64(hour*3600+minute*60+sec) - int64(sign*offset)
	return secs*int64(time.Second) + int64(nanos), true
}

// digits parses a run of decimal digits.
func digits(b []byte) (int, bool) {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
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
