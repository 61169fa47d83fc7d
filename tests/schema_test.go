package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRefusesUnsafeIDColumn gives `setup` and `run` a table whose id column
// can be NULL or repeat: the relay records each delivery by id, so both
// must refuse, naming the table, the column and the fix, and create nothing.
func TestRefusesUnsafeIDColumn(t *testing.T) {
	tests := []struct {
		name, id string
		wantFix  string
	}{
		{name: "nullable", id: "id uuid DEFAULT gen_random_uuid()", wantFix: "SET NOT NULL"},
		{name: "not unique", id: "id uuid NOT NULL DEFAULT gen_random_uuid()", wantFix: "ADD PRIMARY KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireRelay(t)
			e := newEnv(t)
			e.exec(`CREATE TABLE public.outbox (` + tt.id + `, aggregatetype text NOT NULL, aggregateid text NOT NULL,
				type text NOT NULL, payload jsonb, headers jsonb, topic text,
				created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz)`)
			for _, command := range []string{"setup", "run"} {
				code, _, stderr := runRelay(t, e.relayEnv(), 30*time.Second, command)
				if code == 0 {
					t.Fatalf("%s exited 0 on a table whose id is %s, want a refusal; stderr:\n%s", command, tt.name, stderr)
				}
				errs := errorLines(stderr)
				for _, want := range []string{"public.outbox", "id column", tt.name, tt.wantFix} {
					if !strings.Contains(errs, want) {
						t.Errorf("%s: the error does not mention %q; error lines:\n%s", command, want, errs)
					}
				}
			}
			if s := e.slot(); s.exists {
				t.Errorf("slot after the refusals: %v, want none created", s)
			}
		})
	}
}

// TestSchemaChangeStopsRelay alters a mapped column of the outbox table
// under a running relay. From the first row written after the change, no
// row can be decoded: the relay must stop (not retry), with an error that
// names the column and the way out; and following that way out (rename the
// column back, recreate the slot) delivers every row, including the ones
// written while the column was changed.
func TestSchemaChangeStopsRelay(t *testing.T) {
	tests := []struct {
		name, alter, column, variable string
	}{
		{name: "renamed", alter: "ALTER TABLE public.outbox RENAME COLUMN aggregateid TO aggregate_id", column: "aggregateid", variable: "OUTBOX_RELAY_COLUMN_KEY"},
		{name: "retyped", alter: "ALTER TABLE public.outbox ALTER COLUMN type TYPE integer USING 0", column: "type", variable: "OUTBOX_RELAY_COLUMN_TYPE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireRelay(t)
			e := newEnv(t)
			e.createTable()
			r := e.startRelay()
			before := orderEvents(0, 1)
			e.insert(before...)
			e.readEvents(30*time.Second, outboxTopics, idSet(before))

			e.exec(tt.alter)
			var during string
			if tt.name == "renamed" {
				e.exec(`INSERT INTO public.outbox (aggregatetype, aggregate_id, type, payload) VALUES ('order', 'o-during', 'OrderPlaced', '{}')`)
				for id := range e.ids("SELECT id::text FROM public.outbox WHERE aggregate_id = 'o-during'") {
					during = id
				}
			} else {
				e.exec(`INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-during', 7, '{}')`)
			}
			r.signalled.Store(true) // its exit is the point
			code, exited := r.wait(20 * time.Second)
			if !exited {
				t.Fatalf("the relay still runs 20s after the table stopped fitting the mapping, want it to stop")
			}
			if code == 0 {
				t.Errorf("the relay exited 0, want non-zero")
			}
			errs := errorLines(r.stderr.String())
			for _, want := range []string{fmt.Sprintf(`column \"%s\"`, tt.column), "the way out", tt.variable, "--recreate-slot"} {
				if !strings.Contains(errs, want) {
					t.Errorf("the error does not mention %s; error lines:\n%s", want, errs)
				}
			}
			if n := len(logEntries(r, msgStreaming)); n != 1 {
				t.Errorf("the relay started %d streaming sessions, want 1 (no retry of a change that a retry cannot fix)", n)
			}
			if tt.name != "renamed" {
				return
			}
			// The way out, as the error says.
			e.exec("ALTER TABLE public.outbox RENAME COLUMN aggregate_id TO aggregateid")
			if code, stdout, stderr := runRelay(t, e.relayEnv(), time.Minute, "setup", "--recreate-slot"); code != 0 {
				t.Fatalf("setup --recreate-slot exited %d:\n%s\n%s", code, stdout, stderr)
			}
			e.startRelay()
			e.readEvents(30*time.Second, outboxTopics, map[string]bool{during: true})
		})
	}
}
