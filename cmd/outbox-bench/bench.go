package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// pgSettings are the cluster settings on top of devenv's defaults (fsync off,
// wal_level logical). synchronous_commit on: the walsender sends only
// flushed WAL, so "off" would add up to wal_writer_delay (200 ms) to every
// commit's latency. max_wal_size keeps checkpoints out of the timed runs.
var pgSettings = map[string]string{
	"synchronous_commit": "on",
	"max_wal_size":       "'8GB'",
	"checkpoint_timeout": "'30min'",
}

// The names every scenario uses: the relay's defaults.
const (
	slotName        = "outbox_relay"
	publicationName = "outbox_relay"
	aggregateType   = "bench"
	topicName       = "outbox.event." + aggregateType
)

// bench holds what the scenarios share: the cluster and the options.
type bench struct {
	o      options
	pg     *devenv.Postgres
	broker broker
	pgBin  string
	dbSeq  int
	start  time.Time
	note   string // filler of the generated payloads
}

func newBench(ctx context.Context, o options) (*bench, error) {
	pgBin, err := devenv.FindServerBinaries()
	if err != nil {
		return nil, err
	}
	b := &bench{o: o, pgBin: pgBin, start: time.Now()}
	b.logf("starting a throw-away Postgres from %s", pgBin)
	pg, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{BinDir: pgBin, Settings: pgSettings})
	if err != nil {
		return nil, err
	}
	b.pg = pg
	// The payload's filler: hex, so the jsonb is about payloadBytes long.
	var sb strings.Builder
	for sb.Len() < o.payloadBytes-90 {
		fmt.Fprintf(&sb, "%08x", uint32(sb.Len())*2654435761)
	}
	b.note = sb.String()[:o.payloadBytes-90]
	switch o.kafka {
	case "kfake":
		b.broker = kfakeBroker{}
	case "apache":
		a, err := startApacheBroker(ctx, b)
		if err != nil {
			b.close()
			return nil, fmt.Errorf("-kafka apache: %w (-kafka kfake, or make bench KAFKA=kfake, needs neither java nor mvn)", err)
		}
		b.broker = a
	}
	return b, nil
}

func (b *bench) close() {
	if b.broker != nil {
		b.broker.close()
	}
	if b.pg != nil {
		b.pg.Stop()
	}
}

// logf prints progress to stderr; stdout carries only the results.
func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

// database is one scenario's fresh database: its own table, publication,
// slot and WAL position, dropped when the scenario ends.
type database struct {
	name string
	url  string
	conn *pgx.Conn // for the benchmark's own queries
}

// freshDatabase creates a database and runs `outbox-relay setup` in it with
// ackMode, which creates the outbox table, the publication and (the table
// being empty) the slot.
func (b *bench) freshDatabase(ctx context.Context, label, ackMode string) (*database, error) {
	b.dbSeq++
	name := fmt.Sprintf("bench_%02d_%s", b.dbSeq, label)
	if err := b.pg.CreateDatabase(ctx, name); err != nil {
		return nil, err
	}
	db := &database{name: name, url: b.pg.URL(name)}
	setup := exec.CommandContext(ctx, b.o.relayBin, "setup")
	setup.Env = relayEnv(map[string]string{"PG_URL": db.url, "ACK_MODE": ackMode})
	out, err := setup.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("outbox-relay setup in %s: %w\n%s", name, err, out)
	}
	if !strings.Contains(string(out), "slot "+slotName+": created") {
		return nil, fmt.Errorf("outbox-relay setup in %s did not create the slot:\n%s", name, out)
	}
	if db.conn, err = pgx.Connect(ctx, db.url); err != nil {
		return nil, err
	}
	return db, nil
}

// drop removes the database and its slots, so that no slot pins WAL for the
// scenarios that follow.
func (b *bench) drop(db *database) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db.conn.Close(ctx)
	conn, err := pgx.Connect(ctx, b.pg.URL("postgres"))
	if err != nil {
		b.logf("drop %s: %v", db.name, err)
		return
	}
	defer conn.Close(ctx)
	// A walsender may take a moment to exit after its client did.
	for range 50 {
		if _, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
			WHERE database = $1 AND NOT active`, db.name); err != nil {
			break
		}
		var left int
		conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE database = $1", db.name).Scan(&left)
		if left == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err = conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{db.name}.Sanitize()+" WITH (FORCE)"); err != nil {
		b.logf("drop %s: %v", db.name, err)
	}
	conn.Exec(ctx, "CHECKPOINT") // recycle the WAL the dropped slots pinned
}

// serverSide describes the walsender of slot and the end of the server log,
// for the error of a relay that stopped making progress: was the server
// still sending?
func (b *bench) serverSide(ctx context.Context, db *database, slot string) string {
	var out strings.Builder
	rows, err := db.conn.Query(ctx, `SELECT r.pid, r.state, r.sent_lsn::text, r.write_lsn::text, r.flush_lsn::text,
		coalesce(a.wait_event_type, '') || ':' || coalesce(a.wait_event, ''), coalesce(r.reply_time::text, '')
		FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
		JOIN pg_stat_activity a ON a.pid = r.pid WHERE s.slot_name = $1`, slot)
	if err == nil {
		for rows.Next() {
			var pid int32
			var state, sent, write, flush, wait, reply string
			if rows.Scan(&pid, &state, &sent, &write, &flush, &wait, &reply) == nil {
				wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", pid))
				fmt.Fprintf(&out, "walsender pid %d: state %s, sent %s, write %s, flush %s, wait %s, wchan %s, last reply %s, cpu %.1fs\n",
					pid, state, sent, write, flush, wait, wchan, reply, processCPU(int(pid)))
			}
		}
		rows.Close()
	}
	// Socket queues of the connections to the server: bytes a side has not
	// read yet show in its Recv-Q.
	port := strconv.Itoa(b.pg.Port())
	if ss, err := exec.CommandContext(ctx, "ss", "-tnpi", "( sport = :"+port+" or dport = :"+port+" )").CombinedOutput(); err == nil {
		fmt.Fprintf(&out, "sockets (ss -tnpi):\n%s", ss)
	}
	fmt.Fprintf(&out, "server log:\n%s", b.pg.LogTail(30))
	return out.String()
}

// walLSN returns pg_current_wal_lsn() as text.
func (db *database) walLSN(ctx context.Context) (string, error) {
	var lsn string
	err := db.conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn)
	return lsn, err
}

// slotState is what the benchmark follows of a slot while it drains.
type slotState struct {
	reachedEnd bool   // confirmed_flush_lsn >= the end LSN asked about
	confirmed  string // confirmed_flush_lsn
	activePID  int    // the walsender's pid, 0 when none streams the slot
}

// slotState reads the state of slot against endLSN.
func (db *database) slotState(ctx context.Context, slot, endLSN string) (slotState, error) {
	var st slotState
	var pid *int32
	var confirmed *string
	err := db.conn.QueryRow(ctx, `SELECT coalesce(confirmed_flush_lsn >= $2::pg_lsn, false), confirmed_flush_lsn::text, active_pid
		FROM pg_replication_slots WHERE slot_name = $1`, slot, endLSN).Scan(&st.reachedEnd, &confirmed, &pid)
	if pid != nil {
		st.activePID = int(*pid)
	}
	if confirmed != nil {
		st.confirmed = *confirmed
	}
	return st, err
}

// slotLag is pg_current_wal_lsn() - confirmed_flush_lsn of the slot, in bytes.
func (db *database) slotLag(ctx context.Context, slot string) (int64, error) {
	var lag int64
	err := db.conn.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&lag)
	return lag, err
}

// payloadSQL builds a jsonb payload of about payloadBytes from the integer
// expression seq, server side.
func (b *bench) payloadSQL(seq string) string {
	seq = "((" + seq + ")::bigint)"
	return fmt.Sprintf(`jsonb_build_object('seq', %[1]s, 'customer', 'customer-' || ((%[1]s) * 7919 %% 100000),
		'amount', ((%[1]s) %% 10000) / 100.0, 'currency', 'EUR',
		'note', left(repeat(md5((%[1]s)::text), %[2]d), %[3]d))`, seq, len(b.note)/32+1, len(b.note))
}

// fillBacklog inserts rows in transactions of txnRows from two connections,
// generating the rows server side, and returns the WAL position after them
// and the average payload size.
func (b *bench) fillBacklog(ctx context.Context, db *database, rows, txnRows int) (endLSN string, payload float64, err error) {
	const writers = 2
	insert := fmt.Sprintf(`INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
		SELECT '%s', (($1::bigint + g) %% 1000)::text, 'bench.created', %s
		FROM generate_series(1, $2::int) g`, aggregateType, b.payloadSQL("$1::bigint + g"))
	txns := (rows + txnRows - 1) / txnRows
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			conn, err := pgx.Connect(ctx, db.url)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.WithoutCancel(ctx))
			for t := w; t < txns; t += writers {
				n := min(txnRows, rows-t*txnRows)
				if _, err := conn.Exec(ctx, insert, int64(t*txnRows), n); err != nil {
					errs <- fmt.Errorf("insert backlog: %w", err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return "", 0, err
	}
	if err := db.conn.QueryRow(ctx, "SELECT avg(octet_length(payload::text)) FROM outbox").Scan(&payload); err != nil {
		return "", 0, err
	}
	endLSN, err = db.walLSN(ctx)
	return endLSN, payload, err
}

// relayEnv is our environment without OUTBOX_RELAY_* variables, plus vars
// (names without the prefix).
func relayEnv(vars map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OUTBOX_RELAY_") {
			env = append(env, kv)
		}
	}
	for k, v := range vars {
		env = append(env, "OUTBOX_RELAY_"+k+"="+v)
	}
	return env
}

// recvlogicalPath finds pg_recvlogical next to the server binaries or in /usr/bin.
func (b *bench) recvlogicalPath() (string, error) {
	for _, dir := range []string{b.pgBin, "/usr/bin"} {
		p := filepath.Join(dir, "pg_recvlogical")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("pg_recvlogical not found in %s or /usr/bin", b.pgBin)
}
