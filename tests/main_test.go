// Package tests is the integration suite: the relay binary runs as a
// subprocess against a real Postgres cluster and a real Kafka-protocol
// broker (kfake), and what it produced is read back with an independent
// consumer. The tests check the README contract (environment, table,
// record format, CLI) and the invariants of DESIGN.md, not the relay's
// internals.
package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

var (
	// pg is the one cluster every test shares; each test has its own database.
	pg *devenv.Postgres
	// relayBin is the relay built once for the whole run, with -race when
	// the tests run with it; plainRelayBin is built without, for measuring
	// memory. relayBuildErr says why they are missing, and every test that
	// needs them fails with that.
	relayBin      string
	plainRelayBin string
	relayBuildErr error
	// serverVersion is the cluster's server_version_num.
	serverVersion int
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var err error
	pg, err = devenv.StartPostgres(ctx, devenv.PostgresOptions{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "start postgres: %v\n", err)
		return 1
	}
	defer pg.Stop()
	if serverVersion, err = queryServerVersion(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "postgres: %v\n%s\n", err, pg.LogTail(20))
		return 1
	}

	binDir, err := os.MkdirTemp("", "outbox-relay-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(binDir)
	relayBin, plainRelayBin, relayBuildErr = buildRelays(ctx, binDir)
	if relayBuildErr != nil {
		fmt.Fprintf(os.Stderr, "build relay: %v\n", relayBuildErr)
	}
	defer closeSharedApache()
	return m.Run()
}

// buildRelays builds ./cmd/outbox-relay from the module root: with -race
// when the tests run with it (its stderr is then checked for data race
// reports), and without for the memory measurement.
func buildRelays(ctx context.Context, dir string) (bin, plain string, err error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	out, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	build := func(bin string, flags ...string) error {
		args := append(append([]string{"build", "-o", bin}, flags...), "./cmd/outbox-relay")
		cmd := exec.CommandContext(ctx, goTool, args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	plain = filepath.Join(dir, "outbox-relay")
	if err := build(plain); err != nil {
		return "", "", err
	}
	if !raceEnabled {
		return plain, plain, nil
	}
	bin = filepath.Join(dir, "outbox-relay-race")
	if err := build(bin, "-race"); err != nil {
		return "", "", err
	}
	return bin, plain, nil
}

func queryServerVersion(ctx context.Context) (int, error) {
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var v int
	err = conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&v)
	return v, err
}

// requireRelay fails the test when the relay binary could not be built.
func requireRelay(t *testing.T) {
	t.Helper()
	if relayBuildErr != nil {
		t.Fatalf("relay binary not available: %v", relayBuildErr)
	}
	if relayBin == "" {
		t.Fatal(errors.New("relay binary not built"))
	}
}
