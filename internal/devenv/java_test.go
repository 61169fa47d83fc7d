package devenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAbandonedJavaIsReaped leaves two java-like workspaces behind: one
// whose owner is gone, whose process reapAbandonedJava must kill and whose
// directory it must remove, and one whose owner (this test) lives, which
// it must leave alone.
func TestAbandonedJavaIsReaped(t *testing.T) {
	base := t.TempDir()
	const prefix = "outbox-relay-reaptest-"
	workspace := func(name string, owner int) (dir string, proc *exec.Cmd) {
		dir = filepath.Join(base, prefix+name)
		sub := filepath.Join(dir, "node")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(owner)), 0o644); err != nil {
			t.Fatal(err)
		}
		// The process's command line names its directory, as a broker's does.
		proc = exec.Command("sh", "-c", "sleep 60", sub)
		if err := proc.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { proc.Process.Kill(); proc.Wait() })
		if err := os.WriteFile(filepath.Join(sub, "java.pid"), []byte(strconv.Itoa(proc.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir, proc
	}
	goneDir, goneProc := workspace("gone", 2147483647) // a pid that cannot exist
	liveDir, liveProc := workspace("live", os.Getpid())

	reapAbandonedJava(base, prefix)

	exited := make(chan error, 1)
	go func() { exited <- goneProc.Wait() }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Errorf("the abandoned workspace's process still runs")
	}
	if _, err := os.Stat(goneDir); !os.IsNotExist(err) {
		t.Errorf("abandoned workspace: stat err = %v, want it removed", err)
	}
	if _, err := os.Stat(liveDir); err != nil {
		t.Errorf("live workspace: %v, want it kept", err)
	}
	if !running(liveProc.Process.Pid) {
		t.Errorf("the live workspace's process was killed")
	}
}

// running says whether pid runs: it exists and is no zombie (a killed
// child stays one until it is waited for).
func running(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, after, ok := strings.Cut(string(stat), ") ")
	return ok && !strings.HasPrefix(after, "Z")
}
