package tests

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// relayProcess is one run of the relay binary as a subprocess.
type relayProcess struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr *outputBuffer
	done           chan struct{} // closed once the process exited
	waitErr        error         // set before done is closed
	// signalled is set when the test itself stopped the process, so that
	// its exit is expected rather than a failure.
	signalled atomic.Bool
}

var relaySeq atomic.Int64

// startRelayProcess starts the relay binary bin with args and exactly the
// environment env (plus a sanitised copy of ours). The process is killed at
// the end of the test if it still runs, and its output is logged when the
// test failed.
func startRelayProcess(t *testing.T, bin string, env []string, args ...string) *relayProcess {
	t.Helper()
	requireRelay(t)
	r := &relayProcess{
		name:   fmt.Sprintf("relay %s #%d", strings.Join(args, " "), relaySeq.Add(1)),
		stdout: new(outputBuffer),
		stderr: new(outputBuffer),
		done:   make(chan struct{}),
	}
	r.cmd = exec.Command(bin, args...)
	r.cmd.Env = processEnv(env)
	r.cmd.Stdout, r.cmd.Stderr = r.stdout, r.stderr
	// Never outlive the test binary, whatever kills it.
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", r.name, err)
	}
	go func() {
		r.waitErr = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		if !r.exited() {
			r.signalled.Store(true)
			r.cmd.Process.Kill()
			<-r.done
		}
		if raceEnabled && strings.Contains(r.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race", r.name)
		}
		if t.Failed() {
			t.Logf("%s (pid %d, %s) stderr, last 150 lines:\n%s", r.name, r.cmd.Process.Pid, r.describeExit(), r.stderr.Tail(150))
			if out := r.stdout.Tail(30); out != "" {
				t.Logf("%s stdout, last 30 lines:\n%s", r.name, out)
			}
		}
	})
	return r
}

// runRelay runs the relay to completion and returns its exit code and
// output; it fails the test when the relay does not exit within timeout.
func runRelay(t *testing.T, env []string, timeout time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	r := startRelayProcess(t, relayBin, env, args...)
	code, ok := r.wait(timeout)
	if !ok {
		t.Fatalf("%s did not exit within %v; stderr:\n%s", r.name, timeout, r.stderr.Tail(50))
	}
	return code, r.stdout.String(), r.stderr.String()
}

func (r *relayProcess) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// wait waits up to timeout for the process to exit and returns its exit
// code (-1 when a signal ended it).
func (r *relayProcess) wait(timeout time.Duration) (code int, exited bool) {
	select {
	case <-r.done:
		return r.exitCode(), true
	case <-time.After(timeout):
		return 0, false
	}
}

func (r *relayProcess) exitCode() int {
	if r.cmd.ProcessState == nil {
		return 0
	}
	return r.cmd.ProcessState.ExitCode()
}

func (r *relayProcess) describeExit() string {
	if !r.exited() {
		return "running"
	}
	var ee *exec.ExitError
	if errors.As(r.waitErr, &ee) || r.waitErr == nil {
		return r.cmd.ProcessState.String()
	}
	return r.waitErr.Error()
}

// terminate sends SIGTERM and requires a clean exit (code 0) within the
// shutdown bound.
func (r *relayProcess) terminate(t *testing.T) {
	t.Helper()
	r.signalled.Store(true)
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil && !r.exited() {
		t.Fatalf("SIGTERM %s: %v", r.name, err)
	}
	code, ok := r.wait(60 * time.Second)
	if !ok {
		t.Fatalf("%s still running 60s after SIGTERM", r.name)
	}
	if code != 0 {
		t.Fatalf("%s exited with %s after SIGTERM, want exit code 0; stderr:\n%s", r.name, r.describeExit(), r.stderr.Tail(40))
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (r *relayProcess) kill(t *testing.T) {
	t.Helper()
	r.signalled.Store(true)
	r.cmd.Process.Kill()
	if _, ok := r.wait(10 * time.Second); !ok {
		t.Fatalf("%s survived SIGKILL for 10s", r.name)
	}
}

// peakRSS is the process's peak resident set size (VmHWM) in bytes.
func (r *relayProcess) peakRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("parse VmHWM %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}

// processEnv is our environment without the relay's and libpq's variables,
// followed by env. An entry of env without "=" removes that variable.
func processEnv(env []string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OUTBOX_RELAY_") && !strings.HasPrefix(kv, "PG") {
			out = append(out, kv)
		}
	}
	for _, kv := range env {
		name, _, hasValue := strings.Cut(kv, "=")
		// exec uses the last value of a duplicate key, so appending
		// overrides; removal needs filtering.
		out = slicesDeleteKey(out, name)
		if hasValue {
			out = append(out, kv)
		}
	}
	return out
}

func slicesDeleteKey(env []string, name string) []string {
	kept := env[:0]
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k != name {
			kept = append(kept, kv)
		}
	}
	return kept
}

// outputBuffer collects a process's output. It keeps the last 16 MiB, which
// is more than any test's relay logs at the levels the tests use.
type outputBuffer struct {
	mu      sync.Mutex
	b       []byte
	dropped int
}

const outputLimit = 16 << 20

func (o *outputBuffer) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b = append(o.b, p...)
	if over := len(o.b) - outputLimit; over > 0 {
		o.b = append(o.b[:0], o.b[over:]...)
		o.dropped += over
	}
	return len(p), nil
}

func (o *outputBuffer) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return string(o.b)
}

// Tail returns the last n lines.
func (o *outputBuffer) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(o.String(), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[… %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
