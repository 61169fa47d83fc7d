package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/rows"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/replication"
)

// Exit codes of `outbox-relay status`, chosen by StatusReport.ExitCode.
// Errors (Postgres unreachable, a query failing) exit with 1.
const (
	StatusExitHealthy     = 0
	StatusExitSlotMissing = 3
	StatusExitSlotLost    = 4
)

// Where StatusReport.LagSeconds comes from.
const (
	// LagCaughtUp: the slot has confirmed all the WAL there is.
	LagCaughtUp = "caught_up"
	// LagNoUnackedRows: WAL is pending but it holds no outbox row still to
	// deliver (it is other tables' traffic, confirmed at the next keepalive).
	LagNoUnackedRows = "no_unacked_rows"
	// LagCommitTimestamp: the commit time of the oldest unacked row's
	// transaction (track_commit_timestamp = on).
	LagCommitTimestamp = "commit_timestamp"
	// LagCreatedAt: the oldest unacked row's created_at, which defaults to
	// its transaction's start (track_commit_timestamp = off).
	LagCreatedAt = "created_at"
	// LagUnknown: nothing tells which rows are still to deliver (ACK_MODE
	// none, no slot, or no created_at column).
	LagUnknown = "unknown"
)

// StatusReport is what `outbox-relay status` shows: the slot, the
// publication and the outbox table as Postgres sees them, read without
// touching Kafka. It never holds the connection URL or any other secret.
//
// Pointer fields are nil (JSON null) when the value does not exist or is
// unknown: the slot's fields when there is no slot, the holder when the slot
// is inactive, SafeWALSize when max_slot_wal_keep_size is -1 (unlimited),
// the unacked figures with ACK_MODE none.
type StatusReport struct {
	CheckedAt     time.Time `json:"checked_at"`
	Database      string    `json:"database"`
	ServerVersion string    `json:"server_version"`
	// CurrentWALLSN is pg_current_wal_lsn() (the replay position on a standby).
	CurrentWALLSN string `json:"current_wal_lsn"`

	Slot       string `json:"slot"`
	SlotExists bool   `json:"slot_exists"`
	SlotPlugin string `json:"slot_plugin,omitempty"`
	// SlotDatabase is the database the slot belongs to.
	SlotDatabase string `json:"slot_database,omitempty"`
	Active       bool   `json:"active"`
	ActivePID    *int32 `json:"active_pid"`
	// HolderApplicationName is the application_name of the walsender's
	// client (pg_stat_replication), which names the relay instance.
	HolderApplicationName *string `json:"holder_application_name"`
	HolderClientAddr      *string `json:"holder_client_addr"`
	ConfirmedFlushLSN     *string `json:"confirmed_flush_lsn"`
	// LagBytes is CurrentWALLSN - ConfirmedFlushLSN: WAL written but not yet
	// confirmed by the relay.
	LagBytes *int64 `json:"lag_bytes"`
	// LagSeconds is the delivery lag in time: the age of the commit of the
	// oldest outbox row still to deliver; 0 when the slot is caught up or
	// no row is waiting. LagSource says how it was found.
	LagSeconds *float64 `json:"lag_seconds"`
	LagSource  string   `json:"lag_source"`
	// WALStatus is reserved, extended, unreserved or lost.
	WALStatus   string  `json:"wal_status,omitempty"`
	SafeWALSize *int64  `json:"safe_wal_size"`
	RestartLSN  *string `json:"restart_lsn"`
	// RetainedBytes is CurrentWALLSN - RestartLSN: the WAL the slot keeps
	// from being removed.
	RetainedBytes *int64 `json:"retained_bytes"`

	Publication            string `json:"publication"`
	PublicationExists      bool   `json:"publication_exists"`
	PublicationCoversTable bool   `json:"publication_covers_table"`

	Table       string `json:"table"`
	TableExists bool   `json:"table_exists"`
	AckMode     string `json:"ack_mode"`
	// UnackedRows counts the rows whose delivery is not yet recorded
	// (outbox.Mapping.Unacked): present rows whose published_at is NULL.
	UnackedRows          *int64   `json:"unacked_rows"`
	OldestUnackedSeconds *float64 `json:"oldest_unacked_seconds"`

	// Warnings are problems an operator should look at, one sentence each.
	Warnings []string `json:"warnings"`
}

// ExitCode maps the report to the exit code of `outbox-relay status`:
// StatusExitSlotMissing when the slot does not exist, StatusExitSlotLost
// when its WAL was removed (wal_status lost), else StatusExitHealthy.
func (r StatusReport) ExitCode() int {
	switch {
	case !r.SlotExists:
		return StatusExitSlotMissing
	case r.WALStatus == "lost":
		return StatusExitSlotLost
	default:
		return StatusExitHealthy
	}
}

// Status reads what `outbox-relay status` reports from Postgres. It only
// reads: it never creates, drops or acquires anything, so it is safe to run
// next to a streaming relay. Only errors talking to Postgres are returned;
// a missing slot, publication or table is reported in the StatusReport.
func Status(ctx context.Context, cfg Config) (StatusReport, error) {
	table := cfg.TableName()
	r := StatusReport{
		Slot:        cfg.Slot,
		Publication: cfg.Publication,
		Table:       table.String(),
		AckMode:     string(cfg.AckMode),
		LagSource:   LagUnknown,
		Warnings:    []string{},
	}
	conn, err := pgx.Connect(ctx, cfg.PGURL)
	if err != nil {
		return r, fmt.Errorf("connect to Postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var trackCommitTimestamp, currentLSN string
	err = conn.QueryRow(ctx, `
		SELECT clock_timestamp(), current_database(), current_setting('server_version'),
		       current_setting('track_commit_timestamp'),
		       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text`).
		Scan(&r.CheckedAt, &r.Database, &r.ServerVersion, &trackCommitTimestamp, &currentLSN)
	if err != nil {
		return r, fmt.Errorf("read server state: %w", err)
	}
	r.CurrentWALLSN = currentLSN
	current, err := outbox.ParseLSN(currentLSN)
	if err != nil {
		return r, err
	}

	if err := r.readSlot(ctx, conn, current); err != nil {
		return r, err
	}
	if err := r.readPublication(ctx, conn, table); err != nil {
		return r, err
	}
	oldest, err := r.readTable(ctx, conn, table, cfg.Mapping(), cfg.AckMode, trackCommitTimestamp == "on")
	if err != nil {
		return r, err
	}
	r.setLag(oldest)
	return r, nil
}

// readSlot fills the slot's fields and its warnings.
func (r *StatusReport) readSlot(ctx context.Context, conn *pgx.Conn, current outbox.LSN) error {
	var (
		confirmed, restart, appName, clientAddr *string
		pid                                     *int32
		safeWALSize                             *int64
	)
	// The walsender holding the slot is active_pid; pg_stat_replication
	// names its client (application_name is how relay instances tell
	// themselves apart).
	err := conn.QueryRow(ctx, `
		SELECT coalesce(s.plugin, ''), coalesce(s.database, ''), s.active, s.active_pid,
		       s.confirmed_flush_lsn::text, s.restart_lsn::text, coalesce(s.wal_status, ''), s.safe_wal_size,
		       r.application_name, r.client_addr::text
		FROM pg_replication_slots s
		LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
		WHERE s.slot_name = $1`, r.Slot).
		Scan(&r.SlotPlugin, &r.SlotDatabase, &r.Active, &pid, &confirmed, &restart, &r.WALStatus, &safeWALSize, &appName, &clientAddr)
	if errors.Is(err, pgx.ErrNoRows) {
		r.warn("slot %q does not exist: run `outbox-relay setup`, or start the relay, which creates it", r.Slot)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read slot %q: %w", r.Slot, err)
	}
	r.SlotExists = true
	r.ActivePID = pid
	r.HolderApplicationName = appName
	r.HolderClientAddr = clientAddr
	r.SafeWALSize = safeWALSize
	if confirmed != nil {
		lsn, err := outbox.ParseLSN(*confirmed)
		if err != nil {
			return err
		}
		r.ConfirmedFlushLSN = confirmed
		r.LagBytes = pointerTo(behind(current, lsn))
	}
	if restart != nil {
		lsn, err := outbox.ParseLSN(*restart)
		if err != nil {
			return err
		}
		r.RestartLSN = restart
		r.RetainedBytes = pointerTo(behind(current, lsn))
	}

	switch {
	case r.SlotPlugin != replication.Plugin:
		r.warn("slot %q uses plugin %q, not %q: the relay cannot stream from it", r.Slot, r.SlotPlugin, replication.Plugin)
	case r.SlotDatabase != r.Database:
		r.warn("slot %q belongs to database %q, not %q", r.Slot, r.SlotDatabase, r.Database)
	}
	switch r.WALStatus {
	case "lost":
		r.warn("slot %q is lost (the WAL it needs was removed): run `outbox-relay setup --recreate-slot` to replace it", r.Slot)
	case "unreserved":
		r.warn("slot %q is unreserved: it retains more WAL than max_slot_wal_keep_size and will be lost at the next checkpoint unless the relay catches up", r.Slot)
	}
	if !r.Active && r.WALStatus != "lost" {
		r.warn("no process is streaming from slot %q: is the relay running?", r.Slot)
	}
	return nil
}

// readPublication fills the publication's fields and its warnings.
func (r *StatusReport) readPublication(ctx context.Context, conn *pgx.Conn, table outbox.Table) error {
	var publishesInsert, viaRoot, partitioned bool
	err := conn.QueryRow(ctx, `
		SELECT p.pubinsert, p.pubviaroot,
		       EXISTS (SELECT 1 FROM pg_publication_tables t
		               WHERE t.pubname = p.pubname AND t.schemaname = $2 AND t.tablename = $3),
		       coalesce((SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = to_regclass($4)), false)
		FROM pg_publication p WHERE p.pubname = $1`, r.Publication, table.Schema, table.Name, table.Quoted()).
		Scan(&publishesInsert, &viaRoot, &r.PublicationCoversTable, &partitioned)
	if errors.Is(err, pgx.ErrNoRows) {
		r.warn("publication %q does not exist: run `outbox-relay setup`", r.Publication)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read publication %q: %w", r.Publication, err)
	}
	r.PublicationExists = true
	switch {
	case partitioned && !viaRoot:
		// pg_publication_tables then lists the partitions, not the table.
		r.warn("publication %q publishes the partitions of the partitioned table %s under their own names, which the relay refuses: run ALTER PUBLICATION %s SET (publish_via_partition_root = true)",
			r.Publication, table, outbox.QuoteIdent(r.Publication))
	case !r.PublicationCoversTable:
		r.warn("publication %q does not cover table %s: no row of it reaches the relay", r.Publication, table)
	case !publishesInsert:
		r.warn("publication %q does not publish inserts", r.Publication)
	}
	return nil
}

// unackedRow is the oldest row still to deliver.
type unackedRow struct {
	ageSeconds *float64 // age of its transaction's commit (or of created_at)
	source     string   // LagCommitTimestamp or LagCreatedAt
}

// readTable fills the table's fields and returns the oldest unacked row's
// age for the lag (nil when unknown or there is none).
func (r *StatusReport) readTable(ctx context.Context, conn *pgx.Conn, table outbox.Table, mapping outbox.Mapping, mode outbox.AckMode, commitTimestamps bool) (*unackedRow, error) {
	cols, err := replication.TableColumns(ctx, conn, table)
	if errors.Is(err, replication.ErrRefused) {
		r.warn("table %s does not exist: run `outbox-relay setup`", table)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r.TableExists = true

	if !mode.RecordsDelivery() { // none: nothing records a delivery, so nothing is "unacked"
		return nil, nil
	}
	hasPublishedAt := hasColumn(cols, mapping.PublishedAt)
	if mode == outbox.AckMark && !hasPublishedAt {
		r.warn("table %s has no column %s, which ACK_MODE mark needs", table, mapping.PublishedAt)
		return nil, nil
	}
	where := " WHERE " + mapping.Unacked(hasPublishedAt)
	count, err := countUnacked(ctx, conn, table, mapping, hasPublishedAt)
	if err != nil {
		return nil, err
	}
	r.UnackedRows = &count
	if count == 0 {
		return nil, nil
	}
	// The oldest row by created_at; with track_commit_timestamp its
	// transaction's commit time is known exactly (NULL for a frozen xmin, in
	// which case created_at stands in). A table without created_at goes by
	// the commit time alone.
	createdAt := rows.TimeExpr(hasColumn(cols, mapping.CreatedAt), mapping.CreatedAt, commitTimestamps)
	if createdAt == "" {
		r.warn("table %s has no column %s (OUTBOX_RELAY_COLUMN_TIMESTAMP) and track_commit_timestamp is off: the age of unacked rows is unknown", table, mapping.CreatedAt)
		return nil, nil
	}
	commitAge := "NULL::float8"
	if commitTimestamps {
		commitAge = "extract(epoch FROM clock_timestamp() - pg_xact_commit_timestamp(xmin))::float8"
	}
	var createdAge, committedAge *float64
	err = conn.QueryRow(ctx, fmt.Sprintf(
		"SELECT extract(epoch FROM clock_timestamp() - %s)::float8, %s FROM %s%s ORDER BY %s LIMIT 1",
		createdAt, commitAge, table.Quoted(), where, createdAt)).Scan(&createdAge, &committedAge)
	if errors.Is(err, pgx.ErrNoRows) { // acked between the two queries
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the oldest unacked row of %s: %w", table, err)
	}
	r.OldestUnackedSeconds = createdAge
	if committedAge != nil {
		return &unackedRow{ageSeconds: committedAge, source: LagCommitTimestamp}, nil
	}
	return &unackedRow{ageSeconds: createdAge, source: LagCreatedAt}, nil
}

// setLag fills LagSeconds. Postgres does not say when the transaction at
// confirmed_flush_lsn committed (that would take pg_walinspect, or peeking
// the slot, which fails while the relay holds it), and "time since the
// confirmed commit" would grow on an idle relay that is fully caught up. So
// the lag in time is the age of the oldest outbox row not yet delivered:
// rows before the confirmed position are acked (the relay records the ack
// before it confirms), so that row is at or after it. A row the stream gave
// up on, waiting for the reconciler, also counts, so this is an upper bound.
func (r *StatusReport) setLag(oldest *unackedRow) {
	switch {
	case r.LagBytes == nil:
		r.LagSource = LagUnknown
	case *r.LagBytes == 0:
		r.LagSeconds, r.LagSource = pointerTo(0.0), LagCaughtUp
	case r.UnackedRows == nil:
		r.LagSource = LagUnknown
	case oldest == nil || oldest.ageSeconds == nil:
		if *r.UnackedRows == 0 {
			r.LagSeconds, r.LagSource = pointerTo(0.0), LagNoUnackedRows
		} else {
			r.LagSource = LagUnknown
		}
	default:
		r.LagSeconds, r.LagSource = pointerTo(max(*oldest.ageSeconds, 0)), oldest.source
	}
}

func (r *StatusReport) warn(format string, args ...any) {
	r.Warnings = append(r.Warnings, fmt.Sprintf(format, args...))
}

// behind returns how many bytes of WAL lie between lsn and current, or 0
// when lsn is ahead (a confirmed position may be a keepalive's WAL end).
func behind(current, lsn outbox.LSN) int64 {
	if lsn >= current {
		return 0
	}
	return int64(current - lsn)
}

func pointerTo[T any](v T) *T { return &v }
