package devenv

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// reapAbandoned stops and removes clusters whose owning process is gone. A
// test binary killed by its timeout never runs its cleanup, and without this
// every such run would leave a postmaster behind.
func reapAbandoned(base, binDir string, account *serverAccount) {
	for _, dir := range abandonedDirs(base, dirPrefix) {
		data := filepath.Join(dir, "data")
		if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			runServerBinary(ctx, binDir, dir, account, "pg_ctl", "stop", "-w", "-m", "immediate", "-D", data)
			cancel()
		}
		os.RemoveAll(dir)
	}
}

// abandonedDirs are the directories base/prefix* whose owner.pid names a
// process that is gone. One without owner.pid is not ours, or still being
// set up.
func abandonedDirs(base, prefix string) []string {
	var gone []string
	dirs, _ := filepath.Glob(filepath.Join(base, prefix+"*"))
	for _, dir := range dirs {
		if owner, ok := readPID(filepath.Join(dir, "owner.pid")); ok && !processAlive(owner) {
			gone = append(gone, dir)
		}
	}
	return gone
}

// readPID reads a positive process id from file.
func readPID(file string) (int, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
