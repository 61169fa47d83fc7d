package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestMappedColumnsHeadersAndCloudEvents runs the relay on a table whose
// columns have other names than the relay's (each set by its COLUMN_*
// variable), with extra columns copied into headers (HEADER_COLUMNS), W3C
// trace context from a column or from the headers object, and the
// CloudEvents binary-mode headers. Rows written before the relay started
// (backfill) and after (stream) must become the same records: record time
// = the row's timestamp column, headers in the same order with the same
// values.
func TestMappedColumnsHeadersAndCloudEvents(t *testing.T) {
	e := newEnv(t)
	e.exec(`CREATE TABLE public.events (
		event_id bigserial PRIMARY KEY, stream text NOT NULL, stream_key text NOT NULL, event_type text NOT NULL,
		body jsonb, meta jsonb, occurred_at timestamptz NOT NULL DEFAULT now(), trace_parent text, tenant varchar(10))`)
	const (
		traceA = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		traceB = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	)
	type row struct {
		key, typ, occurredAt, traceParent, tenant, meta string // "" tenant/traceParent/meta: NULL
		wantTime                                        time.Time
		wantHeaders                                     []string // after id and type, before ce_*
	}
	rows := []row{
		{"o-1", "OrderCreated", "2024-05-06 07:08:09.123456+00", traceA, "acme", `{"tracestate": "congo=t61rcWkgMzE"}`,
			time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC), []string{"traceparent=" + traceA, "tenant=acme", "tracestate=congo=t61rcWkgMzE"}},
		{"o-2", "OrderPaid", "2024-05-06 09:08:09.5+02", "", "", `{"traceparent": "` + traceB + `", "tracestate": "rojo=00f067aa0ba902b7"}`,
			// jsonb orders keys shorter first: the headers object's order is its stored order.
			time.Date(2024, 5, 6, 7, 8, 9, 500000000, time.UTC), []string{"tracestate=rojo=00f067aa0ba902b7", "traceparent=" + traceB}},
	}
	insert := func(r row) string {
		t.Helper()
		null := func(s string) any {
			if s == "" {
				return nil
			}
			return s
		}
		var id string
		ctx, cancel := e.context(10 * time.Second)
		defer cancel()
		if err := e.db.QueryRow(ctx, `INSERT INTO public.events (stream, stream_key, event_type, body, meta, occurred_at, trace_parent, tenant)
			VALUES ('order', $1, $2, '{"n": 1}', $3::jsonb, $4, $5, $6) RETURNING event_id::text`,
			r.key, r.typ, null(r.meta), r.occurredAt, null(r.traceParent), null(r.tenant)).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	wantByID := map[string]row{}
	for _, r := range rows {
		wantByID[insert(r)] = r // backfilled
	}
	e.startRelay("OUTBOX_RELAY_TABLE=public.events", "OUTBOX_RELAY_TOPIC=outbox.event.${routedByValue}",
		"OUTBOX_RELAY_COLUMN_ID=event_id", "OUTBOX_RELAY_COLUMN_ROUTE=stream", "OUTBOX_RELAY_COLUMN_KEY=stream_key",
		"OUTBOX_RELAY_COLUMN_TYPE=event_type", "OUTBOX_RELAY_COLUMN_PAYLOAD=body", "OUTBOX_RELAY_COLUMN_HEADERS=meta",
		"OUTBOX_RELAY_COLUMN_TIMESTAMP=occurred_at", "OUTBOX_RELAY_HEADER_COLUMNS=trace_parent:traceparent, tenant",
		"OUTBOX_RELAY_CLOUDEVENTS=true", "OUTBOX_RELAY_CLOUDEVENTS_SOURCE=/orders-service")
	for _, r := range rows {
		wantByID[insert(r)] = r // streamed
	}

	want := map[string]bool{}
	for id := range wantByID {
		want[id] = true
	}
	records := e.readEvents(time.Minute, exactTopic("outbox.event.order"), want)
	seen := map[string]bool{}
	for _, rec := range records {
		id, _ := header(rec, "id")
		r, ok := wantByID[id]
		if !ok || seen[id] {
			continue
		}
		seen[id] = true
		if string(rec.Key) != r.key || string(rec.Value) != `{"n": 1}` {
			t.Errorf("row %s: key %q value %q, want %q and the body", id, rec.Key, rec.Value, r.key)
		}
		if !rec.Timestamp.Equal(r.wantTime.Truncate(time.Millisecond)) {
			t.Errorf("row %s: record timestamp = %v, want occurred_at %v", id, rec.Timestamp.UTC(), r.wantTime)
		}
		var got []string
		for _, h := range rec.Headers {
			got = append(got, h.Key+"="+string(h.Value))
		}
		wantHeaders := append(append([]string{"id=" + id, "type=" + r.typ}, r.wantHeaders...),
			"ce_specversion=1.0", "ce_id="+id, "ce_source=/orders-service", "ce_type="+r.typ,
			"ce_time="+r.wantTime.Format(time.RFC3339Nano))
		if strings.Join(got, " ") != strings.Join(wantHeaders, " ") {
			t.Errorf("row %s: headers\n  %v\nwant\n  %v", id, got, wantHeaders)
		}
	}
	if len(seen) != len(wantByID) {
		t.Errorf("read %d of %d records", len(seen), len(wantByID))
	}
	e.waitFor(30*time.Second, "the delivered rows to be deleted", func() (bool, string) {
		n := e.queryInt("SELECT count(*) FROM public.events")
		return n == 0, fmt.Sprintf("%d rows left", n)
	})
}
