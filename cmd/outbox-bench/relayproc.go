package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// relayProcess is an `outbox-relay run` subprocess serving /metrics on a
// loopback port of its own.
type relayProcess struct {
	cmd      *exec.Cmd
	httpAddr string
	http     *http.Client
	exited   chan struct{}
	waitErr  error
	log      *os.File
}

// startRelay starts `outbox-relay run` with the OUTBOX_RELAY_* variables in
// vars (names without the prefix), then extra (NAME=value, -relay-env, which
// may override them), logging to logPath.
func startRelay(bin string, vars map[string]string, extra []string, logPath string) (*relayProcess, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	vars["HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", port)
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run")
	cmd.Env = append(relayEnv(vars), extra...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The relay must not outlive the benchmark, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s run: %w", bin, err)
	}
	r := &relayProcess{cmd: cmd, httpAddr: vars["HTTP_ADDR"], exited: make(chan struct{}), log: logFile,
		// Uncompressed /metrics: gzip would cost the relay CPU in the timed runs.
		http: &http.Client{Timeout: 70 * time.Second, Transport: &http.Transport{DisableCompression: true}}}
	go func() {
		r.waitErr = cmd.Wait()
		close(r.exited)
	}()
	return r, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (r *relayProcess) pid() int { return r.cmd.Process.Pid }

// alive returns an error when the relay has exited.
func (r *relayProcess) alive() error {
	select {
	case <-r.exited:
		return fmt.Errorf("relay exited: %v (see %s)", r.waitErr, r.log.Name())
	default:
		return nil
	}
}

// waitReady polls /readyz until the relay streams.
func (r *relayProcess) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := r.alive(); err != nil {
			return err
		}
		resp, err := r.get(ctx, "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("relay not ready within %s (see %s)", timeout, r.log.Name())
}

func (r *relayProcess) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.httpAddr+path, nil)
	if err != nil {
		return nil, err
	}
	return r.http.Do(req)
}

// metric reads one unlabelled sample from /metrics.
func (r *relayProcess) metric(ctx context.Context, name string) (float64, error) {
	values, err := r.metrics(ctx, name)
	if err != nil {
		return 0, err
	}
	v, ok := values[name]
	if !ok {
		return 0, fmt.Errorf("metric %s not in /metrics", name)
	}
	return v, nil
}

// metrics reads unlabelled samples from one scrape of /metrics; names
// missing from it are missing from the map.
func (r *relayProcess) metrics(ctx context.Context, names ...string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second) // a relay that does not answer must not stop the run
	defer cancel()
	resp, err := r.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	values := map[string]float64{}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		name, value, ok := strings.Cut(s.Text(), " ")
		if !ok || !slices.Contains(names, name) {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			values[name] = v
		}
	}
	return values, s.Err()
}

// stuckReport describes where a relay that did not finish stands, for the
// error that ends the run.
func (r *relayProcess) stuckReport(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var parts []string
	for _, name := range []string{"outbox_relay_events_published_total", "outbox_relay_inflight_records",
		"outbox_relay_inflight_bytes", "outbox_relay_confirmed_lsn", "outbox_relay_transactions_total"} {
		if v, err := r.metric(ctx, name); err == nil {
			parts = append(parts, fmt.Sprintf("%s %.0f", name, v))
		}
	}
	if len(parts) == 0 {
		return "the relay did not answer /metrics"
	}
	return strings.Join(parts, ", ")
}

// dumpStacks ends a stuck relay with SIGQUIT, whose default handler writes
// every goroutine's stack to the relay's log.
func (r *relayProcess) dumpStacks() {
	if r.alive() != nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-r.exited:
	case <-time.After(5 * time.Second):
	}
}

// drainTimeout bounds a drain of rows: generous (5,000 rows/s, at least 2
// minutes), so only a stuck relay reaches it.
func drainTimeout(rows int) time.Duration {
	return max(2*time.Minute, time.Duration(rows/5000)*time.Second)
}

// fetch saves the body of path (a pprof endpoint) to file.
func (r *relayProcess) fetch(ctx context.Context, path, file string) error {
	resp, err := r.get(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// stop sends SIGTERM (the relay drains and confirms), and kills the relay
// when it has not exited within 40 s.
func (r *relayProcess) stop() error {
	defer r.log.Close()
	if r.alive() != nil {
		return nil
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
		return r.waitErr
	case <-time.After(40 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
		return errors.New("relay did not stop within 40s after SIGTERM; killed")
	}
}

// processCPU returns the user+system CPU seconds of pid from /proc, or -1.
func processCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / clockTicks
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

// processMemKB reads a kB field (VmRSS, VmHWM) of /proc/<pid>/status, or -1.
func processMemKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return -1
}

// selfCPU is the user+system CPU seconds of this process so far.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// cpuTimes is a snapshot of the machine's CPU counters (/proc/stat).
type cpuTimes struct{ busy, total float64 }

func machineCPU() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var t cpuTimes
	// user nice system idle iowait irq softirq steal; guest time is in user already.
	for i, v := range f[1:min(len(f), 9)] {
		n, _ := strconv.ParseFloat(v, 64)
		t.total += n
		if i != 3 && i != 4 { // idle, iowait
			t.busy += n
		}
	}
	return t
}

// busySince is the share of all cores that was busy since start, in percent.
func busySince(start cpuTimes) float64 {
	now := machineCPU()
	if now.total <= start.total {
		return 0
	}
	return 100 * (now.busy - start.busy) / (now.total - start.total)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
