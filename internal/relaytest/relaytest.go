// Package relaytest runs the relay binary as a subprocess for suites that
// judge it from the outside (the fault suite): it builds the binary once,
// starts it with exactly the environment a test gives, and keeps its output
// for failure messages and log checks. It never reaches into the relay's
// packages.
package relaytest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Build builds ./cmd/outbox-relay of the module that holds the working
// directory into dir, with the extra go build flags, and returns its path.
func Build(ctx context.Context, dir string, flags ...string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	out, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	bin := filepath.Join(dir, "outbox-relay")
	args := append(append([]string{"build", "-o", bin}, flags...), "./cmd/outbox-relay")
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return bin, nil
}

// Process is one run of the relay binary.
type Process struct {
	Name string
	cmd  *exec.Cmd
	out  *tailBuffer // stdout and stderr interleaved
	done chan struct{}
}

// Start starts bin with args. The environment is ours without the relay's
// and libpq's variables (OUTBOX_RELAY_*, PG*), then env. The process dies
// with the calling process, whatever kills that.
func Start(name, bin string, env []string, args ...string) (*Process, error) {
	p := &Process{Name: name, out: &tailBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = cleanEnv(env)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process (ignored once it exited).
func (p *Process) Signal(sig syscall.Signal) {
	if !p.Exited() {
		p.cmd.Process.Signal(sig)
	}
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits up to timeout for the exit and returns the exit code (-1 for
// a signal); ok is false when the process still runs.
func (p *Process) Wait(timeout time.Duration) (code int, ok bool) {
	if p.Exited() { // before the timer: with both ready, select picks at random
		return p.cmd.ProcessState.ExitCode(), true
	}
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), true
	case <-time.After(timeout):
		return 0, false
	}
}

// Kill sends SIGKILL (and SIGCONT, in case it was stopped) and waits for
// the exit.
func (p *Process) Kill() {
	p.Signal(syscall.SIGKILL)
	p.Signal(syscall.SIGCONT)
	<-p.done
}

// Output is everything the process printed so far (the last 16 MiB).
func (p *Process) Output() string { return p.out.String() }

// Tail is the last n lines of Output.
func (p *Process) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Output(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func cleanEnv(env []string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OUTBOX_RELAY_") && !strings.HasPrefix(kv, "PG") {
			out = append(out, kv)
		}
	}
	return append(out, env...) // exec takes the last value of a repeated name
}

// tailBuffer keeps the last 16 MiB written to it.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - 16<<20; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
