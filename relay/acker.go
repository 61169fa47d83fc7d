package relay

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// tableAcker deletes or marks delivered rows with one statement per batch.
type tableAcker struct {
	conn    *pgx.Conn
	sql     string
	log     zerolog.Logger
	missing prometheus.Counter
}

func newTableAcker(conn *pgx.Conn, table outbox.Table, m outbox.Mapping, idType string, mode outbox.AckMode, log zerolog.Logger, missing prometheus.Counter) *tableAcker {
	// The ids travel as text[] (pgx encodes []string to it directly; asking
	// for uuid[] made it try and fail a binary encoding per call) and are cast
	// to the id column's own type so the primary key index is used.
	ids := fmt.Sprintf("%s = ANY($1::text[]::%s[])", outbox.QuoteIdent(m.ID), strings.TrimSuffix(idType, "[]"))
	sql := fmt.Sprintf("DELETE FROM %s WHERE %s", table.Quoted(), ids)
	if mode == outbox.AckMark {
		published := outbox.QuoteIdent(m.PublishedAt)
		sql = fmt.Sprintf("UPDATE %s SET %s = now() WHERE %s AND %s IS NULL", table.Quoted(), published, ids, published)
	}
	return &tableAcker{conn: conn, sql: sql, log: log, missing: missing}
}

// ackVisibilityWait bounds how long Ack waits for rows it could not find.
// The walsender may send a transaction a moment before its commit is visible
// to other sessions (the commit record is flushed before the committing
// backend leaves the proc array), so a delete right after the Kafka ack can
// miss a row that is about to appear. Ack retries the statement until every
// row matched or this much time passed; a row still missing then was deleted
// or marked before (a transaction re-sent after a restart).
const ackVisibilityWait = 2 * time.Second

func (a *tableAcker) Ack(ctx context.Context, ids []string) error {
	matched := int64(0)
	delay := time.Millisecond
	deadline := time.Now().Add(ackVisibilityWait)
	for {
		tag, err := a.conn.Exec(ctx, a.sql, ids)
		if err != nil {
			return fmt.Errorf("record delivery of %d rows: %w", len(ids), err)
		}
		matched += tag.RowsAffected()
		if matched >= int64(len(ids)) {
			return nil
		}
		if time.Now().Add(delay).After(deadline) {
			missing := int64(len(ids)) - matched
			a.missing.Add(float64(missing))
			a.log.Debug().Int64("rows", missing).Msg("delivered rows already deleted or marked (re-sent after a restart?)")
			return nil
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
		delay *= 2
	}
}
