package tests

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// TestStatusCommand checks that `outbox-relay status` tells the truth about
// a slot streamed by a running relay, a slot left behind by a stopped relay
// while rows keep coming, a missing slot and a lost one.
func TestStatusCommand(t *testing.T) {
	e := newEnv(t)
	e.createTable()
	const holder = "relay-under-status"
	r := e.startRelay("OUTBOX_RELAY_PG_URL="+pg.URL(e.name)+"&application_name="+holder,
		"OUTBOX_RELAY_HEARTBEAT_INTERVAL=1s")
	events := orderEvents(0, 10)
	last := e.insertInTransactions(events)
	e.readEvents(time.Minute, outboxTopics, idSet(events))
	e.waitConfirmed(30*time.Second, last)
	env := e.relayEnv()

	// A running relay, caught up.
	{
		var rep statusReport
		var code int
		var out string
		// The relay confirms the server's WAL end between heartbeats.
		e.waitFor(20*time.Second, "status to show the running relay caught up", func() (bool, string) {
			code, rep, out = runStatusJSON(t, env)
			return code == 0 && rep.LagBytes != nil && *rep.LagBytes == 0, fmt.Sprintf("exit %d: %s", code, out)
		})
		var pid int32
		if err := e.db.QueryRow(context.Background(), "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", e.name).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		problems := failedChecks(map[string]bool{
			"slot_exists":                              rep.SlotExists,
			"active":                                   rep.Active,
			"active_pid is the walsender's":            rep.ActivePID != nil && *rep.ActivePID == pid,
			"holder_application_name is the relay's":   rep.HolderApplicationName != nil && *rep.HolderApplicationName == holder,
			"confirmed_flush_lsn past the last commit": lsnAtLeast(rep.ConfirmedFlushLSN, last),
			"lag_seconds 0":                            rep.LagSeconds != nil && *rep.LagSeconds == 0,
			"unacked_rows 0":                           rep.UnackedRows != nil && *rep.UnackedRows == 0,
			"wal_status reserved":                      rep.WALStatus == "reserved",
			"publication_exists":                       rep.PublicationExists,
			"table_exists":                             rep.TableExists,
			"no warnings while healthy":                len(rep.Warnings) == 0,
		})
		for _, p := range problems {
			t.Errorf("status of a running, caught-up relay: want %s; got %s", p, out)
		}
	}

	// The relay stopped, rows written since: the slot lags.
	{
		r.terminate(t)
		confirmed := e.slot().confirmed
		written := time.Now()
		pending := orderEvents(10, 5)
		e.insert(pending[:2]...)
		lastPending := e.insert(pending[2:]...)
		code, rep, out := runStatusJSON(t, env)
		if code != 0 {
			t.Fatalf("status exited %d with an inactive but usable slot, want 0: %s", code, out)
		}
		current, err := outbox.ParseLSN(rep.CurrentWALLSN)
		if err != nil {
			t.Fatalf("current_wal_lsn %q: %v", rep.CurrentWALLSN, err)
		}
		problems := failedChecks(map[string]bool{
			"active false":                               !rep.Active,
			"active_pid null":                            rep.ActivePID == nil,
			"holder_application_name null":               rep.HolderApplicationName == nil,
			"confirmed_flush_lsn the slot's":             rep.ConfirmedFlushLSN != nil && *rep.ConfirmedFlushLSN == confirmed.String(),
			"current_wal_lsn past the rows' commit":      current >= lastPending,
			"lag_bytes = current_wal_lsn - confirmed":    rep.LagBytes != nil && *rep.LagBytes == int64(current-confirmed),
			"lag_bytes past the rows' commit":            rep.LagBytes != nil && *rep.LagBytes >= int64(lastPending-confirmed),
			"unacked_rows 5":                             rep.UnackedRows != nil && *rep.UnackedRows == int64(len(pending)),
			"oldest_unacked_seconds the rows' age":       ageWithin(rep.OldestUnackedSeconds, written),
			"lag_seconds the oldest pending row's age":   ageWithin(rep.LagSeconds, written) && *rep.LagSeconds > 0,
			"lag_source created_at":                      rep.LagSource == "created_at",
			"a warning that nothing streams":             containsAny(rep.Warnings, "no process is streaming"),
			"wal_status reserved (nothing is lost)":      rep.WALStatus == "reserved",
			"slot_exists and publication, table present": rep.SlotExists && rep.PublicationExists && rep.TableExists,
		})
		for _, p := range problems {
			t.Errorf("status of a stopped relay's slot with %d rows written since: want %s; got %s", len(pending), p, out)
		}
		t.Logf("stopped relay, %d rows written since: lag %d bytes, %.3fs (%s), %d unacked rows",
			len(pending), orNil(rep.LagBytes), orNil(rep.LagSeconds), rep.LagSource, orNil(rep.UnackedRows))
		// The table for people says the same.
		code, stdout, _ := runRelay(t, env, time.Minute, "status")
		for _, want := range []string{fmt.Sprintf("%d bytes", current-confirmed), confirmed.String(), "no process is streaming"} {
			if code != 0 || !strings.Contains(stdout, want) {
				t.Errorf("status (table) exited %d and shows %q: %v, want exit 0 and shown; output:\n%s", code, want, strings.Contains(stdout, want), stdout)
			}
		}
	}

	// The slot dropped.
	{
		e.exec("SELECT pg_drop_replication_slot($1)", e.name)
		code, rep, out := runStatusJSON(t, env)
		if code != 3 || rep.SlotExists || !containsAny(rep.Warnings, "does not exist") {
			t.Errorf("status --json with no slot: exit %d, want 3, slot_exists false and a warning that it does not exist; got %s", code, out)
		}
		if code, stdout, stderr := runRelay(t, env, time.Minute, "status"); code != 3 {
			t.Errorf("status (table) with no slot exited %d, want 3; output:\n%s%s", code, stdout, stderr)
		}
	}
}

// TestStatusLostSlot loses a slot for real, on a cluster of its own whose
// max_slot_wal_keep_size is 1MB: `status` must exit 4 and point to `setup
// --recreate-slot`; `run` must refuse with the same advice, and following it
// leaves no lost slot behind.
func TestStatusLostSlot(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lossy, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{Settings: map[string]string{"max_slot_wal_keep_size": "'1MB'"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lossy.Stop() })
	conn, err := pgx.Connect(ctx, lossy.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	env := e.relayEnv("OUTBOX_RELAY_PG_URL=" + lossy.URL("postgres"))
	code, stdout, stderr := runRelay(t, env, time.Minute, "setup")
	if code != 0 {
		t.Fatalf("setup exited %d:\n%s%s", code, stdout, stderr)
	}
	code, rep, out := runStatusJSON(t, env)
	if code != 0 || rep.WALStatus != "reserved" || rep.SafeWALSize == nil {
		t.Fatalf("status of a new slot under max_slot_wal_keep_size: exit %d, want 0, wal_status reserved and a safe_wal_size; got %s", code, out)
	}

	walStatus := func() string {
		var s *string
		if err := conn.QueryRow(ctx, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", e.name).Scan(&s); err != nil {
			t.Fatal(err)
		}
		if s == nil {
			return "<null>"
		}
		return *s
	}
	// Each round fills a little WAL, switches segment and checkpoints:
	// the segments the slot needs go, and Postgres invalidates it.
	e.waitFor(30*time.Second, "the slot to be lost", func() (bool, string) {
		for _, sql := range []string{"SELECT pg_logical_emit_message(false, 'filler', repeat('x', 200000))", "SELECT pg_switch_wal()", "CHECKPOINT"} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		s := walStatus()
		return s == "lost", "wal_status " + s
	})

	code, rep, out = runStatusJSON(t, env)
	if code != 4 || rep.WALStatus != "lost" || !rep.SlotExists || !containsAny(rep.Warnings, "setup --recreate-slot") {
		t.Errorf("status --json of a lost slot: exit %d, want 4, wal_status lost and a warning pointing to `setup --recreate-slot`; got %s", code, out)
	}
	if code, stdout, stderr := runRelay(t, env, time.Minute, "status"); code != 4 || !strings.Contains(stdout, "setup --recreate-slot") {
		t.Errorf("status (table) of a lost slot exited %d, want 4 and the advice; output:\n%s%s", code, stdout, stderr)
	}

	code, _, stderr = runRelay(t, env, 30*time.Second, "run")
	if errs := errorLines(stderr); code == 0 || !strings.Contains(errs, "setup --recreate-slot") || !strings.Contains(errs, "lost") {
		t.Errorf("run on a lost slot exited %d, want non-zero with an error that the slot is lost, pointing to `setup --recreate-slot`; error lines:\n%s", code, errs)
	}
	if s := walStatus(); s != "lost" {
		t.Errorf("run changed the lost slot (wal_status %s), want it left for the operator", s)
	}

	// Following the advice: the lost slot goes, and status says so.
	if code, stdout, stderr := runRelay(t, env, time.Minute, "setup", "--recreate-slot"); code != 0 {
		t.Fatalf("setup --recreate-slot exited %d:\n%s%s", code, stdout, stderr)
	}
	if code, _, out := runStatusJSON(t, env); code != 3 {
		t.Errorf("status after setup --recreate-slot: exit %d, want 3 (the slot is left for run to create); got %s", code, out)
	}
}

// failedChecks returns the names of the expectations that do not hold,
// sorted.
func failedChecks(checks map[string]bool) []string {
	var failed []string
	for name, ok := range checks {
		if !ok {
			failed = append(failed, name)
		}
	}
	sort.Strings(failed)
	return failed
}

// ageWithin reports whether seconds is the age of something created after
// since: non-negative and no older than since (with a second of slack for
// the two clocks' rounding).
func ageWithin(seconds *float64, since time.Time) bool {
	return seconds != nil && *seconds >= 0 && *seconds <= time.Since(since).Seconds()+1
}

func lsnAtLeast(s *string, min outbox.LSN) bool {
	if s == nil {
		return false
	}
	lsn, err := outbox.ParseLSN(*s)
	return err == nil && lsn >= min
}

func containsAny(list []string, substr string) bool {
	for _, s := range list {
		if strings.Contains(s, substr) {
			return true
		}
	}
	return false
}
