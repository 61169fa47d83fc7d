package relay

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/sql"
)

// statusEnv is a database on a throw-away cluster with the relay's
// configuration pointing at it.
type statusEnv struct {
	pg   *devenv.Postgres
	cfg  Config
	conn *pgx.Conn
}

// newStatusEnv starts a cluster with the extra settings and creates a
// database; nothing else (no table, publication or slot) exists yet.
func newStatusEnv(t *testing.T, ctx context.Context, settings map[string]string) *statusEnv {
	t.Helper()
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	if err := pg.CreateDatabase(ctx, "status"); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig([]string{
		"OUTBOX_RELAY_PG_URL=" + pg.URL("status"),
		"OUTBOX_RELAY_SLOT=status_slot",
		"OUTBOX_RELAY_PUBLICATION=status_pub",
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, cfg.PGURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	// The cluster runs with synchronous_commit off; the test's commits must
	// reach pg_current_wal_lsn() (the WAL written) before Status reads it.
	if _, err := conn.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		t.Fatal(err)
	}
	return &statusEnv{pg: pg, cfg: cfg, conn: conn}
}

func (e *statusEnv) exec(t *testing.T, ctx context.Context, sql string, args ...any) {
	t.Helper()
	if _, err := e.conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// setup creates the outbox table, the publication and an inactive slot.
func (e *statusEnv) setup(t *testing.T, ctx context.Context) {
	t.Helper()
	e.exec(t, ctx, sql.OutboxTable(e.cfg.TableName()))
	e.exec(t, ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert')", e.cfg.Publication, e.cfg.TableName().Quoted()))
	e.exec(t, ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", e.cfg.Slot)
}

func (e *statusEnv) status(t *testing.T, ctx context.Context, cfg Config) StatusReport {
	t.Helper()
	r, err := Status(ctx, cfg)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return r
}

func hasWarning(r StatusReport, part string) bool {
	for _, w := range r.Warnings {
		if strings.Contains(w, part) {
			return true
		}
	}
	return false
}

func TestStatus(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newStatusEnv(t, ctx, nil)
	cfg := env.cfg

	t.Run("nothing set up", func(t *testing.T) {
		r := env.status(t, ctx, cfg)
		if r.SlotExists || r.PublicationExists || r.TableExists {
			t.Errorf("slot, publication, table exist = %v, %v, %v, want all false", r.SlotExists, r.PublicationExists, r.TableExists)
		}
		if got := r.ExitCode(); got != StatusExitSlotMissing {
			t.Errorf("ExitCode() = %d, want %d", got, StatusExitSlotMissing)
		}
		if r.ConfirmedFlushLSN != nil || r.LagBytes != nil || r.UnackedRows != nil {
			t.Errorf("confirmed, lag, unacked = %v, %v, %v, want nil without a slot and table", r.ConfirmedFlushLSN, r.LagBytes, r.UnackedRows)
		}
		for _, want := range []string{`slot "status_slot" does not exist`, `publication "status_pub" does not exist`, "table public.outbox does not exist"} {
			if !hasWarning(r, want) {
				t.Errorf("warnings %q lack %q", r.Warnings, want)
			}
		}
	})

	env.setup(t, ctx)

	t.Run("idle slot", func(t *testing.T) {
		r := env.status(t, ctx, cfg)
		if got := r.ExitCode(); got != StatusExitHealthy {
			t.Errorf("ExitCode() = %d, want %d (warnings %q)", got, StatusExitHealthy, r.Warnings)
		}
		if !r.SlotExists || r.SlotPlugin != "pgoutput" || r.SlotDatabase != "status" || r.Database != "status" {
			t.Errorf("slot exists, plugin, database = %v, %q, %q, want true, pgoutput, status", r.SlotExists, r.SlotPlugin, r.SlotDatabase)
		}
		if r.Active || r.ActivePID != nil || r.HolderApplicationName != nil {
			t.Errorf("active, pid, holder = %v, %v, %v, want an inactive slot", r.Active, r.ActivePID, r.HolderApplicationName)
		}
		if !hasWarning(r, "no process is streaming") {
			t.Errorf("warnings %q lack the inactive slot", r.Warnings)
		}
		if r.ConfirmedFlushLSN == nil || r.RestartLSN == nil || r.LagBytes == nil || r.RetainedBytes == nil {
			t.Fatalf("confirmed, restart, lag, retained = %v, %v, %v, %v, want all set", r.ConfirmedFlushLSN, r.RestartLSN, r.LagBytes, r.RetainedBytes)
		}
		if r.WALStatus != "reserved" {
			t.Errorf("wal_status = %q, want reserved", r.WALStatus)
		}
		if r.SafeWALSize != nil {
			t.Errorf("safe_wal_size = %d, want nil (max_slot_wal_keep_size = -1)", *r.SafeWALSize)
		}
		if !r.PublicationExists || !r.PublicationCoversTable || !r.TableExists {
			t.Errorf("publication exists, covers, table exists = %v, %v, %v, want true", r.PublicationExists, r.PublicationCoversTable, r.TableExists)
		}
		if r.UnackedRows == nil || *r.UnackedRows != 0 || r.OldestUnackedSeconds != nil {
			t.Errorf("unacked rows, oldest = %v, %v, want 0, nil", r.UnackedRows, r.OldestUnackedSeconds)
		}
	})

	// Rows written after the slot's position: the slot lags by their WAL,
	// and in time by the oldest row's age (created_at, since
	// track_commit_timestamp is off). One row claims to be an hour old.
	env.exec(t, ctx, `INSERT INTO outbox (aggregatetype, aggregateid, type, payload, created_at)
		VALUES ('order', '1', 'created', '{}', now() - interval '1 hour')`)
	env.exec(t, ctx, `INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
		SELECT 'order', g::text, 'created', '{}' FROM generate_series(2, 10) g`)

	t.Run("lagging slot", func(t *testing.T) {
		r := env.status(t, ctx, cfg)
		if r.LagBytes == nil || *r.LagBytes <= 0 {
			t.Fatalf("lag_bytes = %v, want > 0 after WAL was written", r.LagBytes)
		}
		if *r.RetainedBytes < *r.LagBytes {
			t.Errorf("retained bytes %d < lag bytes %d, want restart_lsn at or before confirmed_flush_lsn", *r.RetainedBytes, *r.LagBytes)
		}
		if r.UnackedRows == nil || *r.UnackedRows != 10 {
			t.Errorf("unacked rows = %v, want 10", r.UnackedRows)
		}
		if r.OldestUnackedSeconds == nil || *r.OldestUnackedSeconds < 3590 || *r.OldestUnackedSeconds > 3700 {
			t.Errorf("oldest unacked seconds = %v, want about 3600", r.OldestUnackedSeconds)
		}
		if r.LagSource != LagCreatedAt || r.LagSeconds == nil || *r.LagSeconds < 3590 {
			t.Errorf("lag = %v from %q, want about 3600 from %q", r.LagSeconds, r.LagSource, LagCreatedAt)
		}
	})

	t.Run("ack mode mark counts unmarked rows", func(t *testing.T) {
		env.exec(t, ctx, "UPDATE outbox SET published_at = now() WHERE aggregateid IN ('1', '2', '3')")
		mark := cfg
		mark.AckMode = outbox.AckMark
		r := env.status(t, ctx, mark)
		if r.UnackedRows == nil || *r.UnackedRows != 7 {
			t.Errorf("unacked rows = %v, want 7", r.UnackedRows)
		}
		if r.OldestUnackedSeconds == nil || *r.OldestUnackedSeconds > 600 {
			t.Errorf("oldest unacked seconds = %v, want the age of a fresh row (the hour-old one is marked)", r.OldestUnackedSeconds)
		}
	})

	t.Run("ack mode none", func(t *testing.T) {
		none := cfg
		none.AckMode = outbox.AckNone
		r := env.status(t, ctx, none)
		if r.UnackedRows != nil || r.OldestUnackedSeconds != nil {
			t.Errorf("unacked rows, oldest = %v, %v, want nil with ACK_MODE none", r.UnackedRows, r.OldestUnackedSeconds)
		}
		if r.LagSeconds != nil || r.LagSource != LagUnknown {
			t.Errorf("lag = %v from %q, want unknown", r.LagSeconds, r.LagSource)
		}
		if r.LagBytes == nil || *r.LagBytes <= 0 {
			t.Errorf("lag_bytes = %v, want > 0 whatever the ack mode", r.LagBytes)
		}
	})

	t.Run("publication without the table", func(t *testing.T) {
		other := cfg
		other.Publication = "other_pub"
		env.exec(t, ctx, "CREATE TABLE unrelated (id int)")
		env.exec(t, ctx, "CREATE PUBLICATION other_pub FOR TABLE unrelated")
		r := env.status(t, ctx, other)
		if !r.PublicationExists || r.PublicationCoversTable {
			t.Errorf("publication exists, covers = %v, %v, want true, false", r.PublicationExists, r.PublicationCoversTable)
		}
		if !hasWarning(r, "does not cover table public.outbox") {
			t.Errorf("warnings %q lack the uncovered table", r.Warnings)
		}
	})

	t.Run("streaming slot names its holder", func(t *testing.T) {
		stopStreaming := streamFromSlot(t, ctx, env.pg.URL("status"), cfg.Slot, cfg.Publication, "status-test-holder")
		defer stopStreaming()
		var r StatusReport
		deadline := time.Now().Add(10 * time.Second)
		for {
			r = env.status(t, ctx, cfg)
			if r.Active && r.HolderApplicationName != nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !r.Active || r.ActivePID == nil || *r.ActivePID == 0 {
			t.Fatalf("active, pid = %v, %v, want the streaming walsender", r.Active, r.ActivePID)
		}
		if r.HolderApplicationName == nil || *r.HolderApplicationName != "status-test-holder" {
			t.Errorf("holder application_name = %v, want status-test-holder", r.HolderApplicationName)
		}
		if r.HolderClientAddr == nil || *r.HolderClientAddr != "127.0.0.1/32" && *r.HolderClientAddr != "127.0.0.1" {
			t.Errorf("holder client_addr = %v, want 127.0.0.1", r.HolderClientAddr)
		}
		if hasWarning(r, "no process is streaming") {
			t.Errorf("warnings %q name an inactive slot while it streams", r.Warnings)
		}
		if strings.Contains(fmt.Sprintf("%+v", r), "postgres://") {
			t.Errorf("report holds the connection URL: %+v", r)
		}
	})

	t.Run("unreachable server", func(t *testing.T) {
		for _, url := range []string{
			"postgres://relay:s3cret-pw@127.0.0.1:1/status?sslmode=disable&connect_timeout=2",
			"postgres://relay:s3cret-pw@127.0.0.1:notaport/status",
		} {
			bad := cfg
			bad.PGURL = url
			_, err := Status(ctx, bad)
			if err == nil {
				t.Fatalf("Status(%s): err = nil, want an error", url)
			}
			if strings.Contains(err.Error(), "s3cret-pw") {
				t.Errorf("error %q reveals the password", err)
			}
		}
	})
}

// TestStatusCommitTimestampLag checks that with track_commit_timestamp the
// lag in time comes from the oldest row's commit, not its created_at.
func TestStatusCommitTimestampLag(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newStatusEnv(t, ctx, map[string]string{"track_commit_timestamp": "on"})
	env.setup(t, ctx)
	env.exec(t, ctx, `INSERT INTO outbox (aggregatetype, aggregateid, type, payload, created_at)
		VALUES ('order', '1', 'created', '{}', now() - interval '1 hour')`)

	r := env.status(t, ctx, env.cfg)
	if r.LagSource != LagCommitTimestamp {
		t.Fatalf("lag source = %q, want %q", r.LagSource, LagCommitTimestamp)
	}
	if r.LagSeconds == nil || *r.LagSeconds > 60 {
		t.Errorf("lag seconds = %v, want the few seconds since the commit", r.LagSeconds)
	}
	if r.OldestUnackedSeconds == nil || *r.OldestUnackedSeconds < 3590 {
		t.Errorf("oldest unacked seconds = %v, want about 3600 (from created_at)", r.OldestUnackedSeconds)
	}

	// Once the slot has confirmed everything, the lag is 0 whatever rows
	// remain (they wait for the reconciler, not the stream).
	env.exec(t, ctx, "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())", env.cfg.Slot)
	r = env.status(t, ctx, env.cfg)
	if r.LagBytes == nil || *r.LagBytes != 0 || r.LagSource != LagCaughtUp || r.LagSeconds == nil || *r.LagSeconds != 0 {
		t.Errorf("lag = %v bytes, %v s from %q, want 0, 0 from %q", r.LagBytes, r.LagSeconds, r.LagSource, LagCaughtUp)
	}

	// A table without created_at (Debezium's shape): the commit time is
	// the only age there is, for the oldest row and for the lag.
	env.exec(t, ctx, "ALTER TABLE outbox DROP COLUMN created_at")
	env.exec(t, ctx, `INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', '2', 'created', '{}')`)
	r = env.status(t, ctx, env.cfg)
	if r.OldestUnackedSeconds == nil || *r.OldestUnackedSeconds > 60 {
		t.Errorf("oldest unacked seconds without created_at = %v, want the few seconds since the first row's commit", r.OldestUnackedSeconds)
	}
	if r.LagSource != LagCommitTimestamp || r.LagSeconds == nil {
		t.Errorf("lag without created_at = %v from %q, want it from %q", r.LagSeconds, r.LagSource, LagCommitTimestamp)
	}
	if hasWarning(r, "created_at") {
		t.Errorf("warnings = %v, want none about created_at", r.Warnings)
	}
}

// TestStatusLostSlot provokes a lost slot: max_slot_wal_keep_size small, WAL
// switched past it, a checkpoint invalidates the slot.
func TestStatusLostSlot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := newStatusEnv(t, ctx, map[string]string{"max_slot_wal_keep_size": "'1MB'", "min_wal_size": "'32MB'"})
	env.setup(t, ctx)

	r := env.status(t, ctx, env.cfg)
	if r.SafeWALSize == nil {
		t.Errorf("safe_wal_size = nil, want a figure with max_slot_wal_keep_size set")
	}
	deadline := time.Now().Add(time.Minute)
	for r.WALStatus != "lost" && time.Now().Before(deadline) {
		env.exec(t, ctx, "INSERT INTO outbox (aggregatetype, aggregateid, type) VALUES ('a', 'b', 'c')")
		env.exec(t, ctx, "SELECT pg_switch_wal()")
		env.exec(t, ctx, "CHECKPOINT")
		r = env.status(t, ctx, env.cfg)
	}
	if r.WALStatus != "lost" {
		t.Fatalf("wal_status = %q after a minute of WAL switches, want lost", r.WALStatus)
	}
	if got := r.ExitCode(); got != StatusExitSlotLost {
		t.Errorf("ExitCode() = %d, want %d", got, StatusExitSlotLost)
	}
	if !hasWarning(r, "recreate-slot") {
		t.Errorf("warnings %q do not point to setup --recreate-slot", r.Warnings)
	}
}

func TestStatusExitCode(t *testing.T) {
	tests := []struct {
		name   string
		report StatusReport
		want   int
	}{
		{"missing", StatusReport{}, StatusExitSlotMissing},
		{"reserved", StatusReport{SlotExists: true, WALStatus: "reserved"}, StatusExitHealthy},
		{"extended", StatusReport{SlotExists: true, WALStatus: "extended"}, StatusExitHealthy},
		{"unreserved", StatusReport{SlotExists: true, WALStatus: "unreserved"}, StatusExitHealthy},
		{"lost", StatusReport{SlotExists: true, WALStatus: "lost"}, StatusExitSlotLost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.report.ExitCode(); got != tt.want {
				t.Errorf("ExitCode() = %d, want %d", got, tt.want)
			}
		})
	}
}

// streamFromSlot opens a replication connection named applicationName and
// starts streaming the slot, which makes it active; the returned func
// closes the connection.
func streamFromSlot(t *testing.T, ctx context.Context, url, slot, publication, applicationName string) func() {
	t.Helper()
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = applicationName
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", publication)},
	})
	if err != nil {
		conn.Close(ctx)
		t.Fatal(err)
	}
	return func() { conn.Close(context.Background()) }
}
