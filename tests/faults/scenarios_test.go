package faults

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// scenario is one fault and how the suite runs it; short ones also run in
// make test (shortened).
type scenario struct {
	name  string
	short bool
	run   func(t *testing.T)
}

var scenarios = []scenario{
	{"01_soak", true, soak},
	{"02_sigkill", true, sigkill},
	{"03_sigterm_restart", true, sigtermRestart},
	{"04_broker_unreachable", false, brokerUnreachable},
	{"05_retriable_produce_errors", true, retriableProduceErrors},
	{"06_lost_produce_responses", true, lostProduceResponses},
	{"07_postgres_crash", false, postgresCrash},
	{"08_walsender_frozen", false, walsenderFrozen},
	{"09_idle_other_database_busy", false, idleOtherDatabaseBusy},
	{"10_slot_dropped", false, slotDropped},
	{"11_bad_rows", false, badRows},
	{"12_large_transaction", false, largeTransaction},
	{"13_schema_and_publication_changes", false, schemaAndPublicationChanges},
	{"14_leader_kill_and_freeze", false, leaderKillAndFreeze},
	{"15_bad_configuration", false, badConfiguration},
}

// TestFaults runs the scenarios one at a time (some restart the shared
// server) and audits each; TestMain prints the table.
func TestFaults(t *testing.T) {
	for _, sc := range scenarios {
		if !fullSuite && !sc.short {
			continue
		}
		t.Run(sc.name, sc.run)
	}
}

// steadyPause is the writer's pause between transactions: a few hundred
// rows a second on this machine, with room for the relay and Postgres.
const steadyPause = 3 * time.Millisecond

// soak runs a steady load for the soak length against a broker that takes
// 5 ms to ack (so that records are in flight when the slot is sampled):
// nothing lost, no duplicate.
func soak(t *testing.T) {
	w := newWorld(t)
	w.kafka.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		w.kafka.KeepControl()
		w.kafka.SleepControl(func() { time.Sleep(5 * time.Millisecond) })
		return nil, nil, false
	})
	w.startRelay()
	wr := w.startWriter("k", steadyPause)
	time.Sleep(soakLength()) // the load runs
	wr.stop()
	w.audit(auditOptions{noDuplicates: true})
}

// sigkill kills the relay at random moments under load and restarts it.
func sigkill(t *testing.T) {
	w := newWorld(t)
	p := w.startRelay()
	wr := w.startWriter("k", steadyPause)
	for range killCount() {
		w.waitCommits(wr, 30, 30*time.Second)
		time.Sleep(rand.N(1500 * time.Millisecond)) // a random moment, not synchronisation
		p.Kill()
		p = w.startRelay()
	}
	w.waitCommits(wr, 30, 30*time.Second)
	wr.stop()
	w.audit(auditOptions{})
	w.notef("%d kills", killCount())
}

// sigtermRestart stops the relay with SIGTERM under load and starts it
// again: a graceful stop confirms what it delivered, so nothing is sent
// twice.
func sigtermRestart(t *testing.T) {
	w := newWorld(t)
	p := w.startRelay()
	wr := w.startWriter("k", steadyPause)
	restarts := 5
	if !fullSuite {
		restarts = 2
	}
	for range restarts {
		w.waitCommits(wr, 50, 30*time.Second)
		if code := w.terminate(p); code != 0 {
			t.Errorf("%s exited with %d after SIGTERM, want 0:\n%s", p.Name, code, p.Tail(20))
		}
		p = w.startRelay()
	}
	w.waitCommits(wr, 50, 30*time.Second)
	wr.stop()
	w.audit(auditOptions{noDuplicates: true})
}

// produceFaults answers 5% of produce requests with err.
func produceFaults(c *kfake.Cluster, err *kerr.Error) *kfake.FaultHandle {
	return c.Fault(kfake.Fault{
		Keys:  []kmsg.Key{kmsg.Produce},
		Err:   err,
		Count: -1,
		When:  func(kmsg.Request) bool { return rand.N(100) < 5 },
	})
}

// retriableProduceErrors rejects 5% of produce requests with NOT_LEADER
// (nothing written) and 5% with NOT_ENOUGH_REPLICAS.
func retriableProduceErrors(t *testing.T) {
	w := newWorld(t)
	h1 := produceFaults(w.kafka, kerr.NotLeaderForPartition)
	h2 := produceFaults(w.kafka, kerr.NotEnoughReplicas)
	w.startRelay()
	wr := w.startWriter("k", steadyPause)
	time.Sleep(soakLength() / 2) // the load runs under the faults
	wr.stop()
	w.audit(auditOptions{})
	w.notef("%d produce requests faulted", h1.Hits()+h2.Hits())
	if h1.Hits()+h2.Hits() == 0 {
		t.Errorf("no produce request was faulted: the scenario tested nothing")
	}
}

// lostProduceResponses answers 5% of produce requests with
// REQUEST_TIMED_OUT after writing them (kfake applies the write, as a
// broker whose answer was lost has): the relay must re-send, not skip.
func lostProduceResponses(t *testing.T) {
	w := newWorld(t)
	h := produceFaults(w.kafka, kerr.RequestTimedOut)
	w.startRelay()
	wr := w.startWriter("k", steadyPause)
	time.Sleep(soakLength() / 2) // the load runs under the faults
	wr.stop()
	w.audit(auditOptions{})
	w.notef("%d produce responses lost", h.Hits())
	if h.Hits() == 0 {
		t.Errorf("no produce response was lost: the scenario tested nothing")
	}
}
