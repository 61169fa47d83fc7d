package devenv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// clusterMetadata is what a metadata request says about the cluster.
type clusterMetadata struct {
	brokers    []int // node ids
	partitions map[string][]partitionMetadata
}

type partitionMetadata struct {
	leader   int
	replicas []int32
	isr      []int32
}

// inAllISRs says whether node is in the ISR of every partition it is a
// replica of.
func (m clusterMetadata) inAllISRs(node int) bool {
	for _, ps := range m.partitions {
		for _, p := range ps {
			if slices.Contains(p.replicas, int32(node)) && !slices.Contains(p.isr, int32(node)) {
				return false
			}
		}
	}
	return true
}

// adminClient is a client on the plaintext listeners of the brokers.
func (k *ApacheKafka) adminClient() (*kgo.Client, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.InternalAddrs()...), kgo.RequestRetries(2))
	if err != nil {
		return nil, fmt.Errorf("apache kafka client: %w", err)
	}
	return cl, nil
}

// metadata asks the cluster about its brokers and topics (all of them when
// topics is empty).
func (k *ApacheKafka) metadata(ctx context.Context, topics ...string) (clusterMetadata, error) {
	cl, err := k.adminClient()
	if err != nil {
		return clusterMetadata{}, err
	}
	defer cl.Close()
	req := kmsg.NewPtrMetadataRequest()
	for _, t := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(t)
		req.Topics = append(req.Topics, rt)
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return clusterMetadata{}, fmt.Errorf("metadata: %w", err)
	}
	m := clusterMetadata{partitions: make(map[string][]partitionMetadata)}
	for _, b := range resp.Brokers {
		m.brokers = append(m.brokers, int(b.NodeID))
	}
	for _, t := range resp.Topics {
		if t.Topic == nil {
			continue
		}
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return clusterMetadata{}, fmt.Errorf("metadata of topic %s: %w", *t.Topic, err)
		}
		ps := make([]partitionMetadata, len(t.Partitions))
		for _, p := range t.Partitions {
			if int(p.Partition) < len(ps) {
				ps[p.Partition] = partitionMetadata{leader: int(p.Leader), replicas: p.Replicas, isr: p.ISR}
			}
		}
		m.partitions[*t.Topic] = ps
	}
	return m, nil
}

// waitReady polls the cluster's metadata until ready holds, failing early
// when a broker process exits.
func (k *ApacheKafka) waitReady(ctx context.Context, what string, ready func(clusterMetadata) bool, topics ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last error
	for {
		if node, ok := k.exited(); ok {
			return fmt.Errorf("apache kafka: %s exited while waiting for %s; its log (%s):\n%s",
				node.name, what, k.logDir, k.nodeLogTail(node, 30))
		}
		pollCtx, cancelPoll := context.WithTimeout(ctx, 5*time.Second)
		m, err := k.metadata(pollCtx, topics...)
		cancelPoll()
		if err == nil && ready(m) {
			return nil
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("brokers %v, partitions %+v", m.brokers, m.partitions)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("apache kafka: waiting for %s: %w; last seen: %v", what, context.Cause(ctx), last)
		case <-time.After(200 * time.Millisecond): // poll interval
		}
	}
}

func (k *ApacheKafka) nodeLogTail(node *kafkaNode, n int) string {
	for i, b := range k.brokers {
		if b == node {
			return k.LogTail(i, n)
		}
	}
	return "(see " + k.logDir + "/" + node.name + ".log)"
}

// CreateTopic creates a topic and waits until every partition has a leader
// and its full ISR. replicationFactor 0 means the broker default.
func (k *ApacheKafka) CreateTopic(ctx context.Context, name string, partitions, replicationFactor int, configs map[string]string) error {
	cl, err := k.adminClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 30_000
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic = name
	rt.NumPartitions = int32(partitions)
	rt.ReplicationFactor = int16(replicationFactor)
	if replicationFactor == 0 {
		rt.ReplicationFactor = -1
	}
	for key, v := range configs {
		c := kmsg.NewCreateTopicsRequestTopicConfig()
		c.Name, c.Value = key, kmsg.StringPtr(v)
		rt.Configs = append(rt.Configs, c)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("create topic %s: %w", name, err)
	}
	for _, t := range resp.Topics {
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			msg := ""
			if t.ErrorMessage != nil {
				msg = ": " + *t.ErrorMessage
			}
			return fmt.Errorf("create topic %s: %w%s", name, err, msg)
		}
	}
	return k.waitReady(ctx, "topic "+name+" to have leaders", func(m clusterMetadata) bool {
		ps := m.partitions[name]
		if len(ps) != partitions {
			return false
		}
		for _, p := range ps {
			if p.leader < 0 || len(p.isr) < len(p.replicas) || len(p.replicas) == 0 {
				return false
			}
		}
		return true
	}, name)
}

// LeaderOf is the index of the broker that leads a partition.
func (k *ApacheKafka) LeaderOf(ctx context.Context, topic string, partition int) (int, error) {
	m, err := k.metadata(ctx, topic)
	if err != nil {
		return 0, err
	}
	ps := m.partitions[topic]
	if partition < 0 || partition >= len(ps) {
		return 0, fmt.Errorf("leader of %s[%d]: topic has %d partitions", topic, partition, len(ps))
	}
	leader := ps[partition].leader
	for i, b := range k.brokers {
		if b.id == leader {
			return i, nil
		}
	}
	return 0, fmt.Errorf("leader of %s[%d]: no leader (node %d)", topic, partition, leader)
}

// DeleteTopic deletes a topic and waits until the cluster's metadata no
// longer lists it, so that a topic of the same name can be created at once
// (in KRaft the name is free as soon as the controller has removed it; the
// brokers delete the old log files in the background). Deleting a topic
// that does not exist is not an error.
func (k *ApacheKafka) DeleteTopic(ctx context.Context, name string) error {
	cl, err := k.adminClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	req := kmsg.NewPtrDeleteTopicsRequest()
	req.TimeoutMillis = 30_000
	rt := kmsg.NewDeleteTopicsRequestTopic()
	rt.Topic = kmsg.StringPtr(name)
	req.Topics = append(req.Topics, rt)
	req.TopicNames = append(req.TopicNames, name) // versions before 6 name topics here
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("delete topic %s: %w", name, err)
	}
	for _, t := range resp.Topics {
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
			return fmt.Errorf("delete topic %s: %w", name, err)
		}
	}
	return k.waitReady(ctx, "topic "+name+" to be deleted", func(m clusterMetadata) bool {
		_, listed := m.partitions[name]
		return !listed
	})
}
