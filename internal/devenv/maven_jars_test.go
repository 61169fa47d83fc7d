package devenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestJarsNameMissingTools checks that without java, or with java but
// without mvn, the jar folders are refused with an error naming the
// missing tool, for both jar sets.
func TestJarsNameMissingTools(t *testing.T) {
	java, javaErr := exec.LookPath("java")
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // nothing cached
	t.Setenv(JarsEnv, "")
	t.Setenv(DebeziumJarsEnv, "")
	t.Setenv("JAVA_HOME", "")

	t.Setenv("PATH", t.TempDir())
	for name, available := range map[string]func() error{"kafka": JavaAvailable, "debezium": DebeziumAvailable} {
		if err := available(); err == nil || !strings.Contains(err.Error(), "java not found") {
			t.Errorf("%s without java: %v, want an error naming java", name, err)
		}
	}

	if javaErr != nil {
		t.Skip("no java here to try the missing-mvn case with")
	}
	bin := t.TempDir()
	if err := os.Symlink(java, filepath.Join(bin, "java")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	if err := DebeziumAvailable(); err == nil || !strings.Contains(err.Error(), "mvn (Apache Maven) not found") ||
		!strings.Contains(err.Error(), DebeziumJarsEnv) {
		t.Errorf("DebeziumAvailable without mvn: %v, want an error naming mvn and %s", err, DebeziumJarsEnv)
	}
	_, err := DebeziumJars(context.Background())
	if err == nil || !strings.Contains(err.Error(), "debezium jars: mvn (Apache Maven) not found") {
		t.Errorf("DebeziumJars without mvn: %v, want an error naming mvn", err)
	}
	if _, err := ApacheKafkaJars(context.Background()); err == nil || !strings.Contains(err.Error(), "kafka jars: mvn") {
		t.Errorf("ApacheKafkaJars without mvn: %v, want an error naming mvn", err)
	}
}

// TestJarsFromEnvFolder checks the folder given by the environment: used
// as is when it holds the set's marker jar, refused when it does not.
func TestJarsFromEnvFolder(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(DebeziumJarsEnv, dir)
	if _, err := DebeziumJars(context.Background()); err == nil || !strings.Contains(err.Error(), "holds no debezium-connector-postgres") {
		t.Errorf("DebeziumJars with an empty %s: %v, want an error naming the missing jar", DebeziumJarsEnv, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "debezium-connector-postgres-3.6.1.Final.jar"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := DebeziumJars(context.Background()); err != nil || got != dir {
		t.Errorf("DebeziumJars = %q, %v, want %q", got, err, dir)
	}
}

func TestPOMProperty(t *testing.T) {
	pom := []byte("<properties>\n<kafka.version> 4.4.0 </kafka.version><debezium.version>3.6.1.Final</debezium.version>")
	for _, tc := range []struct{ name, want string }{
		{"kafka.version", "4.4.0"},
		{"debezium.version", "3.6.1.Final"},
		{"log4j.version", "unknown"},
	} {
		if got := pomProperty(pom, tc.name); got != tc.want {
			t.Errorf("pomProperty(%s) = %q, want %q", tc.name, got, tc.want)
		}
	}
}
