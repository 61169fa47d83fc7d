package tests

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// sharedApache is the one plaintext Apache Kafka broker the real-broker
// tests share (each with topics of its own); tests that need another
// listener or more brokers start their own.
var sharedApache struct {
	once  sync.Once
	kafka *devenv.ApacheKafka
	err   error
}

func closeSharedApache() {
	if sharedApache.kafka != nil {
		sharedApache.kafka.Close()
	}
}

// requireApache skips the test when java or mvn is missing, and fails it
// instead under CI, where the real-broker cases must run.
func requireApache(t *testing.T) {
	t.Helper()
	if err := devenv.JavaAvailable(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("real-broker test cannot run: %v", err)
		}
		t.Skipf("real-broker test skipped: %v", err)
	}
}

// apacheBroker returns the shared single broker, starting it on first use.
func apacheBroker(t *testing.T) *devenv.ApacheKafka {
	t.Helper()
	requireApache(t)
	sharedApache.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		sharedApache.kafka, sharedApache.err = devenv.StartApacheKafka(ctx, devenv.ApacheOptions{})
	})
	if sharedApache.err != nil {
		t.Fatalf("start apache kafka: %v", sharedApache.err)
	}
	return sharedApache.kafka
}

// startApache starts a cluster of the test's own, closed when it ends.
func startApache(t *testing.T, opts devenv.ApacheOptions) *devenv.ApacheKafka {
	t.Helper()
	requireApache(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := devenv.StartApacheKafka(ctx, opts)
	if err != nil {
		t.Fatalf("start apache kafka: %v", err)
	}
	t.Cleanup(k.Close)
	return k
}

// newApacheEnv is newEnv against Apache Kafka k: the test's database, with
// the relay and the readers on k's plaintext listeners, and topics created
// with partitions and replication factor rf. The brokers' logs are shown
// when the test fails.
func newApacheEnv(t *testing.T, k *devenv.ApacheKafka, partitions, rf int, topics ...string) *testEnv {
	t.Helper()
	e := newDatabaseEnv(t)
	e.brokers = k.InternalAddrs()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, topic := range topics {
		if err := k.CreateTopic(ctx, topic, partitions, rf, nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i := range k.Addrs() {
				t.Logf("broker %d log, last 30 lines:\n%s", i, k.LogTail(i, 30))
			}
		}
	})
	return e
}

// javaDefaultPartitions asks the Java producer's default partitioner
// (java/partitioner, run on the broker's kafka-clients jar) for the
// partition of each key among n.
func javaDefaultPartitions(t *testing.T, keys [][]byte, n int) []int32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	jars, err := devenv.ApacheKafkaJars(ctx)
	if err != nil {
		t.Fatal(err)
	}
	root, err := devenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	var in bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&in, "%d %s\n", n, hex.EncodeToString(k))
	}
	cmd := exec.CommandContext(ctx, "java", "-cp", filepath.Join(jars, "*"),
		filepath.Join(root, "java", "partitioner", "DefaultPartition.java"))
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("java DefaultPartition: %v\n%s", err, stderr.String())
	}
	lines := strings.Fields(string(out))
	if len(lines) != len(keys) {
		t.Fatalf("java DefaultPartition printed %d partitions for %d keys", len(lines), len(keys))
	}
	parts := make([]int32, len(lines))
	for i, l := range lines {
		p, err := strconv.Atoi(l)
		if err != nil {
			t.Fatalf("java DefaultPartition: %q: %v", l, err)
		}
		parts[i] = int32(p)
	}
	return parts
}

// checkJavaPartitions checks that every record sits in the partition the
// Java client's default partitioner picks for its key.
func checkJavaPartitions(t *testing.T, records []*kgo.Record, partitions int) {
	t.Helper()
	keys := make([][]byte, len(records))
	for i, r := range records {
		keys[i] = r.Key
	}
	want := javaDefaultPartitions(t, keys, partitions)
	bad := 0
	for i, r := range records {
		if r.Partition != want[i] {
			if bad++; bad <= 5 {
				t.Errorf("key %q in %s[%d], want partition %d (Java default partitioner)", r.Key, r.Topic, r.Partition, want[i])
			}
		}
	}
	if bad > 5 {
		t.Errorf("… %d of %d records in the wrong partition", bad, len(records))
	}
}
