// Package faults is the fault suite: the relay binary runs as a subprocess
// against a real Postgres cluster and a Kafka-protocol broker, a scenario
// commits rows while it injects one kind of fault, and every scenario ends
// with the same audit (audit_test.go). `make faults` runs every scenario
// (build tag faults) and prints one table; `make test` runs the short ones.
package faults

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
	"github.com/outbox-relay/outbox-relay/internal/relaytest"
)

var (
	soakFlag  = flag.Duration("faults.soak", 0, "length of the soak scenario (default 2m with -tags faults, 15s without)")
	killsFlag = flag.Int("faults.kills", 0, "SIGKILLs in the kill scenario (default 20 with -tags faults, 3 without)")
)

var (
	// pg is the cluster every scenario shares (each has its own database);
	// scenarios run one at a time, since some restart it.
	pg       *devenv.Postgres
	relayBin string
	// setupErr says why pg or relayBin is missing; every scenario fails with it.
	setupErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var err error
	// The audit reads every commit record back with pg_walinspect, so the
	// WAL of the whole run must stay, whatever the slot confirmed.
	pg, err = devenv.StartPostgres(ctx, devenv.PostgresOptions{Settings: map[string]string{
		"wal_keep_size": "'4GB'",
		"max_wal_size":  "'4GB'",
	}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "start postgres: %v\n", err)
		return 1
	}
	defer pg.Stop()
	dir, err := os.MkdirTemp("", "outbox-faults-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if relayBin, err = relaytest.Build(ctx, dir); err != nil {
		setupErr = err
	}
	code := m.Run()
	printTable(os.Stdout)
	return code
}

func soakLength() time.Duration {
	switch {
	case *soakFlag > 0:
		return *soakFlag
	case fullSuite:
		return 2 * time.Minute
	}
	return 15 * time.Second
}

func killCount() int {
	switch {
	case *killsFlag > 0:
		return *killsFlag
	case fullSuite:
		return 20
	}
	return 3
}
