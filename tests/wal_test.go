package tests

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// slotState is the test slot's row of pg_replication_slots.
type slotState struct {
	exists    bool
	active    bool
	plugin    string
	database  string
	confirmed outbox.LSN // confirmed_flush_lsn
}

func (s slotState) String() string {
	if !s.exists {
		return "slot does not exist"
	}
	return fmt.Sprintf("active=%v plugin=%s database=%s confirmed_flush_lsn=%s", s.active, s.plugin, s.database, s.confirmed)
}

func (e *testEnv) slot() slotState {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var s slotState
	var confirmed *string
	err := e.db.QueryRow(ctx, `SELECT active, plugin, database, confirmed_flush_lsn::text
		FROM pg_replication_slots WHERE slot_name = $1`, e.name).Scan(&s.active, &s.plugin, &s.database, &confirmed)
	if err == pgx.ErrNoRows {
		return s
	}
	if err != nil {
		e.t.Fatalf("read slot %s: %v", e.name, err)
	}
	s.exists = true
	if confirmed != nil {
		if s.confirmed, err = outbox.ParseLSN(*confirmed); err != nil {
			e.t.Fatal(err)
		}
	}
	return s
}

// waitConfirmed waits until the slot's confirmed_flush_lsn reaches lsn.
func (e *testEnv) waitConfirmed(timeout time.Duration, lsn outbox.LSN) {
	e.t.Helper()
	e.waitFor(timeout, fmt.Sprintf("confirmed_flush_lsn ≥ %s", lsn), func() (bool, string) {
		s := e.slot()
		return s.exists && s.confirmed >= lsn, s.String()
	})
}

// currentLSN is pg_current_wal_lsn().
func (e *testEnv) currentLSN() outbox.LSN {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var s string
	if err := e.db.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	lsn, err := outbox.ParseLSN(s)
	if err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

// commitTx commits tx and returns the end LSN of its commit record: the
// position a relay confirms once every record of the transaction is acked,
// and which it must not confirm before. It reads the record with
// pg_walinspect, so it is exact whatever else writes WAL meanwhile.
func commitTx(ctx context.Context, tx pgx.Tx) (outbox.LSN, error) {
	var xid int64
	var from string
	// The commit record comes after this insert position.
	err := tx.QueryRow(ctx, "SELECT txid_current() % 4294967296, pg_current_wal_insert_lsn()::text").Scan(&xid, &from)
	if err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	records := "pg_get_wal_records_info_till_end_of_wal($1::pg_lsn)"
	if serverVersion >= 160000 { // 16 dropped the _till_end_of_wal variants
		records = "pg_get_wal_records_info($1::pg_lsn, 'FFFFFFFF/FFFFFFFF')"
	}
	query := `SELECT end_lsn::text FROM ` + records + `
		WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' AND xid::text::bigint = $2`
	// With synchronous_commit off the record may not be flushed yet, and
	// pg_walinspect reads only flushed WAL.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var end string
		err := tx.Conn().QueryRow(ctx, query, from, xid).Scan(&end)
		if err == nil {
			return outbox.ParseLSN(end)
		}
		if err != pgx.ErrNoRows || time.Now().After(deadline) {
			return 0, fmt.Errorf("find commit record of xid %d after %s: %w", xid, from, err)
		}
		time.Sleep(20 * time.Millisecond) // waiting for the WAL writer
	}
}
