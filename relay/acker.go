package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/replication"
)

// tableAcker deletes or marks delivered rows with one statement per batch.
type tableAcker struct {
	conn    *pgx.Conn
	sql     string
	keepSQL string // sql that also keeps rows in the dead-letter table ($3..$6)
	// keyedSQL is sql narrowed to the partitions that can hold the rows by
	// their partition key values ($3); "" when the table has no one-column
	// partition key.
	keyedSQL string
	// uuids, when the id column is uuid, holds the ids of the current call
	// in binary form: $1 is then uuid[], which spares the database a text to
	// uuid conversion per row (0.5 of the 3 µs of backend CPU a deleted row
	// costs, measured on this machine).
	uuids   []pgtype.UUID
	isUUID  bool
	log     zerolog.Logger
	missing prometheus.Counter
}

// newTableAcker builds the statements that record deliveries in table.
// partitionKey is the column a partitioned table is partitioned by (the zero
// Column for any other table).
func newTableAcker(conn *pgx.Conn, table outbox.Table, m outbox.Mapping, idType string, partitionKey replication.Column, mode outbox.AckMode, log zerolog.Logger, missing prometheus.Counter) *tableAcker {
	// The ids travel as text[] (pgx encodes []string to it directly) and are
	// cast to the id column's own type so the primary key index is used; a
	// uuid id travels as uuid[] in binary, parsed here (see uuids).
	idType = strings.TrimSuffix(idType, "[]")
	isUUID := idType == "uuid"
	param := "$1::text[]::" + idType + "[]"
	if isUUID {
		param = "$1::uuid[]"
	}
	ids := fmt.Sprintf("%s = ANY(%s)", outbox.QuoteIdent(m.ID), param)
	recordWhere := func(where string) string {
		if mode == outbox.AckMark {
			published := outbox.QuoteIdent(m.PublishedAt)
			return fmt.Sprintf("UPDATE %s SET %s = now() WHERE %s AND %s IS NULL", table.Quoted(), published, where, published)
		}
		return fmt.Sprintf("DELETE FROM %s WHERE %s", table.Quoted(), where)
	}
	record := recordWhere(ids)
	unrecorded := "true"
	if mode == outbox.AckMark {
		unrecorded = "o." + outbox.QuoteIdent(m.PublishedAt) + " IS NULL"
	}
	// Every part of one statement sees the same snapshot: the INSERT reads
	// the rows the DELETE removes, and both commit or neither. The row is
	// copied by column name (jsonb_populate_record), so the dead-letter
	// table needs no column list kept in step with the outbox; the id index
	// on the dead-letter table makes a re-sent row a no-op.
	dead := table.DeadLetterTable().Quoted()
	keep := fmt.Sprintf(`kept AS (INSERT INTO %s
		SELECT (jsonb_populate_record(NULL::%s, to_jsonb(o) || jsonb_build_object('reason', k.reason, 'error', k.error, 'lsn', NULLIF(k.lsn, ''), 'dead_lettered_at', now()))).*
		FROM %s o JOIN unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS k(id, reason, error, lsn) ON o.%s = k.id::%s
		WHERE %s
		ON CONFLICT DO NOTHING), `, dead, dead, table.Quoted(), outbox.QuoteIdent(m.ID), idType, unrecorded)
	// One statement, so one snapshot, both records the rows and counts the
	// transactions ($2, 32-bit xids) that snapshot does not see as completed
	// yet. pg_visible_in_snapshot asks the snapshot itself (the proc array),
	// not the commit log: under synchronous replication a commit is in the
	// commit log while the committing backend still waits for the standby
	// and its rows are invisible to everyone else. A 32-bit xid is placed by
	// its distance from the snapshot's xmin, modulo 2^32 as Postgres compares
	// xids: a transaction still running is at or after xmin, one before it
	// has completed.
	tail := ` RETURNING 1),
		snap AS (SELECT pg_current_snapshot() AS s, pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin),
		placed AS (SELECT s, xmin, (((x - (xmin & 4294967295) + 2147483648) % 4294967296 + 4294967296) % 4294967296) - 2147483648 AS after_xmin
			FROM snap, unnest($2::bigint[]) AS x)
		SELECT (SELECT count(*) FROM recorded),
			(SELECT count(*) FROM placed WHERE after_xmin >= 0 AND NOT pg_visible_in_snapshot((xmin + after_xmin)::text::xid8, s))`
	sql := `recorded AS (` + record + tail
	a := &tableAcker{conn: conn, sql: "WITH " + sql, keepSQL: "WITH " + keep + sql, isUUID: isUUID, log: log, missing: missing}
	// On a partitioned table the ids alone prune no partition: every
	// partition's primary key would be probed for every id, which costs
	// little in a drained partition but grows with each one holding rows (a
	// backlog, mark mode's history). The rows' partition key values let
	// Postgres look only in the partitions that can hold them. They travel
	// as text, read by the column type's own input function ($3 is of the
	// column's type, not text cast to it: a cast is not a constant the
	// planner may prune by).
	if partitionKey.Name != "" {
		keyed := fmt.Sprintf("%s AND %s = ANY($3::%s[])", ids, outbox.QuoteIdent(partitionKey.Name), strings.TrimSuffix(partitionKey.Type, "[]"))
		a.keyedSQL = "WITH recorded AS (" + recordWhere(keyed) + tail
	}
	return a
}

// idsParam returns ids as the statement's $1: text as they are, or, for a
// uuid id column, parsed into the acker's reused uuid buffer.
func (a *tableAcker) idsParam(ids []string) (any, error) {
	if !a.isUUID {
		return ids, nil
	}
	a.uuids = a.uuids[:0]
	for _, id := range ids {
		u, ok := parseUUID(id)
		if !ok {
			return nil, fmt.Errorf("id %q is not a uuid", id)
		}
		a.uuids = append(a.uuids, pgtype.UUID{Bytes: u, Valid: true})
	}
	return a.uuids, nil
}

// parseUUID parses the text form Postgres prints for a uuid (32 hex digits,
// hyphens anywhere between pairs, as uuid_in accepts them) without allocating.
func parseUUID(s string) (u [16]byte, ok bool) {
	n := 0
	for i := 0; i < len(s); {
		if s[i] == '-' {
			i++
			continue
		}
		if n == 16 || i+1 >= len(s) {
			return u, false
		}
		hi, ok1 := unhex(s[i])
		lo, ok2 := unhex(s[i+1])
		if !ok1 || !ok2 {
			return u, false
		}
		u[n] = hi<<4 | lo
		n++
		i += 2
	}
	return u, n == 16
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// maxVisibilityPoll is the longest pause between two tries of a batch whose
// transaction is still in progress.
const maxVisibilityPoll = 100 * time.Millisecond

// Ack deletes or marks the rows of ids, delivered from the transactions
// xids (their pgoutput Begin xids; none for rows read from a snapshot,
// which are committed). The walsender may send a transaction before its
// commit is visible to other sessions (the commit record is flushed before
// the committing backend leaves the proc array, and under synchronous
// replication it stays in it until the standby confirmed), so a row not
// found may be one about to appear. Ack decides by the transactions: while
// one is still in progress it tries again, for as long as that takes; once
// all completed, a row still missing is gone for good (deleted or marked
// before: a transaction re-sent after a restart, a second slot, an
// application that deletes its own row) and is counted, not waited for.
//
// The rows of kept are copied (ACK_MODE mark) or moved (delete) into the
// dead-letter table by the same statement that records them.
//
// keys, when not nil, are the rows' partition key values (keys[i] of
// ids[i]): the statement then looks only in the partitions that can hold
// them. A row it does not find once every transaction completed is looked
// for once more by id alone before it counts as missing, so a key whose text
// does not find its row costs time, never a row left unrecorded.
func (a *tableAcker) Ack(ctx context.Context, ids, keys []string, xids []uint32, kept []outbox.KeptRow) error {
	wide := make([]int64, len(xids))
	for i, x := range xids {
		wide[i] = int64(x)
	}
	matched := int64(0)
	delay := time.Millisecond
	started := time.Now()
	warned := false
	keyed := a.keyedSQL != "" && keys != nil && len(kept) == 0
	idsParam, err := a.idsParam(ids)
	if err != nil {
		return fmt.Errorf("record delivery of %d rows: %w", len(ids), err)
	}
	for {
		var recorded, inProgress int64
		var err error
		switch {
		case keyed:
			// Planned for each batch with its keys as constants: only then
			// does Postgres 15 prune the partitions of a DELETE or UPDATE
			// (a cached generic plan searched them all, at 2.3 times the
			// cost of planning every time).
			err = a.conn.QueryRow(ctx, a.keyedSQL, pgx.QueryExecModeDescribeExec, idsParam, wide, keys).Scan(&recorded, &inProgress)
		case len(kept) == 0:
			err = a.conn.QueryRow(ctx, a.sql, idsParam, wide).Scan(&recorded, &inProgress)
		default:
			keptIDs, reasons, errs, lsns := make([]string, len(kept)), make([]string, len(kept)), make([]string, len(kept)), make([]string, len(kept))
			for i, k := range kept {
				keptIDs[i], reasons[i], errs[i], lsns[i] = k.ID, k.Reason, k.Error, k.LSN
			}
			err = a.conn.QueryRow(ctx, a.keepSQL, idsParam, wide, keptIDs, reasons, errs, lsns).Scan(&recorded, &inProgress)
		}
		var pgErr *pgconn.PgError
		if keyed && errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22") {
			// A key whose text does not read back as its column's type
			// (a DateStyle that differs between the sessions?): the ids
			// alone are slower but always right.
			a.log.Warn().Str("sqlstate", pgErr.Code).Str("error", pgErr.Message).
				Msg("the partition key values of delivered rows do not read back; recording deliveries by id alone from now on")
			a.keyedSQL, keyed = "", false
			continue
		}
		if err != nil {
			return fmt.Errorf("record delivery of %d rows (%d kept in the dead-letter table): %w", len(ids), len(kept), err)
		}
		matched += recorded
		if matched >= int64(len(ids)) {
			return nil
		}
		if inProgress == 0 && keyed {
			keyed = false // by id alone, once
			continue
		}
		if inProgress == 0 {
			missing := int64(len(ids)) - matched
			a.missing.Add(float64(missing))
			a.log.Debug().Int64("rows", missing).Msg("delivered rows already deleted or marked (re-sent after a restart, or removed by their own transaction)")
			return nil
		}
		if waited := time.Since(started); waited > 5*time.Second && !warned {
			warned = true
			a.log.Warn().Int64("transactions", inProgress).Int64("rows", int64(len(ids))-matched).Dur("waited", waited).
				Uints32("xids", xids).Msg("delivered rows are not visible yet: their transaction is still committing (a synchronous standby?); waiting for it")
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
		delay = min(delay*2, maxVisibilityPoll)
	}
}
