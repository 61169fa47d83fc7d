package devenv

import (
	"fmt"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Kafka is an in-process Kafka-protocol cluster of one broker listening on a
// loopback port: clients reach it over TCP exactly as they reach a broker.
type Kafka struct {
	cluster *kfake.Cluster
}

// StartKafka starts a one-broker kfake cluster that creates topics on first
// use with 3 partitions. opts are applied after those defaults, so they can
// override them (kfake.SeedTopics, kfake.DefaultNumPartitions, …).
func StartKafka(opts ...kfake.Opt) (*Kafka, error) {
	all := append([]kfake.Opt{
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(3),
	}, opts...)
	c, err := kfake.NewCluster(all...)
	if err != nil {
		return nil, fmt.Errorf("start kfake cluster: %w", err)
	}
	return &Kafka{cluster: c}, nil
}

// Addrs are the brokers' host:port addresses.
func (k *Kafka) Addrs() []string { return k.cluster.ListenAddrs() }

// Cluster is the underlying kfake cluster, for fault injection
// (Cluster.Fault, Cluster.ControlKey with kmsg.Produce, …).
func (k *Kafka) Cluster() *kfake.Cluster { return k.cluster }

// Close shuts the cluster down; it may be called more than once.
func (k *Kafka) Close() { k.cluster.Close() }
