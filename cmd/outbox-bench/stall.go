package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// stallAfter is how long a relay may neither publish nor move its slot's
// confirmed position, with rows still to drain, before the run is called
// stalled. A healthy relay moves both many times a second.
const stallAfter = 30 * time.Second

// maxStallRetries bounds how many stalled runs a scenario repeats.
const maxStallRetries = 2

// stallError reports a run whose relay stopped making progress. The
// diagnostics (relay metrics, the walsender's state, socket queues, server
// log, the relay's goroutine stacks) are in Diagnostics and the files named.
type stallError struct {
	Run         string
	Diagnostics string // file with the relay's and the server's state
	RelayLog    string // the relay's log, ending with its goroutine stacks
	Summary     string
}

func (e *stallError) Error() string {
	return fmt.Sprintf("%s: relay stalled: %s (diagnostics in %s, goroutine stacks in %s)", e.Run, e.Summary, e.Diagnostics, e.RelayLog)
}

// progressWatch tells when the observed state last changed.
type progressWatch struct {
	state string
	since time.Time
}

// stalled records the current state and reports whether it has not changed
// for stallAfter.
func (p *progressWatch) stalled(state string) bool {
	now := time.Now()
	if state != p.state || p.since.IsZero() {
		p.state, p.since = state, now
		return false
	}
	return now.Sub(p.since) > stallAfter
}

// stallDiagnose saves what is known about a stalled relay, ends it with its
// goroutine stacks in its log, and returns the error describing it.
func (b *bench) stallDiagnose(ctx context.Context, db *database, relay *relayProcess, prof *cpuProfiler, endLSN string) error {
	var confirmed string
	db.conn.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slotName).Scan(&confirmed)
	metrics := relay.stuckReport(ctx)
	server := b.serverSide(ctx, db, slotName)
	if prof != nil {
		prof.finish(ctx) // a profile of the stall shows whether the relay spins
	}
	relay.dumpStacks()
	e := &stallError{
		Run:         db.name,
		Diagnostics: filepath.Join(b.o.outDir, "logs", db.name+"-stall.txt"),
		RelayLog:    relay.log.Name(),
		Summary: fmt.Sprintf("no progress for %s; slot confirmed %s of %s; %s",
			stallAfter, confirmed, endLSN, metrics),
	}
	body := strings.Join([]string{e.Summary, server}, "\n")
	if err := os.WriteFile(e.Diagnostics, []byte(body+"\n"), 0o644); err != nil {
		e.Diagnostics = "(not saved: " + err.Error() + ")"
	}
	b.logf("%s", e.Error())
	return e
}
