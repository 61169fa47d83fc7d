package devenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
)

// jarSet is a folder of runtime jars that a pom.xml under java/ names,
// copied once by Maven into the user's cache directory and shared by every
// process after that. Each set has a folder of its own, because their
// dependencies disagree (Debezium brings an older kafka-clients than the
// broker's).
type jarSet struct {
	// name prefixes the cache folder and every error ("kafka jars: …").
	name string
	// pom is the pom.xml's path relative to the repository root.
	pom string
	// versionProperty is the pom property whose value goes into the folder
	// name, so that a look at the cache says what it holds.
	versionProperty string
	// env, when set in the environment, names a folder of the jars to use
	// as is (machines without Maven or network).
	env string
	// marker is a glob that a folder given by env must match a jar of.
	marker string
}

// dir returns the folder holding the set's jars, for `java -cp 'dir/*'`,
// copying them first when no earlier call (in this process or another)
// has: the cache folder is <cache>/outbox-relay/<name>-<version>-<pom
// hash>, complete once it holds .complete, and filled under a file lock so
// that concurrent test binaries run Maven once.
func (s jarSet) dir(ctx context.Context) (string, error) {
	what := s.name + " jars"
	if dir := os.Getenv(s.env); dir != "" {
		if m, _ := filepath.Glob(filepath.Join(dir, s.marker)); len(m) == 0 {
			return "", fmt.Errorf("%s=%s holds no %s", s.env, dir, s.marker)
		}
		return dir, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	pom := filepath.Join(root, s.pom)
	content, err := os.ReadFile(pom)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	sum := sha256.Sum256(content)
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("%s: no cache directory (set XDG_CACHE_HOME or HOME): %w", what, err)
	}
	dir := filepath.Join(cache, "outbox-relay", s.name+"-"+pomProperty(content, s.versionProperty)+"-"+hex.EncodeToString(sum[:4]))
	complete := filepath.Join(dir, ".complete")
	if _, err := os.Stat(complete); err == nil {
		return dir, nil
	}

	// Another test binary may be copying the same jars right now.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("%s: lock %s: %w", what, lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(complete); err == nil {
		return dir, nil
	}

	mvn, err := exec.LookPath("mvn")
	if err != nil {
		return "", fmt.Errorf("%s: mvn (Apache Maven) not found on PATH; it downloads the jars of %s once "+
			"(apt-get install maven, or set %s to a directory of the jars)", what, s.pom, s.env)
	}
	if _, err := javaBinary(); err != nil {
		return "", err // Maven needs it too, and says so less clearly
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, mvn, "-B", "-q", "-f", pom, "dependency:copy-dependencies", "-DoutputDirectory="+tmp)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("%s: mvn dependency:copy-dependencies -f %s: %w\n%s", what, pom, err, lastLines(out.String(), 30))
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	return dir, nil
}

// available says why the set's jars cannot be had here (nil when java and
// either mvn or the set's env folder are present).
func (s jarSet) available() error {
	if _, err := javaBinary(); err != nil {
		return err
	}
	if os.Getenv(s.env) != "" {
		return nil
	}
	if _, err := exec.LookPath("mvn"); err != nil {
		return fmt.Errorf("%s jars: mvn (Apache Maven) not found on PATH; it downloads the jars of %s once "+
			"(apt-get install maven, or set %s)", s.name, s.pom, s.env)
	}
	return nil
}

// RepoRoot is the root of this module's source tree, where java/ lives. It
// is found from this file's compile-time path, so it holds for `go test` and
// `go run` from a checkout.
func RepoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("repo root: no caller information")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("repo root: %w (run from a checkout of the source)", err)
	}
	return filepath.Clean(root), nil
}

// pomProperty is the value of <name>…</name> in pom, or "unknown".
func pomProperty(pom []byte, name string) string {
	re := regexp.MustCompile(`<` + regexp.QuoteMeta(name) + `>([^<]+)</` + regexp.QuoteMeta(name) + `>`)
	if m := re.FindSubmatch(pom); m != nil {
		return strings.TrimSpace(string(m[1]))
	}
	return "unknown"
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
