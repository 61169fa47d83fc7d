package decoder

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// reader consumes the fields of one pgoutput message in wire order. The first
// read past the end sets err and turns every later read into a no-op, so a
// message is parsed straight through and checked once.
type reader struct {
	msg  string // message name from the docs, e.g. "Insert", for errors
	data []byte // what is left of the message
	err  error
}

// take returns the next n bytes; what names the field for the error.
func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.data) {
		r.err = fmt.Errorf("pgoutput %s message is short: %s needs %d bytes, %d left", r.msg, what, n, len(r.data))
		return nil
	}
	b := r.data[:n:n]
	r.data = r.data[n:]
	return b
}

func (r *reader) uint8(what string) uint8 {
	b := r.take(1, what)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) uint16(what string) uint16 {
	b := r.take(2, what)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

func (r *reader) uint32(what string) uint32 {
	b := r.take(4, what)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (r *reader) uint64(what string) uint64 {
	b := r.take(8, what)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// lengthPrefixed reads an Int32 length followed by that many bytes.
func (r *reader) lengthPrefixed(what string) []byte {
	n := int32(r.uint32(what))
	if r.err != nil {
		return nil
	}
	if n < 0 {
		r.err = fmt.Errorf("pgoutput %s message: %s has negative length %d", r.msg, what, n)
		return nil
	}
	return r.take(int(n), what)
}

// cstring reads a NUL-terminated String and returns it without the NUL.
func (r *reader) cstring(what string) []byte {
	if r.err != nil {
		return nil
	}
	i := bytes.IndexByte(r.data, 0)
	if i < 0 {
		r.err = fmt.Errorf("pgoutput %s message is short: %s is not NUL-terminated", r.msg, what)
		return nil
	}
	s := r.data[:i:i]
	r.data = r.data[i+1:]
	return s
}

// done reports the first read error, or an error if bytes are left over:
// trailing bytes mean the message is not laid out the way protocol version 1
// says, and guessing at the rest would misread it.
func (r *reader) done() error {
	if r.err != nil {
		return r.err
	}
	if len(r.data) != 0 {
		return fmt.Errorf("pgoutput %s message has %d unexpected trailing bytes", r.msg, len(r.data))
	}
	return nil
}
