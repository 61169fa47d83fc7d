package decoder

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// appendValue appends the bytes an Event keeps for a non-NULL column value of
// the given type, or returns why the value cannot be used.
//
// Text form ('t') is the type's output function: used as is, except bytea,
// whose escaped text is decoded back to the raw bytes. Binary form ('b') is
// the type's send function: raw bytes for the text-like types and json, 16
// bytes for uuid, a big-endian integer for int2/int4/int8, and for jsonb a
// version byte before the text.
func appendValue(buf []byte, typeOID uint32, v tupleValue) ([]byte, string) {
	if v.kind == 't' {
		if typeOID == oidBytea {
			return appendByteaText(buf, v.data)
		}
		return append(buf, v.data...), ""
	}
	switch typeOID {
	case oidUUID:
		if len(v.data) != 16 {
			return buf, fmt.Sprintf("binary uuid has %d bytes, want 16", len(v.data))
		}
		return appendUUID(buf, v.data), ""
	case oidInt2, oidInt4, oidInt8:
		return appendBinaryInt(buf, typeOID, v.data)
	case oidJSONB:
		doc, why := jsonbText(v.data)
		if why != "" {
			return buf, why
		}
		return append(buf, doc...), ""
	default:
		return append(buf, v.data...), ""
	}
}

// jsonbText strips the version byte of jsonb's binary form; version 1, the
// only one there is, is followed by the jsonb text.
func jsonbText(b []byte) ([]byte, string) {
	if len(b) == 0 {
		return nil, "binary jsonb is empty"
	}
	if b[0] != 1 {
		return nil, fmt.Sprintf("binary jsonb version %d is not supported", b[0])
	}
	return b[1:], ""
}

func appendBinaryInt(buf []byte, typeOID uint32, b []byte) ([]byte, string) {
	var want int
	var n int64
	switch typeOID {
	case oidInt2:
		want = 2
		if len(b) == want {
			n = int64(int16(binary.BigEndian.Uint16(b)))
		}
	case oidInt4:
		want = 4
		if len(b) == want {
			n = int64(int32(binary.BigEndian.Uint32(b)))
		}
	default:
		want = 8
		if len(b) == want {
			n = int64(binary.BigEndian.Uint64(b))
		}
	}
	if len(b) != want {
		return buf, fmt.Sprintf("binary integer has %d bytes, want %d", len(b), want)
	}
	return strconv.AppendInt(buf, n, 10), ""
}

const hexDigits = "0123456789abcdef"

// appendUUID appends the canonical text form of a 16-byte uuid, as Postgres
// prints it: lowercase, 8-4-4-4-12.
func appendUUID(buf, u []byte) []byte {
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			buf = append(buf, '-')
		}
		buf = append(buf, hexDigits[c>>4], hexDigits[c&0x0f])
	}
	return buf
}

// appendByteaText decodes the text form of a bytea: the hex format
// (`\x` then two hex digits per byte, the default bytea_output) or the
// escape format (`\\` for a backslash, `\ooo` octal for other bytes).
func appendByteaText(buf, text []byte) ([]byte, string) {
	if len(text) >= 2 && text[0] == '\\' && text[1] == 'x' {
		digits := text[2:]
		if len(digits)%2 != 0 {
			return buf, "invalid bytea text: odd number of hex digits"
		}
		for i := 0; i < len(digits); i += 2 {
			hi, ok1 := unhex(digits[i])
			lo, ok2 := unhex(digits[i+1])
			if !ok1 || !ok2 {
				return buf, "invalid bytea text: not a hex digit"
			}
			buf = append(buf, hi<<4|lo)
		}
		return buf, ""
	}
	for i := 0; i < len(text); {
		c := text[i]
		switch {
		case c != '\\':
			buf = append(buf, c)
			i++
		case i+1 < len(text) && text[i+1] == '\\':
			buf = append(buf, '\\')
			i += 2
		case i+3 < len(text) && isOctal(text[i+1], '3') && isOctal(text[i+2], '7') && isOctal(text[i+3], '7'):
			buf = append(buf, (text[i+1]-'0')<<6|(text[i+2]-'0')<<3|(text[i+3]-'0'))
			i += 4
		default:
			return buf, "invalid bytea text: bad escape sequence"
		}
	}
	return buf, ""
}

func isOctal(c, highest byte) bool { return c >= '0' && c <= highest }

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
