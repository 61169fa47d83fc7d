package tests

import (
	"fmt"
	"testing"
	"time"
)

// TestNullIDRowDeadLettered: the id column loses its NOT NULL while the
// relay runs (a unique column, not a primary key, so Postgres allows it) and
// a row with a NULL id is committed between good rows of its key. The relay
// cannot record that row by id: it must dead-letter it once with reason
// decode_error and go on — the rows behind it delivered in order, the slot
// confirmed past them — instead of failing its ack and re-sending the
// transaction in a restart loop.
func TestNullIDRowDeadLettered(t *testing.T) {
	e := newEnv(t)
	e.exec(`CREATE TABLE public.outbox (
		id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
		aggregatetype text NOT NULL,
		aggregateid text NOT NULL,
		type text NOT NULL,
		payload jsonb,
		headers jsonb,
		topic text,
		created_at timestamptz NOT NULL DEFAULT now(),
		published_at timestamptz
	)`)
	e.startRelay()

	ev := func(seq int) *event {
		return &event{aggregateType: "order", aggregateID: "k-1", typ: "Placed", payload: jsonText(fmt.Sprintf(`{"seq": %d}`, seq)), seq: seq}
	}
	first := []*event{ev(0), ev(1)}
	e.insert(first...)
	e.readEvents(time.Minute, outboxTopics, idSet(first))

	e.exec(`ALTER TABLE public.outbox ALTER COLUMN id DROP NOT NULL`)
	e.exec(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES (NULL, 'order', 'k-1', 'Placed', '{"seq": 2}')`)
	second := []*event{ev(3), ev(4)}
	lastCommit := e.insert(second...)

	good := append(append([]*event{}, first...), second...)
	records := e.readEvents(time.Minute, outboxTopics, idSet(good))
	dead := e.readEvents(30*time.Second, exactTopic(defaultDLQTopic), map[string]bool{"": true})
	e.waitConfirmed(30*time.Second, lastCommit)
	checkKeyOrder(t, records, seqByID(good))
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want 1 (a re-sent transaction dead-letters the row again)", len(dead))
	}
	if reason, _ := header(dead[0], hdrDLQReason); reason != reasonDecodeError {
		t.Errorf("dead letter reason %q, want %q", reason, reasonDecodeError)
	}
	if string(dead[0].Value) != `{"seq": 2}` {
		t.Errorf("dead letter value %q, want the row's payload", dead[0].Value)
	}
	if p := e.unexpectedExit(); p != nil {
		t.Errorf("relay exited: %v", p)
	}
}
