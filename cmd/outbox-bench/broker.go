package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outbox-relay/outbox-relay/internal/devenv"
)

// topicPartitions is the bench topic's partition count on either broker.
const topicPartitions = 3

// broker is the Kafka every scenario publishes to (-kafka).
type broker interface {
	// fresh returns the bootstrap addresses of a broker on which the bench
	// topic exists and is empty; release ends the run's use of it.
	fresh(ctx context.Context) (addrs []string, release func(), err error)
	// pids are the broker's own processes, whose CPU the "broker" column
	// counts; none for kfake, which runs inside the benchmark process.
	pids() []int
	// name is the one-line label the reports put above each table.
	name() string
	// details describes the broker's setup for the Machine table.
	details() string
	close()
}

// kfakeBroker is franz-go's in-process Kafka-protocol cluster: a fresh one
// for every run.
type kfakeBroker struct{}

func (kfakeBroker) fresh(context.Context) ([]string, func(), error) {
	k, err := devenv.StartKafka(kfake.SeedTopics(topicPartitions, topicName))
	if err != nil {
		return nil, nil, err
	}
	return k.Addrs(), k.Close, nil
}

func (kfakeBroker) pids() []int  { return nil }
func (kfakeBroker) name() string { return "kfake (in-process, 1 broker, 127.0.0.1)" }
func (kfakeBroker) details() string {
	return fmt.Sprintf("kfake (franz-go's in-process Kafka-protocol cluster) in the benchmark process: 1 broker, "+
		"%d partitions, loopback TCP; a fresh cluster per run; its CPU is in the bench column", topicPartitions)
}
func (kfakeBroker) close() {}

// apacheHeap is the broker's JVM heap (-Xmx, -Xms): what
// kafka-server-start.sh gives a broker, not the test suite's small one.
const (
	apacheHeap     = "1g"
	apacheHeapText = "1 GiB"
)

// apacheJVMArgs are kafka-server-start.sh's performance options (G1 with
// short pauses) on top of devenv's defaults, whose serial collector they
// replace.
var apacheJVMArgs = []string{"-Xmx" + apacheHeap, "-Xms" + apacheHeap, "-XX:-UseSerialGC", "-XX:+UseG1GC",
	"-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
	"-XX:MaxInlineLevel=15"}

// apacheBroker is one Apache Kafka broker+controller (KRaft) for the whole
// benchmark; each run gets the bench topic deleted and created again, empty.
type apacheBroker struct {
	kafka *devenv.ApacheKafka
}

func startApacheBroker(ctx context.Context, b *bench) (*apacheBroker, error) {
	b.logf("starting an Apache Kafka broker (KRaft, heap %s; the first run fetches its jars with Maven)", apacheHeapText)
	t0 := time.Now()
	k, err := devenv.StartApacheKafka(ctx, devenv.ApacheOptions{
		LogDir:  filepath.Join(b.o.outDir, "logs", "kafka"),
		JVMArgs: apacheJVMArgs,
	})
	if err != nil {
		return nil, err
	}
	a := &apacheBroker{kafka: k}
	b.logf("Apache Kafka %s ready at %s in %.1fs", k.Version(), strings.Join(k.Addrs(), ","), time.Since(t0).Seconds())
	if err := a.warmUp(ctx, b); err != nil {
		k.Close()
		return nil, err
	}
	return a, nil
}

// warmUpRecords go through a fresh broker before the first run, so that
// the JVM's JIT compiler has compiled the produce and fetch paths and the
// first timed run does not pay for it.
const warmUpRecords = 100_000

func (a *apacheBroker) warmUp(ctx context.Context, b *bench) error {
	const topic = "bench-warm-up"
	t0 := time.Now()
	if err := a.kafka.CreateTopic(ctx, topic, topicPartitions, 1, nil); err != nil {
		return err
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(a.kafka.Addrs()...), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(time.Millisecond))
	if err != nil {
		return fmt.Errorf("warm-up client: %w", err)
	}
	defer cl.Close()
	value := []byte(b.payload(0))
	errs := make(chan error, 1)
	for i := range warmUpRecords {
		cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(fmt.Sprint(i % 1000)), Value: value}, func(_ *kgo.Record, err error) {
			if err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	select {
	case err := <-errs:
		return fmt.Errorf("warm-up produce: %w", err)
	default:
	}
	if _, err := devenv.ReadAll(ctx, a.kafka.Addrs(), []string{"^" + topic + "$"}); err != nil {
		return fmt.Errorf("warm-up read: %w", err)
	}
	b.logf("broker warmed up with %d records in %.1fs", warmUpRecords, time.Since(t0).Seconds())
	return a.kafka.DeleteTopic(ctx, topic)
}

func (a *apacheBroker) fresh(ctx context.Context) ([]string, func(), error) {
	if err := a.kafka.DeleteTopic(ctx, topicName); err != nil {
		return nil, nil, err
	}
	if err := a.kafka.CreateTopic(ctx, topicName, topicPartitions, 1, nil); err != nil {
		return nil, nil, err
	}
	return a.kafka.Addrs(), func() {}, nil
}

func (a *apacheBroker) pids() []int { return a.kafka.PIDs() }
func (a *apacheBroker) name() string {
	return "Apache Kafka " + a.kafka.Version() + " (1 node, 127.0.0.1)"
}
func (a *apacheBroker) details() string {
	return fmt.Sprintf("Apache Kafka %s, one broker+controller (KRaft) as a java process on loopback for the whole run, "+
		"heap %s (G1), auto-creation off; topic %s with %d partitions, replication factor 1, deleted and created "+
		"empty before each run; warmed up with %s records first; the relay and the poller produce with acks=all",
		a.kafka.Version(), apacheHeapText, topicName, topicPartitions, num(warmUpRecords))
}
func (a *apacheBroker) close() { a.kafka.Close() }
