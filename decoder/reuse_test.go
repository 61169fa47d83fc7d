package decoder

import (
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestDecodeInsertReusesEvent decodes rows into one recycled Event: nothing of
// an earlier row may survive into a later one.
func TestDecodeInsertReusesEvent(t *testing.T) {
	d := newOutboxDecoder(t)
	var ev outbox.Event
	if _, err := d.Decode(encodeInsert(testOID, fullRow()), &ev); err != nil {
		t.Fatalf("Decode(first row): %v", err)
	}
	first := fullEvent()
	checkEvent(t, &ev, &first)

	second := row(map[string]testValue{
		"id": text("second"), "payload": null(), "headers": null(), "topic": null(),
	})
	if _, err := d.Decode(encodeInsert(testOID, second), &ev); err != nil {
		t.Fatalf("Decode(second row): %v", err)
	}
	want := withEvent(func(ev *outbox.Event) {
		ev.ID, ev.Payload, ev.Headers, ev.Topic = []byte("second"), nil, nil, nil
	})
	checkEvent(t, &ev, &want)

	// A row that fails leaves nothing of the previous one either.
	if _, err := d.Decode(encodeInsert(testOID, fullRow()), &ev); err != nil {
		t.Fatalf("Decode(third row): %v", err)
	}
	bad := row(map[string]testValue{"type": null(), "headers": text("[]"), "topic": null()})
	if _, err := d.Decode(encodeInsert(testOID, bad), &ev); err == nil {
		t.Fatal("Decode(bad row) succeeded, want a RowError")
	}
	want = withEvent(func(ev *outbox.Event) { ev.Type, ev.Headers, ev.Topic = nil, nil, nil })
	checkEvent(t, &ev, &want)
}

// TestDecodeInsertDoesNotAlias checks that the Event keeps copies: the caller
// reuses the message buffer as soon as Decode returns, and a consumer that
// appends to one field must not overwrite the next.
func TestDecodeInsertDoesNotAlias(t *testing.T) {
	d := newOutboxDecoder(t)
	var ev outbox.Event
	msg := encodeInsert(testOID, fullRow())
	if _, err := d.Decode(msg, &ev); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	for i := range msg {
		msg[i] = '#'
	}
	_ = append(ev.ID, "XXXX"...)
	_ = append(ev.Headers[0].Value, "XXXX"...)
	want := fullEvent()
	checkEvent(t, &ev, &want)
}

// TestDecodeInsertAllocs holds the steady state of the hot path to zero
// allocations: a recycled Event and a row with NULL headers.
func TestDecodeInsertAllocs(t *testing.T) {
	d := newOutboxDecoder(t)
	msg := encodeInsert(testOID, benchmarkRow())
	var ev outbox.Event
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := d.Decode(msg, &ev); err != nil {
			t.Fatalf("Decode: %v", err)
		}
	})
	if allocs != 0 {
		t.Errorf("allocations per Decode = %v, want 0", allocs)
	}
}
