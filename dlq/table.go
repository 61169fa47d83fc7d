package dlq

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/rows"
	"github.com/outbox-relay/outbox-relay/outbox"
	"github.com/outbox-relay/outbox-relay/publisher"
)

// TableListing is the content of the dead-letter table: the rows whose
// dead-letter record could not carry them whole (a stub), kept in Postgres.
type TableListing struct {
	Table    string         `json:"table"`
	Total    int            `json:"total"`
	ByReason map[string]int `json:"by_reason"`
	Newest   []TableEntry   `json:"newest"`
}

// TableEntry is one row of the dead-letter table, without its payload.
type TableEntry struct {
	ID             string    `json:"id"`
	Reason         string    `json:"reason"`
	Error          string    `json:"error"`
	LSN            string    `json:"lsn"`
	DeadLetteredAt time.Time `json:"dead_lettered_at"`
}

// ListTable counts the dead-letter table's rows by reason and returns the
// newest limit of them.
func ListTable(ctx context.Context, conn *pgx.Conn, table outbox.Table, m outbox.Mapping, limit int) (TableListing, error) {
	dead := table.DeadLetterTable()
	l := TableListing{Table: dead.String(), ByReason: map[string]int{}}
	counts, err := conn.Query(ctx, "SELECT reason, count(*) FROM "+dead.Quoted()+" GROUP BY reason")
	if err != nil {
		return l, fmt.Errorf("count dead-letter table %s: %w", dead, err)
	}
	for counts.Next() {
		var reason string
		var n int
		if err := counts.Scan(&reason, &n); err != nil {
			return l, fmt.Errorf("count dead-letter table %s: %w", dead, err)
		}
		l.ByReason[reason] = n
		l.Total += n
	}
	if err := counts.Err(); err != nil {
		return l, fmt.Errorf("count dead-letter table %s: %w", dead, err)
	}
	newest, err := conn.Query(ctx, fmt.Sprintf(`SELECT %s::text, reason, error, coalesce(lsn::text, ''), dead_lettered_at
		FROM %s ORDER BY dead_lettered_at DESC LIMIT $1`, outbox.QuoteIdent(m.ID), dead.Quoted()), limit)
	if err != nil {
		return l, fmt.Errorf("list dead-letter table %s: %w", dead, err)
	}
	for newest.Next() {
		var e TableEntry
		if err := newest.Scan(&e.ID, &e.Reason, &e.Error, &e.LSN, &e.DeadLetteredAt); err != nil {
			return l, fmt.Errorf("list dead-letter table %s: %w", dead, err)
		}
		l.Newest = append(l.Newest, e)
	}
	return l, newest.Err()
}

// TableReplayResult says what ReplayTable did.
type TableReplayResult struct {
	Table string `json:"table"`
	// Replayed counts rows sent to their topics, acked and deleted from the
	// table (in a dry run: that would be sent).
	Replayed int `json:"replayed"`
	// Failed counts rows the producer or the broker refused again (still too
	// large: raise the topic's max.message.bytes); they stay in the table.
	Failed map[string]int `json:"failed"`
}

// tableBatch is how many rows one replay round reads, sends and deletes.
const tableBatch = 100

// ReplayTable sends the rows of the dead-letter table (of reason, or every
// reason when empty; at most limit, 0 for all) to their topics as the relay
// would have, and deletes each row once the broker acked its record. A row
// refused again stays. A row sent whose delete then failed is sent again by
// the next replay: consumers de-duplicate by the id header.
func ReplayTable(ctx context.Context, conn *pgx.Conn, table outbox.Table, m outbox.Mapping, pub *publisher.Publisher, reason string, limit int, dryRun bool) (TableReplayResult, error) {
	dead := table.DeadLetterTable()
	r := TableReplayResult{Table: dead.String(), Failed: map[string]int{}}
	cols, err := rows.Lookup(ctx, conn, dead, m)
	if err != nil {
		return r, err
	}
	id := outbox.QuoteIdent(m.ID)
	// Rows refused in this run are passed over by id, so each is tried once.
	refused := []string{}
	for limit == 0 || r.Replayed+len(refused) < limit {
		n := tableBatch
		if limit > 0 {
			n = min(n, limit-r.Replayed-len(refused))
		}
		query := fmt.Sprintf(`SELECT %s FROM %s WHERE ($1 = '' OR reason = $1) AND NOT (%s::text = ANY($2::text[]))
			ORDER BY dead_lettered_at, %s LIMIT $3`, cols.SelectList(), dead.Quoted(), id, id)
		if dryRun {
			query = fmt.Sprintf(`SELECT %s FROM %s WHERE ($1 = '' OR reason = $1) AND NOT (%s::text = ANY($2::text[]))
				ORDER BY dead_lettered_at, %s OFFSET %d LIMIT $3`, cols.SelectList(), dead.Quoted(), id, id, r.Replayed)
		}
		result, err := conn.Query(ctx, query, reason, refused, n)
		if err != nil {
			return r, fmt.Errorf("read dead-letter table %s: %w", dead, err)
		}
		var events []outbox.Event
		for result.Next() {
			events = append(events, outbox.Event{})
			if _, err := cols.Scan(result, &events[len(events)-1]); err != nil {
				result.Close()
				return r, err
			}
		}
		result.Close()
		if err := result.Err(); err != nil {
			return r, fmt.Errorf("read dead-letter table %s: %w", dead, err)
		}
		if len(events) == 0 {
			return r, nil
		}
		if dryRun {
			r.Replayed += len(events)
			continue
		}
		failures, err := pub.Publish(ctx, events)
		if err != nil {
			return r, fmt.Errorf("replay %d rows of %s: %w", len(events), dead, err)
		}
		failed := map[int]bool{}
		for _, f := range failures {
			failed[f.Index] = true
			r.Failed[f.Reason]++
			refused = append(refused, string(events[f.Index].ID))
		}
		var sent []string
		for i := range events {
			if !failed[i] {
				sent = append(sent, string(events[i].ID))
			}
		}
		if len(sent) > 0 {
			if _, err := conn.Exec(ctx, fmt.Sprintf("DELETE FROM %s WHERE %s::text = ANY($1::text[])", dead.Quoted(), id), sent); err != nil {
				return r, fmt.Errorf("delete %d replayed rows from %s (they were sent; the next replay sends them again): %w", len(sent), dead, err)
			}
		}
		r.Replayed += len(sent)
	}
	return r, nil
}
