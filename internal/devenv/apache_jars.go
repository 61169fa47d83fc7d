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

// JarsEnv names a directory of Kafka runtime jars to use instead of the
// cached Maven download (for machines without Maven or network).
const JarsEnv = "OUTBOX_RELAY_KAFKA_JARS"

// ApacheKafkaJars returns a directory holding the runtime jars of the Apache
// Kafka broker named in java/kafka/pom.xml (the broker, kafka-clients and a
// log4j2 binding), for `java -cp 'dir/*'`. The first call copies them with
// Maven into the user's cache directory ($XDG_CACHE_HOME or ~/.cache, under
// outbox-relay/kafka-<version>-<pom hash>); later calls, in this process or
// any other, find them there and run nothing. $OUTBOX_RELAY_KAFKA_JARS, when
// set, is used as is.
func ApacheKafkaJars(ctx context.Context) (dir string, err error) {
	if dir := os.Getenv(JarsEnv); dir != "" {
		if m, _ := filepath.Glob(filepath.Join(dir, "kafka_2.13-*.jar")); len(m) == 0 {
			return "", fmt.Errorf("%s=%s holds no kafka_2.13 jar", JarsEnv, dir)
		}
		return dir, nil
	}
	pom, err := kafkaPOM()
	if err != nil {
		return "", err
	}
	content, err := os.ReadFile(pom)
	if err != nil {
		return "", fmt.Errorf("kafka jars: %w", err)
	}
	version := pomKafkaVersion(content)
	sum := sha256.Sum256(content)
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("kafka jars: no cache directory (set XDG_CACHE_HOME or HOME): %w", err)
	}
	dir = filepath.Join(cache, "outbox-relay", "kafka-"+version+"-"+hex.EncodeToString(sum[:4]))
	complete := filepath.Join(dir, ".complete")
	if _, err := os.Stat(complete); err == nil {
		return dir, nil
	}

	// Another test binary may be copying the same jars right now.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("kafka jars: %w", err)
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("kafka jars: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("kafka jars: lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(complete); err == nil {
		return dir, nil
	}

	mvn, err := exec.LookPath("mvn")
	if err != nil {
		return "", errors.New("kafka jars: mvn (Apache Maven) not found on PATH; it downloads the broker's jars once " +
			"(apt-get install maven, or set " + JarsEnv + " to a directory of the jars)")
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
		return "", fmt.Errorf("kafka jars: mvn dependency:copy-dependencies -f %s: %w\n%s", pom, err, lastLines(out.String(), 30))
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return "", fmt.Errorf("kafka jars: %w", err)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("kafka jars: %w", err)
	}
	return dir, nil
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

func kafkaPOM() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("kafka jars: %w", err)
	}
	return filepath.Join(root, "java", "kafka", "pom.xml"), nil
}

var kafkaVersionProperty = regexp.MustCompile(`<kafka\.version>([^<]+)</kafka\.version>`)

func pomKafkaVersion(pom []byte) string {
	if m := kafkaVersionProperty.FindSubmatch(pom); m != nil {
		return strings.TrimSpace(string(m[1]))
	}
	return "unknown"
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
	return "", errors.New("apache kafka: java not found on PATH or in $JAVA_HOME; the broker needs a JDK 17 or later " +
		"(apt-get install default-jdk-headless)")
}

// JavaAvailable says why the real-broker tools cannot run here (nil when
// java and either mvn or $OUTBOX_RELAY_KAFKA_JARS are present).
func JavaAvailable() error {
	if _, err := javaBinary(); err != nil {
		return err
	}
	if os.Getenv(JarsEnv) != "" {
		return nil
	}
	if _, err := exec.LookPath("mvn"); err != nil {
		return errors.New("apache kafka: mvn (Apache Maven) not found on PATH; it downloads the broker's jars once " +
			"(apt-get install maven, or set " + JarsEnv + ")")
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
