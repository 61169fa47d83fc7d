package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// The dead-letter contract (README "Dead letters, the reconciler
// and backfill"): the headers the relay adds and the default topic.
const (
	defaultDLQTopic       = "outbox.dlq"
	hdrDLQReason          = "outbox.dlq.reason"
	hdrDLQError           = "outbox.dlq.error"
	hdrDLQOriginalTopic   = "outbox.dlq.original_topic"
	hdrDLQLSN             = "outbox.dlq.lsn"
	hdrReplayedFrom       = "outbox.replayed_from"
	dlqHeaderPrefix       = "outbox.dlq."
	reasonTooLarge        = "message_too_large"
	reasonDecodeError     = "decode_error"
	reasonInvalidTopic    = "invalid_topic"
	reasonTopicAuthFailed = "topic_authorization_failed"
	reasonUnackedAfter    = "unacked_after_grace"
)

// exactTopic is the ReadRecords pattern of exactly one topic.
func exactTopic(topic string) []string { return []string{"^" + regexp.QuoteMeta(topic) + "$"} }

// insertWithRawHeaders inserts events in one transaction as insert does,
// except that an event in rawHeaders gets that JSON text as its headers
// column verbatim (a value the contract does not allow, such as {"a": 1}).
// It returns the end LSN of the commit.
func (e *testEnv) insertWithRawHeaders(events []*event, rawHeaders map[*event]string) outbox.LSN {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tx, err := e.db.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
		e.t.Fatal(err)
	}
	for _, ev := range events {
		var headers, topic *string
		if raw, ok := rawHeaders[ev]; ok {
			headers = &raw
		} else if ev.headers != nil {
			b, err := json.Marshal(ev.headers)
			if err != nil {
				e.t.Fatal(err)
			}
			headers = jsonText(string(b))
		}
		if ev.topic != "" {
			topic = &ev.topic
		}
		err := tx.QueryRow(ctx, `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, headers, topic)
			VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6) RETURNING id::text, payload::text`,
			ev.aggregateType, ev.aggregateID, ev.typ, ev.payload, headers, topic).Scan(&ev.id, &ev.storedPayload)
		if err != nil {
			e.t.Fatalf("insert event %d: %v", ev.seq, err)
		}
	}
	lsn, err := commitTx(ctx, tx)
	if err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

// insertUnseen inserts events while the publication does not contain the
// outbox table, so that their INSERTs never reach the replication stream: a
// row the stream will never deliver, as the reconciler must find it.
func (e *testEnv) insertUnseen(events ...*event) {
	e.t.Helper()
	e.whileUnpublished(func() { e.insert(events...) })
}

// whileUnpublished runs insert with the outbox table taken out of the
// publication, so that what it commits is never streamed.
func (e *testEnv) whileUnpublished(insert func()) {
	e.t.Helper()
	pub := pgx.Identifier{e.name}.Sanitize()
	e.exec("ALTER PUBLICATION " + pub + " DROP TABLE public.outbox")
	insert()
	e.exec("ALTER PUBLICATION " + pub + " ADD TABLE public.outbox")
}

// runDLQ runs `outbox-relay dlq args…` to completion with the relay's
// environment plus extra, and returns its exit code and output.
func (e *testEnv) runDLQ(extra []string, args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	return runRelay(e.t, e.relayEnv(extra...), time.Minute, append([]string{"dlq"}, args...)...)
}

// headerValues returns the record's headers as a map (the last value of a
// repeated key) and the keys in order.
func headerValues(r *kgo.Record) (map[string]string, []string) {
	m := make(map[string]string, len(r.Headers))
	keys := make([]string, 0, len(r.Headers))
	for _, h := range r.Headers {
		m[h.Key] = string(h.Value)
		keys = append(keys, h.Key)
	}
	return m, keys
}

// checkDeadLetter checks a dead-letter record against the row it came from:
// the original key, the id and type headers and the row's own headers, the
// reason, a non-empty error, the original topic, and an LSN header that is
// set exactly when wantLSN.
func checkDeadLetter(t *testing.T, r *kgo.Record, ev *event, reason string, wantLSN bool) {
	t.Helper()
	h, keys := headerValues(r)
	if string(r.Key) != ev.aggregateID {
		t.Errorf("dead letter of event %d: key %q, want the original key %q", ev.seq, r.Key, ev.aggregateID)
	}
	if want := javaPartition([]byte(ev.aggregateID), 3); r.Partition != want {
		t.Errorf("dead letter of event %d: partition %d, want %d (murmur2 of its key)", ev.seq, r.Partition, want)
	}
	if len(keys) < 2 || keys[0] != "id" || keys[1] != "type" {
		t.Errorf("dead letter of event %d: header keys %q, want id, type first as in the original record", ev.seq, keys)
	}
	if h["id"] != ev.id || h["type"] != ev.typ {
		t.Errorf("dead letter of event %d: id %q type %q, want %q and %q", ev.seq, h["id"], h["type"], ev.id, ev.typ)
	}
	for k, v := range ev.headers {
		if got, ok := h[k]; !ok || got != v {
			t.Errorf("dead letter of event %d: row header %q = %q (present %v), want %q kept", ev.seq, k, got, ok, v)
		}
	}
	if h[hdrDLQReason] != reason {
		t.Errorf("dead letter of event %d: %s = %q, want %q", ev.seq, hdrDLQReason, h[hdrDLQReason], reason)
	}
	if strings.TrimSpace(h[hdrDLQError]) == "" {
		t.Errorf("dead letter of event %d: %s is empty, want the error text", ev.seq, hdrDLQError)
	}
	if h[hdrDLQOriginalTopic] != ev.wantTopic() {
		t.Errorf("dead letter of event %d: %s = %q, want %q", ev.seq, hdrDLQOriginalTopic, h[hdrDLQOriginalTopic], ev.wantTopic())
	}
	lsn, ok := h[hdrDLQLSN]
	switch {
	case !ok:
		t.Errorf("dead letter of event %d: no %s header", ev.seq, hdrDLQLSN)
	case wantLSN:
		if _, err := outbox.ParseLSN(lsn); err != nil || lsn == "" {
			t.Errorf("dead letter of event %d: %s = %q, want the INSERT's WAL position (%v)", ev.seq, hdrDLQLSN, lsn, err)
		}
	case lsn != "":
		t.Errorf("dead letter of event %d: %s = %q, want empty for a row found with SQL", ev.seq, hdrDLQLSN, lsn)
	}
}

// seqByID maps the events' ids to their seq, for checkKeyOrder.
func seqByID(events []*event) func(*kgo.Record) (int, bool) {
	m := make(map[string]int, len(events))
	for _, ev := range events {
		m[ev.id] = ev.seq
	}
	return func(r *kgo.Record) (int, bool) {
		id, _ := header(r, "id")
		seq, ok := m[id]
		return seq, ok
	}
}

// checkExactlyOnce requires every event's id exactly once in records, and
// no record with an id outside events.
func checkExactlyOnce(t *testing.T, records []*kgo.Record, events []*event) {
	t.Helper()
	counts := countByID(records)
	bad := 0
	for _, ev := range events {
		if n := counts[ev.id]; n != 1 {
			if bad++; bad <= 10 {
				t.Errorf("event %d (%s, key %s) arrived %d times, want exactly once", ev.seq, ev.id, ev.aggregateID, n)
			}
		}
		delete(counts, ev.id)
	}
	if bad > 10 {
		t.Errorf("… %d events not delivered exactly once in all", bad)
	}
	if len(counts) > 0 {
		t.Errorf("%d records with ids the test never wrote: %v", len(counts), someIDCounts(counts, 5))
	}
}

func someIDCounts(m map[string]int, n int) []string {
	var out []string
	for k := range m {
		if len(out) == n {
			out = append(out, "…")
			break
		}
		out = append(out, fmt.Sprintf("%q×%d", k, m[k]))
	}
	return out
}
