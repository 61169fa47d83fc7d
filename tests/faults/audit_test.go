package faults

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
	"github.com/outbox-relay/outbox-relay/outbox"
)

// result is one line of the table make faults prints.
type result struct {
	scenario     string
	committed    int // rows in C
	delivered    int // rows of C in an event topic
	deadLettered int // rows of C only in the dead-letter topic or table
	lost         int // C − (M ∪ D)
	duplicates   int // records beyond the first of each id of C
	strangers    int // ids in M ∪ D that no transaction of the scenario committed
	misordered   int // per-key first occurrences out of commit order
	// maxViolation is how far (bytes of WAL) a sampled confirmed position
	// was past the commit of a row not yet in M ∪ D; violations is the
	// number of such samples.
	maxViolation int64
	violations   int
	samples      int
	failed       bool
	note         string
}

var (
	resultsMu sync.Mutex
	results   []result
)

// auditOptions are what a scenario expects beyond the common invariants.
type auditOptions struct {
	noDuplicates bool          // a run without crashes must send each row once
	drain        time.Duration // how long rows may take to arrive after the load stopped (default 90s)
	noSlot       bool          // no run may create the slot, so there is nothing to sample
}

// audit waits for the scenario's rows to arrive, then checks the invariants
// every scenario shares and records the scenario's line of the table:
//
//   - lost = C − (M ∪ D) is empty, where C holds the rows whose COMMIT
//     returned, M the ids read from the event topics and D those in the
//     dead-letter topic or a dead-letter table;
//   - no id outside C appears (except rows whose COMMIT went unanswered);
//   - each key's first occurrences come in commit order;
//   - no sampled confirmed position passes an unrecorded row: for every
//     sample (confirmed_flush_lsn, then the end offsets), every row whose
//     commit record ends at or before the confirmed position has a record
//     below those end offsets.
func (w *world) audit(opts auditOptions) {
	w.t.Helper()
	res := &w.res
	if opts.drain == 0 {
		opts.drain = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.drain+3*time.Minute)
	defer cancel()
	w.ledger.mu.Lock()
	txns := append([]committedTxn(nil), w.ledger.txns...)
	uncertain := make(map[string]bool, len(w.ledger.uncertain))
	for id := range w.ledger.uncertain {
		uncertain[id] = true
	}
	w.ledger.mu.Unlock()

	// Arrival: every committed id read (or in a dead-letter table), or
	// the drain time is over and what is missing is lost.
	deadline := time.Now().Add(opts.drain)
	var tableIDs map[string]bool
	for {
		tableIDs = deadLetterTableIDs(ctx, w.db)
		missing := 0
		for _, t := range txns {
			for _, id := range t.ids {
				if !w.consumer.has(id) && !tableIDs[id] {
					missing++
				}
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // polling the consumer
	}
	// Confirmation of the end of the WAL means every send, duplicates
	// included, was acked; then read to the end offsets.
	end := w.lsn("SELECT pg_current_wal_lsn()")
	confirmDeadline := time.Now().Add(30 * time.Second)
	for s := w.slot(); s.exists && s.confirmed < end && time.Now().Before(confirmDeadline); s = w.slot() {
		time.Sleep(100 * time.Millisecond) // polling the slot
	}
	w.catchUp(ctx)
	samples := w.sampler.stop()
	records := w.consumer.snapshot()
	commitEnds, err := commitLSNs(ctx, w.db, w.startLSN)
	if err != nil {
		w.t.Fatalf("audit: read commit records: %v", err)
	}

	// M and D, and the first record of each id with its position.
	type position struct {
		tp     devenv.TopicPartition
		offset int64
	}
	first := make(map[string]position)
	inM, inD := make(map[string]bool), make(map[string]bool)
	count := make(map[string]int)
	for _, r := range records {
		id := recordID(r)
		if id == "" {
			continue
		}
		count[id]++
		if r.Topic == "outbox.dlq" {
			inD[id] = true
		} else {
			inM[id] = true
		}
		if _, ok := first[id]; !ok {
			first[id] = position{devenv.TopicPartition{Topic: r.Topic, Partition: r.Partition}, r.Offset}
		}
	}
	for id := range tableIDs {
		inD[id] = true
	}

	inC := make(map[string]bool)
	var lostIDs []string
	for _, t := range txns {
		for _, id := range t.ids {
			inC[id] = true
			res.committed++
			switch {
			case inM[id]:
				res.delivered++
			case inD[id]:
				res.deadLettered++
			default:
				res.lost++
				lostIDs = append(lostIDs, id)
			}
			if count[id] > 1 {
				res.duplicates += count[id] - 1
			}
		}
	}
	var strangers []string
	for id := range count {
		if !inC[id] && !uncertain[id] {
			res.strangers++
			strangers = append(strangers, id)
		}
	}
	res.misordered = checkKeyOrder(records, txns)

	// The confirmed position never passes an unrecorded row.
	res.samples = len(samples)
	var firstViolation string
	unknownLSN := 0
	for _, t := range txns {
		commitEnd, ok := commitEnds[t.xid]
		if !ok {
			unknownLSN++
			continue
		}
		for _, smp := range samples {
			if smp.confirmed < commitEnd {
				continue
			}
			for _, id := range t.ids {
				p, ok := first[id]
				if tableIDs[id] || (ok && p.offset < smp.ends[p.tp]) {
					continue
				}
				res.violations++
				if d := int64(smp.confirmed - commitEnd); d >= res.maxViolation {
					res.maxViolation = d
				}
				if firstViolation == "" {
					firstViolation = fmt.Sprintf("at %s the slot was confirmed at %s, past the commit %s of xid %d, whose row %s had no record yet",
						smp.at.Format("15:04:05.000"), smp.confirmed, commitEnd, t.xid, id)
				}
				break
			}
		}
	}

	var notes []string
	if res.lost > 0 {
		w.t.Errorf("lost %d of %d committed rows (never in an event topic, the dead-letter topic or table), e.g. %v; %s",
			res.lost, res.committed, some(lostIDs, 5), w.describeRows(lostIDs))
		notes = append(notes, fmt.Sprintf("lost e.g. %v", some(lostIDs, 3)))
	}
	if res.strangers > 0 {
		w.t.Errorf("%d records with ids no committed transaction wrote, e.g. %v", res.strangers, some(strangers, 5))
	}
	if res.misordered > 0 {
		w.t.Errorf("%d records overtook an earlier record of their key", res.misordered)
	}
	if res.violations > 0 {
		w.t.Errorf("%d samples of %d saw the confirmed position past an unrecorded row (at most %d bytes); first: %s",
			res.violations, res.samples, res.maxViolation, firstViolation)
		notes = append(notes, firstViolation)
	}
	if unknownLSN > 0 {
		w.t.Errorf("%d committed transactions have no commit record in the WAL read back", unknownLSN)
	}
	if opts.noDuplicates && res.duplicates > 0 {
		w.t.Errorf("%d duplicates, want 0 in a run without crashes", res.duplicates)
	}
	if len(samples) == 0 && !opts.noSlot {
		w.t.Errorf("no sample of the slot's confirmed position was taken")
	}
	w.t.Logf("audit: committed %d, delivered %d, dead-lettered %d, lost %d, duplicates %d, samples %d, violations %d (max %d bytes)",
		res.committed, res.delivered, res.deadLettered, res.lost, res.duplicates, res.samples, res.violations, res.maxViolation)
	for _, n := range notes {
		w.notef("%s", n)
	}
}

// notef adds a remark to the scenario's line of the table.
func (w *world) notef(format string, args ...any) {
	if w.res.note != "" {
		w.res.note += "; "
	}
	w.res.note += fmt.Sprintf(format, args...)
}

// catchUp waits (10 s at most) until the consumer has read every partition
// to its end offset.
func (w *world) catchUp(ctx context.Context) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ends, err := devenv.EndOffsets(ctx, w.brokers(), []string{`^outbox\.`, `^custom\.`, `^missing\.`})
		if err == nil {
			read := make(map[devenv.TopicPartition]int64)
			for _, r := range w.consumer.snapshot() {
				read[devenv.TopicPartition{Topic: r.Topic, Partition: r.Partition}] = r.Offset + 1
			}
			behind := false
			for tp, end := range ends {
				behind = behind || read[tp] < end
			}
			if !behind {
				return
			}
		}
		time.Sleep(100 * time.Millisecond) // polling the consumer
	}
}

// checkKeyOrder counts the records, in the event topics, whose first
// occurrence comes after the first occurrence of a later-committed record of
// the same key. Duplicates may repeat older records (a new delivery
// attempt); a first occurrence out of order is a reordering.
func checkKeyOrder(records []*kgo.Record, txns []committedTxn) int {
	seq := make(map[string]int)
	for _, t := range txns {
		for i, id := range t.ids {
			seq[id] = t.seqs[i]
		}
	}
	seen := make(map[string]bool)
	last := make(map[string]int)
	bad := 0
	for _, r := range records {
		id := recordID(r)
		s, ok := seq[id]
		if !ok || seen[id] || r.Topic == "outbox.dlq" {
			continue
		}
		seen[id] = true
		k := string(r.Key)
		if prev, ok := last[k]; ok && s < prev {
			bad++
			continue
		}
		last[k] = s
	}
	return bad
}

// commitLSNs maps the xid of every commit record since from to the end LSN
// of that record: the position a relay confirms once the transaction is
// delivered. pg_walinspect reads it from the WAL itself, so it is exact,
// unlike pg_current_wal_insert_lsn() after COMMIT (which other sessions'
// WAL moves on).
func commitLSNs(ctx context.Context, conn *pgx.Conn, from outbox.LSN) (map[uint32]outbox.LSN, error) {
	rows, err := conn.Query(ctx, `SELECT xid::text::bigint, end_lsn::text
		FROM pg_get_wal_records_info($1::pg_lsn, pg_current_wal_flush_lsn())
		WHERE resource_manager = 'Transaction' AND record_type LIKE 'COMMIT%'`, from.String())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	ends := make(map[uint32]outbox.LSN)
	for rows.Next() {
		var xid int64
		var end string
		if err := rows.Scan(&xid, &end); err != nil {
			return nil, err
		}
		lsn, err := outbox.ParseLSN(end)
		if err != nil {
			return nil, err
		}
		ends[uint32(xid)] = lsn
	}
	return ends, rows.Err()
}

// deadLetterTableIDs is the pluggable second source of D: the ids in any
// table of the outbox's schema whose name says it holds dead letters
// (outbox_dead_letter, outbox_dlq, …) and that has an id column. None
// exists yet; a relay that keeps undeliverable rows in Postgres is audited
// without a change here.
func deadLetterTableIDs(ctx context.Context, conn *pgx.Conn) map[string]bool {
	ids := make(map[string]bool)
	rows, err := conn.Query(ctx, `SELECT quote_ident(c.table_schema) || '.' || quote_ident(c.table_name)
		FROM information_schema.columns c
		WHERE c.table_schema = 'public' AND c.column_name = 'id'
		  AND (c.table_name LIKE '%dead%letter%' OR c.table_name LIKE '%dlq%')`)
	if err != nil {
		return ids
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return ids
	}
	for _, table := range tables {
		rows, err := conn.Query(ctx, "SELECT id::text FROM "+table)
		if err != nil {
			continue
		}
		got, _ := pgx.CollectRows(rows, pgx.RowTo[string])
		for _, id := range got {
			ids[id] = true
		}
	}
	return ids
}

// describeRows says, for failure messages, which of ids are still in the
// outbox table.
func (w *world) describeRows(ids []string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int
	if err := w.db.QueryRow(ctx, "SELECT count(*) FROM public.outbox WHERE id::text = ANY($1)", ids).Scan(&n); err != nil {
		return fmt.Sprintf("(outbox not readable: %v)", err)
	}
	return fmt.Sprintf("%d of them still in the outbox table", n)
}

func some(ids []string, n int) []string {
	sort.Strings(ids)
	if len(ids) > n {
		return append(ids[:n:n], "…")
	}
	return ids
}

// printTable prints the results of the scenarios that ran.
func printTable(out io.Writer) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if len(results) == 0 {
		return
	}
	fmt.Fprintln(out, "\nfault scenarios:")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tcommitted\tdelivered\tdead-lettered\tlost\tduplicates\tmax confirmed-position violation (bytes)\tresult")
	for _, r := range results {
		verdict := "ok"
		if r.failed {
			verdict = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", r.scenario,
			r.committed, r.delivered, r.deadLettered, r.lost, r.duplicates, r.maxViolation, verdict)
	}
	tw.Flush()
	for _, r := range results {
		if r.note != "" {
			fmt.Fprintf(out, "%s: %s\n", r.scenario, r.note)
		}
	}
}
