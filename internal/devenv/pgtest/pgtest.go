// Package pgtest gives a test package one throw-away Postgres cluster and
// each test its own database in it.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// Cluster is the package's cluster, set by Main while the tests run.
var Cluster *devenv.Postgres

// Main starts the cluster, runs the tests and stops it; call it from
// TestMain: func TestMain(m *testing.M) { pgtest.Main(m) }.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var err error
	if Cluster, err = devenv.StartPostgres(ctx, devenv.PostgresOptions{}); err != nil {
		fmt.Fprintf(os.Stderr, "start postgres: %v\n", err)
		return 1
	}
	defer Cluster.Stop()
	return m.Run()
}

var (
	dbSeq    atomic.Int64
	notIdent = regexp.MustCompile(`[^a-z0-9_]+`)
)

// Database creates a database named after the test and returns its name and URL.
func Database(t *testing.T) (name, url string) {
	t.Helper()
	name = fmt.Sprintf("t%d_%s", dbSeq.Add(1), notIdent.ReplaceAllString(strings.ToLower(t.Name()), "_"))
	if len(name) > 63 {
		name = name[:63]
	}
	if err := Cluster.CreateDatabase(Context(t), name); err != nil {
		t.Fatal(err)
	}
	return name, Cluster.URL(name)
}

// Context returns a context that ends after a minute or with the test.
func Context(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// StartCluster starts a cluster of the test's own with extra
// postgresql.conf settings (track_commit_timestamp, say, which the package
// cluster leaves at its default) and stops it when the test ends.
func StartCluster(t testing.TB, settings map[string]string) *devenv.Postgres {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster, err := devenv.StartPostgres(ctx, devenv.PostgresOptions{Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.Stop() })
	return cluster
}
