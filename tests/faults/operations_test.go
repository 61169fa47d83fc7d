package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

// brokerUnreachable drops every connection to the broker for 60 s under
// load (every request is answered by closing its connection), then lets
// it answer again: the relay waits, holds its position, and catches up.
func brokerUnreachable(t *testing.T) {
	w := newWorld(t)
	var down atomic.Bool
	w.kafka.Control(func(kmsg.Request) (kmsg.Response, error, bool) {
		w.kafka.KeepControl()
		if down.Load() {
			return nil, errors.New("fault: broker unreachable"), true
		}
		return nil, nil, false
	})
	p := w.startRelay()
	wr := w.startWriter("k", steadyPause)
	w.waitCommits(wr, 200, 30*time.Second)
	down.Store(true)
	time.Sleep(60 * time.Second) // the outage
	down.Store(false)
	w.waitCommits(wr, 200, 30*time.Second)
	wr.stop()
	if p.Exited() {
		w.notef("relay exited during the outage: %s", lastError(p.Output()))
	}
	w.audit(auditOptions{drain: 2 * time.Minute})
}

// Log messages of the relay's leadership, as its operations tests know them.
const (
	msgLeaderAcquired = "leader lock acquired"
	msgStandingBy     = "another instance leads; standing by"
)

// leads reports whether the relay's last leadership log line says it leads.
func leads(p *relaytest.Process) bool {
	out := p.Output()
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var entry struct {
			Message string `json:"message"`
		}
		if !strings.Contains(lines[i], "lead") || json.Unmarshal([]byte(lines[i]), &entry) != nil {
			continue
		}
		switch {
		case entry.Message == msgLeaderAcquired:
			return true
		case entry.Message == msgStandingBy || strings.Contains(entry.Message, "lost"):
			return false
		}
	}
	return false
}

// leaderKillAndFreeze runs three replicas under load, SIGKILLs the leader,
// then SIGSTOPs the new leader for 30 s: each time another replica must
// stream within 10 s, and no two replicas may lead at once (a frozen one
// counts again once it has logged anything after it resumed, or 2 s after
// the resume: until then its last line predates the freeze and says nothing
// of now; a replica that kept leading after it resumed is counted then).
func leaderKillAndFreeze(t *testing.T) {
	w := newWorld(t)
	replicas := make(map[string]*relaytest.Process)
	for _, name := range []string{"replica-a", "replica-b", "replica-c"} {
		env := w.relayEnv("OUTBOX_RELAY_PG_URL="+pg.URL(w.name)+"&application_name="+name, "OUTBOX_RELAY_LEADER_RETRY=500ms")
		replicas[name] = w.spawn(env, "run")
	}
	var frozen sync.Map // name → resumeMark while SIGSTOPped or just resumed
	var overlaps atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			n := 0
			for name, p := range replicas {
				if m, ok := frozen.Load(name); ok && !m.(*resumeMark).over(p) {
					continue
				}
				if !p.Exited() && leads(p) {
					n++
				}
			}
			if n > 1 {
				overlaps.Add(1)
			}
		}
	}()
	holder := w.waitHolder("", 30*time.Second)
	wr := w.startWriter("k", steadyPause)
	w.waitCommits(wr, 200, 30*time.Second)

	replicas[holder].Kill()
	killed := time.Now()
	next := w.waitHolder(holder, 40*time.Second)
	killTakeover := time.Since(killed)
	w.waitCommits(wr, 200, 30*time.Second)

	mark := &resumeMark{}
	frozen.Store(next, mark)
	replicas[next].Signal(syscall.SIGSTOP)
	stopped := time.Now()
	third := ""
	for time.Since(stopped) < 30*time.Second && third == "" {
		if h := w.holder(); h != "" && h != next {
			third = h
		}
		time.Sleep(100 * time.Millisecond) // polling the slot
	}
	freezeTakeover := time.Since(stopped)
	time.Sleep(time.Until(stopped.Add(30 * time.Second))) // the freeze lasts 30 s
	mark.resumed(replicas[next])
	replicas[next].Signal(syscall.SIGCONT)
	time.Sleep(5 * time.Second) // the resumed replica finds out it lost the lock
	w.waitCommits(wr, 200, time.Minute)
	wr.stop()
	close(stop)
	<-sampled

	w.notef("takeover after SIGKILL of %s: %.1fs by %s; after SIGSTOP of %s: %s; samples with two leaders: %d",
		holder, killTakeover.Seconds(), next, next, takeoverText(third, freezeTakeover), overlaps.Load())
	if killTakeover > 10*time.Second {
		t.Errorf("after SIGKILL of the leader %s, %s streamed only after %v, want within 10s", holder, next, killTakeover)
	}
	if third == "" {
		t.Errorf("after SIGSTOP of the leader %s no other replica streamed within 30s, want within 10s", next)
	} else if freezeTakeover > 10*time.Second {
		t.Errorf("after SIGSTOP of the leader %s, %s streamed only after %v, want within 10s", next, third, freezeTakeover)
	}
	if overlaps.Load() > 0 {
		t.Errorf("%d samples saw two replicas leading at once", overlaps.Load())
	}
	w.audit(auditOptions{drain: 2 * time.Minute})
}

// resumeMark tells when a SIGSTOPped replica's log speaks of the present
// again: once it wrote a line after its resume, or 2 s after the resume.
type resumeMark struct {
	mu     sync.Mutex
	at     time.Time // zero while frozen
	logLen int       // the output's length at the resume
}

func (m *resumeMark) resumed(p *relaytest.Process) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.at, m.logLen = time.Now(), len(p.Output())
}

func (m *resumeMark) over(p *relaytest.Process) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.at.IsZero() {
		return false
	}
	return len(p.Output()) > m.logLen || time.Since(m.at) > 2*time.Second
}

func takeoverText(by string, after time.Duration) string {
	if by == "" {
		return "none within 30s"
	}
	return fmt.Sprintf("%.1fs by %s", after.Seconds(), by)
}

// holder is the application_name of the walsender streaming from the slot.
func (w *world) holder() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var name *string
	w.db.QueryRow(ctx, `SELECT r.application_name FROM pg_replication_slots s
		JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1`, w.name).Scan(&name)
	if name == nil {
		return ""
	}
	return *name
}

// waitHolder waits until a replica other than not streams from the slot.
func (w *world) waitHolder(not string, timeout time.Duration) string {
	w.t.Helper()
	var h string
	w.waitFor(timeout, "a replica other than "+not+" to stream", func() (bool, string) {
		h = w.holder()
		return h != "" && h != not, "holder " + h
	})
	return h
}

// badConfiguration starts `run` with one thing wrong at a time: it must
// exit non-zero with an error that names the problem, and write nothing
// (no slot, no publication, no record).
func badConfiguration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	role := objectName(t.Name()) + "_norepl"
	t.Cleanup(func() { dropRole(t, role) }) // after the database is gone
	w := newWorld(t)
	w.exec("CREATE ROLE " + role + " LOGIN")
	w.exec("GRANT SELECT, UPDATE, DELETE ON public.outbox TO " + role)

	replica, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Stop()
	if err := prepareOutbox(ctx, replica.URL("postgres")); err != nil {
		t.Fatal(err)
	}

	saslCluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser("PLAIN", "admin", "right-password"))
	if err != nil {
		t.Fatal(err)
	}
	defer saslCluster.Close()

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	closed.Close()

	noReplURL := strings.Replace(pg.URL(w.name), "postgres@", role+"@", 1)
	cases := []struct {
		name  string
		env   []string
		wants []string // the error names one of these
		pgURL string   // the server to check for written objects
	}{
		{"wal_level replica", []string{"OUTBOX_RELAY_PG_URL=" + replica.URL("postgres")}, []string{"wal_level"}, replica.URL("postgres")},
		{"role without REPLICATION", []string{"OUTBOX_RELAY_PG_URL=" + noReplURL}, []string{"replication"}, ""},
		{"missing table", []string{"OUTBOX_RELAY_TABLE=public.missing_table"}, []string{"missing_table"}, ""},
		{"unreachable broker", []string{"OUTBOX_RELAY_KAFKA_BROKERS=" + deadAddr}, []string{deadAddr, "broker", "kafka"}, ""},
		{"wrong SASL password", []string{"OUTBOX_RELAY_KAFKA_BROKERS=" + strings.Join(saslCluster.ListenAddrs(), ","),
			"OUTBOX_RELAY_KAFKA_SASL_MECHANISM=PLAIN", "OUTBOX_RELAY_KAFKA_SASL_USER=admin", "OUTBOX_RELAY_KAFKA_SASL_PASSWORD=wrong-password"},
			[]string{"sasl", "authentic"}, ""},
	}
	var verdicts []string
	for _, c := range cases {
		code, out, exited := w.tryCommand(w.relayEnv(c.env...), 30*time.Second, "run")
		msg := lastError(out)
		ok := exited && code != 0 && containsAny(strings.ToLower(msg), c.wants)
		switch {
		case !exited:
			t.Errorf("%s: run still runs after 30s, want a non-zero exit; its last line: %s", c.name, lastLine(out))
			code = -1
		case code == 0:
			t.Errorf("%s: run exited 0, want non-zero", c.name)
		case !ok:
			t.Errorf("%s: exit %d, last error %s, want one naming %q", c.name, code, msg, c.wants)
		}
		url := c.pgURL
		if url == "" {
			url = pg.URL(w.name)
		}
		if objs := writtenObjects(ctx, url, w.name); objs != "" {
			t.Errorf("%s: the failed run left %s behind, want nothing written", c.name, objs)
			removeObjects(ctx, url, w.name) // the next case starts clean
		}
		verdicts = append(verdicts, fmt.Sprintf("%s: exited=%v code %d, error %q", c.name, exited, code, errorField(msg)))
	}
	if n := len(w.consumer.snapshot()); n > 0 {
		t.Errorf("%d records written by runs that should have failed", n)
	}
	w.notef("%s", strings.Join(verdicts, ", "))
	w.audit(auditOptions{drain: time.Second, noSlot: true})
}

// lastLine is the last non-empty line of out.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, strings.ToLower(sub)) {
			return true
		}
	}
	return false
}

// prepareOutbox creates the outbox table on another server.
func prepareOutbox(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `CREATE TABLE public.outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
		aggregatetype text NOT NULL, aggregateid text NOT NULL, type text NOT NULL, payload jsonb, headers jsonb,
		topic text, created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz)`)
	return err
}

// writtenObjects names the slot or publication called name on the server
// at url, or returns "".
func writtenObjects(ctx context.Context, url, name string) string {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Sprintf("(cannot check: %v)", err)
	}
	defer conn.Close(ctx)
	var slots, pubs int
	conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&slots)
	conn.QueryRow(ctx, "SELECT count(*) FROM pg_publication WHERE pubname = $1", name).Scan(&pubs)
	var parts []string
	if slots > 0 {
		parts = append(parts, "a slot")
	}
	if pubs > 0 {
		parts = append(parts, "a publication")
	}
	return strings.Join(parts, " and ")
}

// removeObjects drops the slot and publication called name on the server
// at url.
func removeObjects(ctx context.Context, url, name string) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	conn.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", name)
	conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{name}.Sanitize())
}

// errorField is the error field of a JSON log line, or the line.
func errorField(line string) string {
	var entry struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(line), &entry) == nil && entry.Error != "" {
		return entry.Error
	}
	return line
}

func dropRole(t *testing.T, role string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Errorf("drop role %s: %v", role, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+role); err != nil {
		t.Errorf("drop role %s: %v", role, err)
	}
}
