package devenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// requireJava skips (or, under CI, fails) when the real broker cannot run.
func requireJava(t *testing.T) {
	t.Helper()
	if err := JavaAvailable(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("real-broker test: %v", err)
		}
		t.Skipf("real-broker test: %v", err)
	}
}

// TestApacheKafkaTLSSCRAM produces and reads back a record through a
// SASL_SSL listener with the generated CA and the SCRAM user, and checks
// that a wrong password is refused.
func TestApacheKafkaTLSSCRAM(t *testing.T) {
	requireJava(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	user := &SCRAMUser{Mechanism: "SCRAM-SHA-512", User: "relay", Password: "s3cret"}
	k, err := StartApacheKafka(ctx, ApacheOptions{TLS: true, SASLSCRAM: user})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	if err := k.CreateTopic(ctx, "secured", 1, 1, nil); err != nil {
		t.Fatal(err)
	}
	pemCA, err := os.ReadFile(k.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		t.Fatal("CAFile holds no certificate")
	}
	client := func(password string) *kgo.Client {
		cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs()...),
			kgo.DialTLSConfig(&tls.Config{RootCAs: pool}),
			kgo.SASL(scram.Auth{User: user.User, Pass: password}.AsSha512Mechanism()),
			kgo.RequestRetries(1), kgo.RecordRetries(1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	if err := client(user.Password).ProduceSync(ctx, &kgo.Record{Topic: "secured", Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatalf("produce over SASL_SSL: %v", err)
	}
	got, err := ReadAll(ctx, k.InternalAddrs(), []string{"^secured$"})
	if err != nil || len(got) != 1 || string(got[0].Value) != "v" {
		t.Fatalf("read back %d records (%v), want the one produced", len(got), err)
	}
	err = client("wrong").ProduceSync(ctx, &kgo.Record{Topic: "secured", Value: []byte("v")}).FirstErr()
	if !errors.Is(err, kerr.SaslAuthenticationFailed) {
		t.Errorf("produce with a wrong password: %v, want SASL_AUTHENTICATION_FAILED", err)
	}
}

// TestApacheKafkaClusterKillRestart kills a partition's leader in a
// three-broker cluster and starts it again: leadership moves, the broker
// rejoins, and produce with acks=all works throughout.
func TestApacheKafkaClusterKillRestart(t *testing.T) {
	requireJava(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	k, err := StartApacheKafka(ctx, ApacheOptions{Brokers: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	if err := k.CreateTopic(ctx, "replicated", 1, 3, nil); err != nil {
		t.Fatal(err)
	}
	leader, err := k.LeaderOf(ctx, "replicated", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.KillBroker(leader); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs()...), kgo.RequiredAcks(kgo.AllISRAcks()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "replicated", Value: []byte("after kill")}).FirstErr(); err != nil {
		t.Fatalf("produce with one of three brokers down: %v", err)
	}
	next, err := k.LeaderOf(ctx, "replicated", 0)
	if err != nil || next == leader {
		t.Errorf("leader after killing broker %d = %d (%v), want another", leader, next, err)
	}
	if err := k.StartBroker(ctx, leader); err != nil {
		t.Fatal(err)
	}
	k.Close()
	k.Close()
}

// TestApacheKafkaDeleteTopic deletes a topic that holds a record and
// creates it again at once: the new topic is empty. Version and PIDs
// describe the running broker.
func TestApacheKafkaDeleteTopic(t *testing.T) {
	requireJava(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k, err := StartApacheKafka(ctx, ApacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	if err := k.CreateTopic(ctx, "recreated", 3, 1, nil); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Addrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "recreated", Value: []byte("old")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := k.DeleteTopic(ctx, "recreated"); err != nil {
		t.Fatal(err)
	}
	if err := k.CreateTopic(ctx, "recreated", 3, 1, nil); err != nil {
		t.Fatalf("create right after delete: %v", err)
	}
	ends, err := EndOffsets(ctx, k.Addrs(), []string{"^recreated$"})
	if err != nil {
		t.Fatal(err)
	}
	var records int64
	for _, e := range ends {
		records += e
	}
	if len(ends) != 3 || records != 0 {
		t.Errorf("recreated topic: %d partitions holding %d records, want 3 holding 0", len(ends), records)
	}
	if err := k.DeleteTopic(ctx, "never-created"); err != nil {
		t.Errorf("delete a topic that does not exist: %v, want nil", err)
	}

	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	content, err := os.ReadFile(filepath.Join(root, kafkaJars.pom))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := k.Version(), pomProperty(content, kafkaJars.versionProperty); got != want {
		t.Errorf("Version() = %q, want %q (java/kafka/pom.xml)", got, want)
	}
	pids := k.PIDs()
	if len(pids) != 1 {
		t.Fatalf("PIDs() = %v, want one java process", pids)
	}
	if cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pids[0]) + "/cmdline"); err != nil || !strings.Contains(string(cmdline), "kafka.Kafka") {
		t.Errorf("pid %d is not the broker (%v): %q", pids[0], err, cmdline)
	}
}
