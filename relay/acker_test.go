package relay

import (
	"encoding/hex"
	"testing"
)

func TestParseUUID(t *testing.T) {
	want, _ := hex.DecodeString("a0eebc999c0b4ef8bb6d6bb9bd380a11")
	for _, s := range []string{
		"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", // what Postgres prints
		"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
		"a0eebc999c0b4ef8bb6d6bb9bd380a11",
		"a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
	} {
		u, ok := parseUUID(s)
		if !ok || string(u[:]) != string(want) {
			t.Errorf("parseUUID(%q) = %x, %v; want %x", s, u, ok, want)
		}
	}
	for _, s := range []string{"", "a0eebc99", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1100",
		"g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1-1", "42"} {
		if _, ok := parseUUID(s); ok {
			t.Errorf("parseUUID(%q) accepted", s)
		}
	}
}
