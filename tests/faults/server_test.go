package faults

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// postgresCrash stops the server with pg_ctl stop -m immediate under load
// and starts it again: the relay reconnects by itself and loses nothing.
func postgresCrash(t *testing.T) {
	w := newWorld(t)
	p := w.startRelay()
	wr := w.startWriter("k", steadyPause)
	for range 2 {
		w.waitCommits(wr, 200, 30*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err := pg.CrashRestart(ctx)
		cancel()
		if err != nil {
			t.Fatalf("crash and restart postgres: %v\n%s", err, pg.LogTail(20))
		}
		w.reconnect()
		w.waitCommits(wr, 100, time.Minute)
		w.waitFor(time.Minute, "the relay to stream again", func() (bool, string) {
			if p.Exited() {
				t.Fatalf("%s exited after the server crashed, want it to reconnect:\n%s", p.Name, p.Tail(20))
			}
			s := w.slot()
			return s.active, fmt.Sprintf("slot %+v", s)
		})
	}
	wr.stop()
	w.audit(auditOptions{})
	w.notef("2 crashes; %d uncertain commits", len(w.ledger.uncertain))
}

// walsenderFrozen freezes the slot's walsender (SIGSTOP: to the relay, a
// server or network that stops answering) for longer than
// wal_sender_timeout, under load, then lets it go on.
func walsenderFrozen(t *testing.T) {
	w := newWorld(t)
	w.setServer(t, "wal_sender_timeout", "5s")
	p := w.startRelay()
	wr := w.startWriter("k", steadyPause)
	w.waitCommits(wr, 200, 30*time.Second)
	pid := w.slot().activePID
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP walsender %d: %v", pid, err)
	}
	frozen := time.Now()
	time.Sleep(15 * time.Second) // frozen for three times wal_sender_timeout
	syscall.Kill(pid, syscall.SIGCONT)
	resumed := w.lsn("SELECT pg_current_wal_lsn()")
	w.waitFor(time.Minute, "the slot to be confirmed past the WAL written during the freeze", func() (bool, string) {
		s := w.slot()
		return s.confirmed >= resumed, fmt.Sprintf("slot %+v, want confirmed >= %s", s, resumed)
	})
	w.notef("confirmed past the freeze %.1fs after it began; walsender replaced: %v; relay's last error: %s",
		time.Since(frozen).Seconds(), w.slot().activePID != pid, lastError(p.Output()))
	w.waitCommits(wr, 200, 30*time.Second)
	wr.stop()
	if p.Exited() {
		t.Errorf("%s exited during the freeze, want it to reconnect:\n%s", p.Name, p.Tail(20))
	}
	w.audit(auditOptions{})
}

// setServer sets a server setting for the scenario and resets it after.
func (w *world) setServer(t *testing.T, name, value string) {
	w.exec(fmt.Sprintf("ALTER SYSTEM SET %s = '%s'", name, value))
	w.exec("SELECT pg_reload_conf()")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pg.URL("postgres"))
		if err != nil {
			t.Errorf("reset %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		conn.Exec(ctx, "ALTER SYSTEM RESET "+name)
		conn.Exec(ctx, "SELECT pg_reload_conf()")
	})
}

// idleOtherDatabaseBusy leaves the outbox idle while another database of
// the cluster writes heavily: the slot's confirmed position must follow
// the WAL (keepalives, heartbeats), so the slot retains little.
func idleOtherDatabaseBusy(t *testing.T) {
	w := newWorld(t)
	w.startRelay("OUTBOX_RELAY_HEARTBEAT_INTERVAL=1s")
	other := w.name + "_other"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
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
	if _, err := conn.Exec(ctx, "CREATE TABLE busy (id bigserial, filler text)"); err != nil {
		t.Fatal(err)
	}
	busyFor := 2 * time.Minute
	from := w.lsn("SELECT pg_current_wal_lsn()")
	var maxLag int64
	for start := time.Now(); time.Since(start) < busyFor; {
		if _, err := conn.Exec(ctx, "INSERT INTO busy (filler) SELECT repeat('x', 1000) FROM generate_series(1, 1000)"); err != nil {
			t.Fatal(err)
		}
		maxLag = max(maxLag, w.confirmedLag())
		time.Sleep(200 * time.Millisecond) // the other database's load, about 5 MB of WAL a second
	}
	written := int64(w.lsn("SELECT pg_current_wal_lsn()") - from)
	// Once the load stops, the position catches up within a few heartbeats.
	var lag int64
	w.waitFor(30*time.Second, "the slot to follow the WAL", func() (bool, string) {
		lag = w.confirmedLag()
		return lag < 1<<20, fmt.Sprintf("confirmed %d bytes behind the WAL", lag)
	})
	// restart_lsn moves only past a running-xacts record the relay has
	// confirmed: a checkpoint writes one, the bgwriter another every 15 s.
	w.exec("CHECKPOINT")
	var retained int64
	deadline := time.Now().Add(45 * time.Second)
	for {
		retained = int64(w.lsn("SELECT pg_current_wal_lsn()") - w.lsn("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = $1", w.name))
		if retained < 64<<20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond) // polling the slot
	}
	w.notef("other database wrote %d MiB of WAL in %v; confirmed lag at most %d MiB during it, %d KiB after; slot retains %d MiB",
		written>>20, busyFor, maxLag>>20, lag>>10, retained>>20)
	if retained > 64<<20 {
		t.Errorf("45s after the load and a checkpoint the slot retains %d MiB of WAL, want under 64 MiB", retained>>20)
	}
	// A few rows after the idle time still arrive.
	for i := range 10 {
		w.commit(ctx, []row{{aggregateType: "order", key: "late", seq: i, payload: jsonText(fmt.Sprintf(`{"seq": %d}`, i))}})
	}
	w.audit(auditOptions{noDuplicates: true})
}

// confirmedLag is how far the slot's confirmed position is behind the WAL.
func (w *world) confirmedLag() int64 {
	w.t.Helper()
	return int64(w.lsn("SELECT pg_current_wal_lsn()") - w.slot().confirmed)
}

// commit commits rows in one transaction from the scenario's connection.
func (w *world) commit(ctx context.Context, rows []row) {
	w.t.Helper()
	if err := w.ledger.commitRows(ctx, w.db, rows); err != nil {
		w.t.Fatalf("commit %d rows: %v", len(rows), err)
	}
}

// slotDropped drops the slot under a running relay (an operator's
// mistake): the relay must say so and not recreate it by itself; then
// `setup --recreate-slot` and `run` must deliver every row, those committed
// while there was no slot included (the backfill).
func slotDropped(t *testing.T) {
	w := newWorld(t)
	p := w.startRelay()
	wr := w.startWriter("k", steadyPause)
	w.waitCommits(wr, 200, 30*time.Second)
	w.waitFor(30*time.Second, "the slot to be dropped", func() (bool, string) {
		w.exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", w.name)
		var dropped bool
		err := w.db.QueryRow(context.Background(), `SELECT count(pg_drop_replication_slot(slot_name)) = 1
			FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, w.name).Scan(&dropped)
		return err == nil && dropped, fmt.Sprint(err)
	})
	dropped := w.lsn("SELECT pg_current_wal_lsn()")
	// Watch the relay for 15 s: it must not recreate the slot.
	recreated := false
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end) && !recreated; {
		recreated = w.slot().exists
		time.Sleep(100 * time.Millisecond) // polling the slot
	}
	code, exited := p.Wait(0)
	w.notef("slot dropped at %s; relay exited=%v (code %d), slot recreated by run=%v, last error: %s",
		dropped, exited, code, recreated, lastError(p.Output()))
	if recreated {
		t.Errorf("the relay recreated the dropped slot by itself, want a clear error and no silent recreation")
	}
	if !strings.Contains(strings.ToLower(p.Output()), "slot") {
		t.Errorf("%s never mentioned the slot after it was dropped:\n%s", p.Name, p.Tail(20))
	}
	p.Kill()
	w.waitCommits(wr, 200, 30*time.Second) // rows committed while there is no slot
	if code, out := w.runCommand(w.relayEnv(), time.Minute, "setup", "--recreate-slot"); code != 0 {
		t.Fatalf("setup --recreate-slot exited with %d:\n%s", code, out)
	}
	w.startRelay()
	w.waitCommits(wr, 200, 30*time.Second)
	wr.stop()
	w.audit(auditOptions{})
}

// schemaAndPublicationChanges adds and drops an unmapped column, then drops
// and recreates the publication, under load. Rows committed while the
// publication is missing are never streamed; the reconciler (short grace
// here) must dead-letter them.
func schemaAndPublicationChanges(t *testing.T) {
	w := newWorld(t)
	p := w.startRelay("OUTBOX_RELAY_RECONCILE_GRACE=5s", "OUTBOX_RELAY_RECONCILE_INTERVAL=1s")
	wr := w.startWriter("k", steadyPause)
	w.waitCommits(wr, 200, 30*time.Second)
	w.exec("ALTER TABLE public.outbox ADD COLUMN note text DEFAULT 'unmapped'")
	w.waitCommits(wr, 200, 30*time.Second)
	w.exec("ALTER TABLE public.outbox DROP COLUMN note")
	w.waitCommits(wr, 200, 30*time.Second)
	pub := pgx.Identifier{w.name}.Sanitize()
	w.exec("DROP PUBLICATION " + pub)
	w.waitCommits(wr, 100, 30*time.Second)
	// The relay may have recreated it already: it creates a missing one.
	var exists bool
	if err := w.db.QueryRow(context.Background(), "SELECT count(*) > 0 FROM pg_publication WHERE pubname = $1", w.name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if !exists {
		w.exec("CREATE PUBLICATION " + pub + " FOR TABLE public.outbox WITH (publish = 'insert')")
	}
	w.notef("publication recreated by the relay: %v", exists)
	w.waitCommits(wr, 200, 30*time.Second)
	wr.stop()
	w.audit(auditOptions{drain: 2 * time.Minute})
	if p.Exited() {
		w.notef("relay exited: %s", lastError(p.Output()))
	}
}

// lastError is the message of the last error-level log line in out.
func lastError(out string) string {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], `"level":"error"`) || strings.Contains(lines[i], `"level":"fatal"`) {
			return strings.TrimSpace(lines[i])
		}
	}
	return "(none)"
}
