package replication

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// Plugin is the logical decoding output plugin the relay's slot uses.
const Plugin = "pgoutput"

// ErrRefused marks a problem with the server, role, table, publication or
// slot that retrying cannot fix: an operator has to act. Callers stop instead
// of retrying when errors.Is(err, ErrRefused).
var ErrRefused = errors.New("refused")

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// maxSlotName is Postgres's limit on a slot name's length (NAMEDATALEN-1).
const maxSlotName = 63

var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// ValidSlotName reports whether name is a valid replication slot name
// (lower-case letters, digits and underscores, at most 63 characters).
func ValidSlotName(name string) bool { return slotName.MatchString(name) }

// CheckServer refuses a server whose wal_level is not logical and a role that
// may not open a replication connection.
func CheckServer(ctx context.Context, conn *pgx.Conn) error {
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return refuse("wal_level is %q, want \"logical\": set wal_level = logical in postgresql.conf and restart Postgres", walLevel)
	}
	var role string
	var replication bool
	err := conn.QueryRow(ctx,
		"SELECT rolname, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&role, &replication)
	if err != nil {
		return fmt.Errorf("read role attributes: %w", err)
	}
	if !replication {
		return refuse("role %q lacks the REPLICATION attribute: run ALTER ROLE %s WITH REPLICATION as an admin", role, outbox.QuoteIdent(role))
	}
	return nil
}

// Column describes one column of the outbox table.
type Column struct {
	Name string
	Type string // format_type(), e.g. "uuid" or "jsonb"
}

// TableColumns returns the columns of table, refusing a missing table.
func TableColumns(ctx context.Context, conn *pgx.Conn, table outbox.Table) (map[string]Column, error) {
	rows, err := conn.Query(ctx, `
		SELECT a.attname, format_type(a.atttypid, a.atttypmod)
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped`,
		table.Schema, table.Name)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	cols := map[string]Column{}
	for rows.Next() {
		var c Column
		if err := rows.Scan(&c.Name, &c.Type); err != nil {
			return nil, fmt.Errorf("read columns of %s: %w", table, err)
		}
		cols[c.Name] = c
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	if len(cols) == 0 {
		return nil, refuse("table %s does not exist: run `outbox-relay setup` or create it (see sql/outbox.sql)", table)
	}
	return cols, nil
}

// CheckTable refuses a table that lacks a column the mapping needs, counting
// the published_at column that ACK_MODE mark writes.
func CheckTable(ctx context.Context, conn *pgx.Conn, table outbox.Table, m outbox.Mapping, mode outbox.AckMode) (map[string]Column, error) {
	cols, err := TableColumns(ctx, conn, table)
	if err != nil {
		return nil, err
	}
	required := []string{m.ID, m.AggregateType, m.AggregateID, m.Type, m.Payload}
	if mode == outbox.AckMark {
		required = append(required, m.PublishedAt)
	}
	var missing []string
	for _, name := range required {
		if _, ok := cols[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, refuse("table %s has no column %s, which the relay needs", table, strings.Join(missing, ", "))
	}
	if err := checkIDColumn(ctx, conn, table, m.ID); err != nil {
		return nil, err
	}
	return cols, nil
}

// checkIDColumn refuses an id column that can be NULL or repeat: the relay
// deletes or marks a delivered row by its id, and consumers de-duplicate by
// it, so each row needs its own.
//
// A unique index on the id alone proves that. A partitioned table cannot
// have one unless it is partitioned by the id: Postgres requires every
// unique index of a partitioned table to contain the partition key. So on a
// partitioned table a unique index on the id plus partition key columns
// only, such as PRIMARY KEY (id, created_at), is accepted: it leaves the id
// unique within one partition key value, and the id's generator
// (gen_random_uuid(), an identity column) has to keep it unique across them.
// Any other column in the key would let ids repeat for a reason that has
// nothing to do with partitioning, so it is refused as before.
func checkIDColumn(ctx context.Context, conn *pgx.Conn, table outbox.Table, column string) error {
	var notNull, unique bool
	var partitionColumns []string // the partition key's columns, none when not partitioned
	err := conn.QueryRow(ctx, `
		WITH part AS (
			SELECT coalesce((SELECT p.partattrs::int2[] FROM pg_partitioned_table p WHERE p.partrelid = $1::regclass), '{}') AS attrs)
		SELECT a.attnotnull,
		       EXISTS (
		           SELECT 1 FROM pg_index i
		           WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indpred IS NULL
		             AND EXISTS (SELECT 1 FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
		                         WHERE k.n <= i.indnkeyatts AND k.attnum = a.attnum)
		             AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
		                             WHERE k.n <= i.indnkeyatts AND k.attnum <> a.attnum
		                               AND NOT (k.attnum > 0 AND k.attnum = ANY(part.attrs)))),
		       coalesce((SELECT array_agg(pa.attname::text ORDER BY k.n)
		                 FROM unnest(part.attrs) WITH ORDINALITY AS k(attnum, n)
		                 JOIN pg_attribute pa ON pa.attrelid = a.attrelid AND pa.attnum = k.attnum), '{}')
		FROM pg_attribute a, part
		WHERE a.attrelid = $1::regclass AND a.attname = $2 AND NOT a.attisdropped`, table.Quoted(), column).
		Scan(&notNull, &unique, &partitionColumns)
	if err != nil {
		return fmt.Errorf("read constraints of %s column %q: %w", table, column, err)
	}
	quoted := outbox.QuoteIdent(column)
	keyColumns := []string{quoted}
	var partitionKey []string
	for _, c := range partitionColumns {
		partitionKey = append(partitionKey, outbox.QuoteIdent(c))
		if c != column {
			keyColumns = append(keyColumns, outbox.QuoteIdent(c))
		}
	}
	key := strings.Join(keyColumns, ", ")
	switch {
	case !notNull:
		return refuse("table %s: id column %q is nullable, and the relay records each delivery by id: run ALTER TABLE %s ALTER COLUMN %s SET NOT NULL (better: ADD PRIMARY KEY (%s))",
			table, column, table.Quoted(), quoted, key)
	case !unique && len(partitionKey) > 0:
		return refuse("table %s: id column %q is not unique, and the relay records each delivery by id: the table is partitioned by (%s), so its primary key must be the id plus the partition key: run ALTER TABLE %s ADD PRIMARY KEY (%s)",
			table, column, strings.Join(partitionKey, ", "), table.Quoted(), key)
	case !unique:
		return refuse("table %s: id column %q is not unique, and the relay records each delivery by id: run ALTER TABLE %s ADD PRIMARY KEY (%s) (or CREATE UNIQUE INDEX ON %s (%s))",
			table, column, table.Quoted(), quoted, table.Quoted(), quoted)
	}
	return nil
}

// EnsurePublication creates the publication for table (inserts only) when it
// is missing, and refuses an existing one that does not cover table or does
// not publish inserts. It reports whether it created it.
//
// A partitioned table is published with publish_via_partition_root = true:
// its rows then reach the stream as rows of the table itself, under its
// name, whichever partition holds them, and partitions created later are
// covered without touching the publication. Without it each partition is
// published under its own name, which the relay refuses (it decodes the
// outbox table only), so an existing publication without it is refused.
func EnsurePublication(ctx context.Context, conn *pgx.Conn, name string, table outbox.Table) (bool, error) {
	partitioned, err := IsPartitioned(ctx, conn, table)
	if err != nil {
		return false, err
	}
	var publishesInsert, allTables, viaRoot bool
	err = conn.QueryRow(ctx, "SELECT pubinsert, puballtables, pubviaroot FROM pg_publication WHERE pubname = $1", name).
		Scan(&publishesInsert, &allTables, &viaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		with := "publish = 'insert'"
		if partitioned {
			with += ", publish_via_partition_root = true"
		}
		sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (%s)", outbox.QuoteIdent(name), table.Quoted(), with)
		if _, err := conn.Exec(ctx, sql); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "42501" {
				return false, refuse("create publication %q: %s: an admin must run %s", name, pgErr.Message, sql)
			}
			return false, fmt.Errorf("create publication %q: %w", name, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read publication %q: %w", name, err)
	}
	if !publishesInsert {
		return false, refuse("publication %q does not publish inserts: ALTER PUBLICATION %s SET (publish = 'insert')", name, outbox.QuoteIdent(name))
	}
	if allTables {
		return false, refuse("publication %q is FOR ALL TABLES: the relay needs a publication of the outbox table %s only", name, table)
	}
	if partitioned && !viaRoot {
		return false, refuse("publication %q publishes the partitions of the partitioned table %s under their own names: run ALTER PUBLICATION %s SET (publish_via_partition_root = true)",
			name, table, outbox.QuoteIdent(name))
	}
	rows, err := conn.Query(ctx, "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1", name)
	if err != nil {
		return false, fmt.Errorf("read tables of publication %q: %w", name, err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return false, fmt.Errorf("read tables of publication %q: %w", name, err)
	}
	for _, t := range tables {
		if t != table.String() {
			return false, refuse("publication %q also contains %s: it must contain only the outbox table %s", name, t, table)
		}
	}
	if len(tables) == 0 {
		return false, refuse("publication %q does not contain the outbox table %s: ALTER PUBLICATION %s ADD TABLE %s",
			name, table, outbox.QuoteIdent(name), table.Quoted())
	}
	return false, nil
}

// Slot is a row of pg_replication_slots.
type Slot struct {
	Name              string
	Plugin            string
	Database          string
	Active            bool
	ActivePID         int32 // 0 when inactive
	ConfirmedFlushLSN outbox.LSN
	RestartLSN        outbox.LSN
	WALStatus         string // reserved, extended, unreserved, lost ("" when unknown)
	// SafeWALSize is the WAL that can still be written before the slot is
	// in danger of being lost; nil when max_slot_wal_keep_size is unlimited.
	SafeWALSize *int64
	// RetainedBytes is the WAL the slot keeps: pg_current_wal_lsn() - restart_lsn.
	RetainedBytes *int64
	// LagBytes is the WAL not yet confirmed by the consumer:
	// pg_current_wal_lsn() - confirmed_flush_lsn.
	LagBytes *int64
}

// LookupSlot reads the slot named name; ok is false when it does not exist.
func LookupSlot(ctx context.Context, conn *pgx.Conn, name string) (slot Slot, ok bool, err error) {
	var pid *int32
	var confirmed, restart *string
	err = conn.QueryRow(ctx, `
		SELECT slot_name, coalesce(plugin, ''), coalesce(database, ''), active, active_pid,
		       confirmed_flush_lsn::text, restart_lsn::text, coalesce(wal_status, ''),
		       safe_wal_size, (pg_current_wal_lsn() - restart_lsn)::bigint,
		       (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, name).
		Scan(&slot.Name, &slot.Plugin, &slot.Database, &slot.Active, &pid, &confirmed, &restart, &slot.WALStatus,
			&slot.SafeWALSize, &slot.RetainedBytes, &slot.LagBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return Slot{}, false, nil
	}
	if err != nil {
		return Slot{}, false, fmt.Errorf("read slot %q: %w", name, err)
	}
	if pid != nil {
		slot.ActivePID = *pid
	}
	if confirmed != nil {
		if slot.ConfirmedFlushLSN, err = outbox.ParseLSN(*confirmed); err != nil {
			return Slot{}, false, err
		}
	}
	if restart != nil {
		if slot.RestartLSN, err = outbox.ParseLSN(*restart); err != nil {
			return Slot{}, false, err
		}
	}
	return slot, true, nil
}

// CheckSlot refuses a slot the relay must not stream from: another plugin,
// another database, or a slot whose WAL was removed.
func CheckSlot(ctx context.Context, conn *pgx.Conn, slot Slot) error {
	var database string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&database); err != nil {
		return fmt.Errorf("read current database: %w", err)
	}
	if slot.Plugin != Plugin {
		return refuse("slot %q uses plugin %q, want %q: choose another OUTBOX_RELAY_SLOT or drop the slot", slot.Name, slot.Plugin, Plugin)
	}
	if slot.Database != database {
		return refuse("slot %q belongs to database %q, not %q: choose another OUTBOX_RELAY_SLOT", slot.Name, slot.Database, database)
	}
	if slot.WALStatus == "lost" {
		return refuse("slot %q is lost (the WAL it needs was removed): run `outbox-relay setup --recreate-slot` to replace it", slot.Name)
	}
	return nil
}
