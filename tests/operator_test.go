package tests

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// TestHelpNeedsNoConfiguration asks every command for help with an empty
// environment: the help must go to stdout, the exit status be 0, and no
// configuration be demanded.
func TestHelpNeedsNoConfiguration(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"},
		{"run", "--help"}, {"setup", "--help"}, {"status", "--help"}, {"status", "-h"},
		{"dlq", "--help"}, {"dlq", "help"}, {"dlq", "ls", "--help"}, {"dlq", "replay", "--help"},
		{"probe", "--help"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, stdout, stderr := runRelay(t, nil, 15*time.Second, args...)
			if code != 0 || stderr != "" {
				t.Errorf("exit %d, stderr %q, want 0 and nothing on stderr", code, stderr)
			}
			want := "usage: outbox-relay"
			if len(args) > 1 && !strings.HasPrefix(args[1], "-") && args[1] != "help" {
				want += " " + args[0] + " " + args[1]
			} else if args[0] != "--help" && args[0] != "-h" && args[0] != "help" {
				want += " " + args[0]
			}
			if !strings.HasPrefix(stdout, want) {
				t.Errorf("stdout does not start with %q:\n%s", want, stdout)
			}
		})
	}
}

// TestVersionFlag: --version prints what the version command prints.
func TestVersionFlag(t *testing.T) {
	_, want, _ := runRelay(t, nil, 15*time.Second, "version")
	code, got, stderr := runRelay(t, nil, 15*time.Second, "--version")
	if code != 0 || got != want || !strings.HasPrefix(got, "outbox-relay ") {
		t.Errorf("--version: exit %d, stdout %q, want 0 and %q; stderr:\n%s", code, got, want, stderr)
	}
}

// TestDLQWithoutPostgres runs `dlq ls` with brokers but no PG_URL: the dead
// letter tools only read Kafka.
func TestDLQWithoutPostgres(t *testing.T) {
	e := newEnv(t)
	code, stdout, stderr := e.runDLQ([]string{"OUTBOX_RELAY_PG_URL"}, "ls")
	if code != 0 || !strings.Contains(stdout, "outbox.dlq") {
		t.Errorf("dlq ls without PG_URL: exit %d, stdout %q, want 0 and the topic; stderr:\n%s", code, stdout, stderr)
	}
	// Without brokers it still refuses, naming the variable.
	code, _, stderr = e.runDLQ([]string{"OUTBOX_RELAY_PG_URL", "OUTBOX_RELAY_KAFKA_BROKERS"}, "ls")
	if code == 0 || !strings.Contains(stderr, "OUTBOX_RELAY_KAFKA_BROKERS") || strings.Contains(stderr, "OUTBOX_RELAY_PG_URL") {
		t.Errorf("dlq ls without brokers: exit %d, stderr %q, want non-zero naming only OUTBOX_RELAY_KAFKA_BROKERS", code, stderr)
	}
}

// TestSecretFiles reads the Postgres URL from OUTBOX_RELAY_PG_URL_FILE, and
// refuses an unreadable file or both variants, naming the variable.
func TestSecretFiles(t *testing.T) {
	e := newEnv(t)
	e.setup()
	dir := t.TempDir()
	urlFile := filepath.Join(dir, "pg_url")
	if err := os.WriteFile(urlFile, []byte(pgURL(e.name)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runRelay(t, e.relayEnv("OUTBOX_RELAY_PG_URL", "OUTBOX_RELAY_PG_URL_FILE="+urlFile), time.Minute, "status")
	if code != 0 || !strings.Contains(stdout, e.name) {
		t.Errorf("status with PG_URL_FILE: exit %d, want 0 and the slot; stdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, tt := range []struct{ name, env, want string }{
		{"unreadable file", "OUTBOX_RELAY_PG_URL_FILE=" + filepath.Join(dir, "missing"), "OUTBOX_RELAY_PG_URL_FILE"},
		{"unreadable SASL password file", "OUTBOX_RELAY_KAFKA_SASL_PASSWORD_FILE=" + dir, "OUTBOX_RELAY_KAFKA_SASL_PASSWORD_FILE"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runRelay(t, e.relayEnv("OUTBOX_RELAY_PG_URL", tt.env), time.Minute, "status")
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stderr %q, want 2 naming %s", code, stderr, tt.want)
			}
		})
	}
	t.Run("both set", func(t *testing.T) {
		code, _, stderr := runRelay(t, e.relayEnv("OUTBOX_RELAY_PG_URL_FILE="+urlFile), time.Minute, "status")
		if code != 2 || !strings.Contains(stderr, "OUTBOX_RELAY_PG_URL_FILE") {
			t.Errorf("exit %d, stderr %q, want 2 naming OUTBOX_RELAY_PG_URL_FILE", code, stderr)
		}
	})
}

func pgURL(db string) string { return pg.URL(db) }

// TestProbe runs `outbox-relay probe` against a streaming relay (ready), a
// server answering 503 and a port nobody listens on.
func TestProbe(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	r := e.startRelay()
	addr := e.httpAddr(r)
	probe := func(addr string, args ...string) (int, string, string) {
		return runRelay(t, []string{"OUTBOX_RELAY_HTTP_ADDR=" + addr}, 30*time.Second, append([]string{"probe"}, args...)...)
	}
	e.waitFor(30*time.Second, "probe to report ready", func() (bool, string) {
		code, stdout, stderr := probe(addr)
		return code == 0, fmt.Sprintf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	})
	code, stdout, _ := probe(addr)
	if lines := strings.Split(strings.TrimSpace(stdout), "\n"); code != 0 || len(lines) != 1 || !strings.HasPrefix(stdout, "ok: ") || !strings.Contains(stdout, "streaming") {
		t.Errorf("probe of a streaming relay: exit %d, stdout %q, want 0 and one line \"ok: ... streaming\"", code, stdout)
	}
	if code, stdout, _ := probe(addr, "--live"); code != 0 || !strings.Contains(stdout, "alive") {
		t.Errorf("probe --live: exit %d, stdout %q, want 0 and alive", code, stdout)
	}
	// A wildcard address is probed on the loopback.
	_, port, _ := net.SplitHostPort(addr)
	if code, stdout, _ := probe(":" + port); code != 0 {
		t.Errorf("probe of :%s: exit %d, stdout %q, want 0", port, code, stdout)
	}

	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, `{"ready":false,"reason":"nothing received from the replication stream for 1m0s","role":"streaming"}`)
	}))
	defer notReady.Close()
	code, stdout, _ = probe(strings.TrimPrefix(notReady.URL, "http://"))
	if code != 1 || !strings.Contains(stdout, "nothing received") || strings.Count(strings.TrimSpace(stdout), "\n") != 0 {
		t.Errorf("probe of a relay that is not ready: exit %d, stdout %q, want 1 and the reason on one line", code, stdout)
	}
	notReady.Close()
	if code, stdout, _ := probe(strings.TrimPrefix(notReady.URL, "http://")); code != 1 || !strings.HasPrefix(stdout, "not ok: ") {
		t.Errorf("probe of a closed port: exit %d, stdout %q, want 1 and \"not ok: ...\"", code, stdout)
	}
}

// TestOperatorMetrics checks the metrics an operator's dashboard reads:
// build info, the lag behind confirmed_flush_lsn, readiness, and the
// progress of the backfill after the relay created its slot.
func TestOperatorMetrics(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	backfilled := e.insertBackfillRows(250)
	r := e.startRelay()
	addr := e.httpAddr(r)
	e.readEvents(time.Minute, outboxTopics, idSet(backfilled))
	e.waitFor(30*time.Second, "backfill gauges", func() (bool, string) {
		mfs := e.mustScrape(addr)
		rows, _ := mfs.value("outbox_relay_backfill_rows")
		done, _ := mfs.value("outbox_relay_backfill_rows_done")
		return rows == 250 && done == 250, fmt.Sprintf("rows %v, done %v, want 250 and 250", rows, done)
	})
	mfs := e.mustScrape(addr)
	if _, ok := mfs.value("outbox_relay_build_info", "goversion", runtime.Version()); !ok {
		t.Errorf("outbox_relay_build_info with goversion %s absent: %s", runtime.Version(), mfs.describe("outbox_relay_build_info"))
	}
	if mfs["outbox_relay_slot_confirmed_lag_bytes"] == nil {
		t.Errorf("outbox_relay_slot_confirmed_lag_bytes absent")
	}
	e.waitFor(30*time.Second, "outbox_relay_ready 1", func() (bool, string) {
		v, _ := e.mustScrape(addr).value("outbox_relay_ready")
		return v == 1, fmt.Sprintf("outbox_relay_ready %v", v)
	})
	// The lag is sampled every 10 s by the leader: WAL written elsewhere
	// (no outbox rows, no heartbeats to confirm it at once) shows up.
	e.waitFor(45*time.Second, "a non-zero lag sample", func() (bool, string) {
		e.exec("CREATE TABLE IF NOT EXISTS lag_filler (x text); INSERT INTO lag_filler SELECT repeat('x', 1000) FROM generate_series(1, 1000)")
		v, _ := e.mustScrape(addr).value("outbox_relay_slot_confirmed_lag_bytes")
		return v > 0, fmt.Sprintf("outbox_relay_slot_confirmed_lag_bytes %v", v)
	})
}

// TestLeastPrivilegeRole runs the compose file's Postgres init script
// (docker/initdb: the outbox table, then sql/roles.sql) as the admin, then
// `setup` and `run` as the role it creates, outbox_relay: the role's grants
// must be enough to create the slot, stream, and delete the delivered rows.
func TestLeastPrivilegeRole(t *testing.T) {
	binDir, err := devenv.FindServerBinaries()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(binDir, "psql")); err != nil {
		t.Fatalf("psql not found next to the server binaries in %s: %v", binDir, err)
	}
	e := newEnv(t)
	const role = "outbox_relay" // as docker-compose.yml connects
	t.Cleanup(func() {
		e.exec("DROP OWNED BY " + role)
		e.exec("DROP ROLE IF EXISTS " + role)
	})
	init := exec.Command("sh", "../docker/initdb/10-outbox-relay.sh")
	init.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"), "SQL_DIR=../sql",
		"PGHOST=127.0.0.1", fmt.Sprintf("PGPORT=%d", pg.Port()), "POSTGRES_USER=postgres", "POSTGRES_DB="+e.name,
		"OUTBOX_RELAY_DB_PASSWORD=pw")
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("docker/initdb/10-outbox-relay.sh: %v\n%s", err, out)
	}
	// roles.sql creates the publication under its default name.
	env := []string{"OUTBOX_RELAY_PG_URL=" + strings.Replace(pg.URL(e.name), "postgres@", role+":pw@", 1),
		"OUTBOX_RELAY_PUBLICATION=outbox_relay"}

	code, stdout, stderr := runRelay(t, e.relayEnv(env...), time.Minute, "setup")
	if code != 0 || !strings.Contains(stdout, "created") {
		t.Fatalf("setup as %s: exit %d, want 0 and the slot created; stdout:\n%s\nstderr:\n%s", role, code, stdout, stderr)
	}
	e.startRelay(env...)
	var events []*event
	for i := range 20 {
		events = append(events, &event{aggregateType: "order", aggregateID: fmt.Sprintf("o-%d", i%4), typ: "OrderPlaced",
			payload: jsonText(`{}`), seq: i})
	}
	last := e.insert(events...)
	e.readEvents(time.Minute, outboxTopics, idSet(events))
	e.waitConfirmed(30*time.Second, last)
	e.waitFor(30*time.Second, "the delivered rows to be deleted", func() (bool, string) {
		n := e.queryInt("SELECT count(*) FROM public.outbox")
		return n == 0, fmt.Sprintf("%d rows left", n)
	})
}
