package devenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// newJavaWorkspace readies the start of java processes run from set's
// jars: it finds java and the jars (fetching them once), reaps what
// processes that died left behind under prefix, and makes a new temporary
// directory named with prefix. The caller writes owner.pid into dir and
// each process's java.pid into a subdirectory that its command line names,
// for reapAbandonedJava.
func newJavaWorkspace(ctx context.Context, set jarSet, prefix string) (java, jars, dir string, err error) {
	if java, err = javaBinary(); err != nil {
		return "", "", "", err
	}
	if jars, err = set.dir(ctx); err != nil {
		return "", "", "", err
	}
	reapAbandonedJava(os.TempDir(), prefix)
	if dir, err = os.MkdirTemp("", prefix); err != nil {
		return "", "", "", fmt.Errorf("%s: %w", set.name, err)
	}
	return java, jars, dir, nil
}

// javaBinary finds java on PATH or under $JAVA_HOME.
func javaBinary() (string, error) {
	if p, err := exec.LookPath("java"); err == nil {
		return p, nil
	}
	if home := os.Getenv("JAVA_HOME"); home != "" {
		p := filepath.Join(home, "bin", "java")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("java not found on PATH or in $JAVA_HOME; Apache Kafka and Debezium need a JDK 17 or later " +
		"(apt-get install default-jdk-headless)")
}

// reapAbandonedJava kills the java processes (each named by a java.pid in
// a subdirectory) of the directories base/prefix* whose owning process is
// gone, and removes those directories, as reapAbandoned does for Postgres.
func reapAbandonedJava(base, prefix string) {
	for _, dir := range abandonedDirs(base, prefix) {
		pidFiles, _ := filepath.Glob(filepath.Join(dir, "*", "java.pid"))
		for _, f := range pidFiles {
			pid, ok := readPID(f)
			if !ok {
				continue
			}
			// Only if the pid still is that process, not a recycled one.
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err == nil && bytes.Contains(cmdline, []byte(filepath.Dir(f))) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		os.RemoveAll(dir)
	}
}
