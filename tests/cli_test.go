package tests

import (
	"context"
	"encoding/json"
	"maps"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// TestSetupIdempotent runs setup twice: the first run creates the table of
// the contract, an insert-only publication of it and a pgoutput slot, and
// says so; the second changes nothing and does not claim to have created
// anything.
func TestSetupIdempotent(t *testing.T) {
	e := newEnv(t)
	first := e.setup()
	for _, want := range []string{"public.outbox", e.name, "created"} {
		if !strings.Contains(first, want) {
			t.Errorf("first setup output does not mention %q:\n%s", want, first)
		}
	}
	checkSetupObjects(t, e)
	before := e.slot()

	second := e.setup()
	for _, want := range []string{"public.outbox", e.name} {
		if !strings.Contains(second, want) {
			t.Errorf("second setup output does not mention %q:\n%s", want, second)
		}
	}
	if strings.Contains(strings.ToLower(second), "created") {
		t.Errorf("second setup output claims to have created something, want nothing to do:\n%s", second)
	}
	checkSetupObjects(t, e)
	if after := e.slot(); after != before {
		t.Errorf("slot after second setup = %v, want unchanged %v", after, before)
	}
}

// checkSetupObjects checks the table, publication and slot setup makes.
func checkSetupObjects(t *testing.T, e *testEnv) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	rows, err := e.db.Query(ctx, `SELECT column_name, data_type, is_nullable FROM information_schema.columns
		WHERE table_schema = 'public' AND table_name = 'outbox'`)
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]string)
	for rows.Next() {
		var name, typ, nullable string
		if err := rows.Scan(&name, &typ, &nullable); err != nil {
			t.Fatal(err)
		}
		got[name] = typ + " " + map[string]string{"YES": "null", "NO": "not null"}[nullable]
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"id":            "uuid not null",
		"aggregatetype": "text not null",
		"aggregateid":   "text not null",
		"type":          "text not null",
		"payload":       "jsonb null",
		"headers":       "jsonb null",
		"topic":         "text null",
		"created_at":    "timestamp with time zone not null",
		"published_at":  "timestamp with time zone null",
	}
	if !maps.Equal(got, want) {
		t.Errorf("public.outbox columns = %v, want %v", got, want)
	}

	// The defaults fill id and created_at; id is the primary key.
	tx, err := e.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var idSet, createdSet bool
	err = tx.QueryRow(ctx, `INSERT INTO public.outbox (aggregatetype, aggregateid, type)
		VALUES ('a', 'b', 'c') RETURNING id IS NOT NULL, created_at IS NOT NULL`).Scan(&idSet, &createdSet)
	if err != nil || !idSet || !createdSet {
		t.Errorf("insert without id and created_at: id set %v, created_at set %v, err %v; want both set by defaults", idSet, createdSet, err)
	}
	var pk string
	if err := tx.QueryRow(ctx, `SELECT string_agg(a.attname, ',') FROM pg_index i
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		WHERE i.indrelid = 'public.outbox'::regclass AND i.indisprimary`).Scan(&pk); err != nil || pk != "id" {
		t.Errorf("primary key of public.outbox = %q (err %v), want id", pk, err)
	}

	var ins, upd, del, trunc bool
	err = e.db.QueryRow(ctx, `SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1`,
		e.name).Scan(&ins, &upd, &del, &trunc)
	if err != nil {
		t.Errorf("publication %s: %v", e.name, err)
	} else if !ins || upd || del || trunc {
		t.Errorf("publication %s publishes insert=%v update=%v delete=%v truncate=%v, want insert only", e.name, ins, upd, del, trunc)
	}
	var tables []string
	if err := e.db.QueryRow(ctx, `SELECT coalesce(array_agg(schemaname || '.' || tablename), '{}') FROM pg_publication_tables WHERE pubname = $1`,
		e.name).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if len(tables) != 1 || tables[0] != "public.outbox" {
		t.Errorf("publication %s tables = %v, want [public.outbox]", e.name, tables)
	}

	if s := e.slot(); !s.exists || s.plugin != "pgoutput" || s.database != e.name {
		t.Errorf("slot %s: %v, want a pgoutput slot in database %s", e.name, s, e.name)
	}
}

// TestRunRefuses starts `run` where it must not stream: it must exit
// non-zero, soon, with an error that names the problem, and leave an
// existing slot alone.
func TestRunRefuses(t *testing.T) {
	tests := []struct {
		name string
		// prepare sets the scene and returns environment overrides.
		prepare func(t *testing.T, e *testEnv) []string
		// want: every group must have one of its words in the errors.
		want [][]string
		// after checks the scene afterwards.
		after func(t *testing.T, e *testEnv)
	}{
		{
			name: "slot with another plugin",
			prepare: func(t *testing.T, e *testEnv) []string {
				e.createTable()
				e.exec("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", e.name)
				return nil
			},
			want: [][]string{{"plugin", "test_decoding"}},
			after: func(t *testing.T, e *testEnv) {
				if s := e.slot(); !s.exists || s.plugin != "test_decoding" {
					t.Errorf("slot after the refusal: %v, want the test_decoding slot left alone", s)
				}
			},
		},
		{
			name: "slot in another database",
			prepare: func(t *testing.T, e *testEnv) []string {
				e.createTable()
				other := objectName(t.Name() + "_other")
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := pg.CreateDatabase(ctx, other); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { dropDatabase(t, other) })
				conn, err := pgx.Connect(ctx, pg.URL(other))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", e.name); err != nil {
					t.Fatal(err)
				}
				return nil
			},
			want: [][]string{{"database"}},
			after: func(t *testing.T, e *testEnv) {
				if s := e.slot(); !s.exists || s.database == e.name {
					t.Errorf("slot after the refusal: %v, want the other database's slot left alone", s)
				}
			},
		},
		{
			name: "role without REPLICATION",
			prepare: func(t *testing.T, e *testEnv) []string {
				e.createTable()
				role := objectName(t.Name() + "_role")
				// Everything else is in place, so the missing attribute
				// is the only problem.
				e.exec("CREATE ROLE " + role + " LOGIN NOREPLICATION")
				t.Cleanup(func() {
					e.exec("DROP OWNED BY " + role)
					e.exec("DROP ROLE " + role)
				})
				e.exec("GRANT SELECT, UPDATE, DELETE ON public.outbox TO " + role)
				e.exec("CREATE PUBLICATION " + e.name + " FOR TABLE public.outbox WITH (publish = 'insert')")
				e.exec("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", e.name)
				return []string{"OUTBOX_RELAY_PG_URL=" + strings.Replace(pg.URL(e.name), "postgres@", role+"@", 1)}
			},
			want: [][]string{{"replication"}, {"role", "privilege", "permission", "attribute", "superuser"}},
		},
		{
			name: "table without aggregateid",
			prepare: func(t *testing.T, e *testEnv) []string {
				e.exec(`CREATE TABLE public.outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
					aggregatetype text NOT NULL, type text NOT NULL, payload jsonb, headers jsonb, topic text,
					created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz)`)
				return nil
			},
			want: [][]string{{"aggregateid"}},
		},
		{
			name:    "no table",
			prepare: func(t *testing.T, e *testEnv) []string { return nil },
			want:    [][]string{{"public.outbox"}},
		},
		{
			name: "wal_level replica",
			prepare: func(t *testing.T, e *testEnv) []string {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				replica, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{Settings: map[string]string{"wal_level": "replica"}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { replica.Stop() })
				conn, err := pgx.Connect(ctx, replica.URL("postgres"))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				if _, err := conn.Exec(ctx, `CREATE TABLE public.outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
					aggregatetype text NOT NULL, aggregateid text NOT NULL, type text NOT NULL, payload jsonb,
					headers jsonb, topic text, created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz)`); err != nil {
					t.Fatal(err)
				}
				return []string{"OUTBOX_RELAY_PG_URL=" + replica.URL("postgres")}
			},
			want: [][]string{{"wal_level"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			env := e.relayEnv(tt.prepare(t, e)...)
			code, _, stderr := runRelay(t, env, 30*time.Second, "run")
			if code == 0 {
				t.Fatalf("run exited 0, want a non-zero exit; stderr:\n%s", stderr)
			}
			// The test's object names contain the very words looked
			// for (…_wal_level_replica), so they are masked first.
			errs := testObjectNames.ReplaceAllString(strings.ToLower(errorLines(stderr)), "<name>")
			for _, group := range tt.want {
				found := false
				for _, word := range group {
					found = found || strings.Contains(errs, strings.ToLower(word))
				}
				if !found {
					t.Errorf("errors do not mention any of %q; error lines:\n%s", group, errorLines(stderr))
				}
			}
			if tt.after != nil {
				tt.after(t, e)
			}
		})
	}
}

// testObjectNames matches the names objectName makes.
var testObjectNames = regexp.MustCompile(`t_test[a-z0-9_]*`)

// errorLines returns the lines of a relay's stderr that report errors:
// zerolog lines at level error or above, and any line that is not JSON.
func errorLines(stderr string) string {
	var out []string
	for line := range strings.SplitSeq(stderr, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var entry struct {
			Level string `json:"level"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Level == "error" || entry.Level == "fatal" || entry.Level == "panic" {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestConfigErrors starts the relay with one missing or invalid variable:
// it must exit non-zero at once, naming the variable.
func TestConfigErrors(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	tests := []struct {
		name     string
		override string
		want     string
	}{
		{"missing PG_URL", "OUTBOX_RELAY_PG_URL", "OUTBOX_RELAY_PG_URL"},
		{"empty PG_URL", "OUTBOX_RELAY_PG_URL=", "OUTBOX_RELAY_PG_URL"},
		{"missing KAFKA_BROKERS", "OUTBOX_RELAY_KAFKA_BROKERS", "OUTBOX_RELAY_KAFKA_BROKERS"},
		{"invalid ACK_MODE", "OUTBOX_RELAY_ACK_MODE=sometimes", "OUTBOX_RELAY_ACK_MODE"},
		{"invalid STATUS_INTERVAL", "OUTBOX_RELAY_STATUS_INTERVAL=fast", "OUTBOX_RELAY_STATUS_INTERVAL"},
		{"invalid MAX_INFLIGHT_BYTES", "OUTBOX_RELAY_MAX_INFLIGHT_BYTES=lots", "OUTBOX_RELAY_MAX_INFLIGHT_BYTES"},
		{"negative MAX_INFLIGHT_BYTES", "OUTBOX_RELAY_MAX_INFLIGHT_BYTES=-1", "OUTBOX_RELAY_MAX_INFLIGHT_BYTES"},
		{"invalid LOG_LEVEL", "OUTBOX_RELAY_LOG_LEVEL=loud", "OUTBOX_RELAY_LOG_LEVEL"},
		{"invalid TABLE", "OUTBOX_RELAY_TABLE=a.b.c", "OUTBOX_RELAY_TABLE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runRelay(t, e.relayEnv(tt.override), 15*time.Second, "run")
			if code == 0 {
				t.Fatalf("run with %s exited 0, want non-zero", tt.override)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("run with %s: stderr does not name %s:\n%s%s", tt.override, tt.want, stderr, stdout)
			}
		})
	}
	if s := e.slot(); s.exists {
		t.Errorf("a relay with a bad configuration created slot %s, want it to stop before connecting", e.name)
	}

	t.Run("version needs no configuration", func(t *testing.T) {
		code, stdout, stderr := runRelay(t, nil, 15*time.Second, "version")
		if code != 0 || strings.TrimSpace(stdout) == "" {
			t.Errorf("version: exit %d, stdout %q, want 0 and a version; stderr:\n%s", code, stdout, stderr)
		}
	})
}
