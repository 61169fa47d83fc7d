package dlq

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// span is the part of a partition's log that holds records: from the log
// start offset up to, not including, the end offset (the high watermark).
type span struct{ start, end int64 }

// spans returns the span of every partition of topic at the time of the
// call; exists is false when the topic does not exist (it is never
// created here).
func spans(ctx context.Context, cl *kgo.Client, topic string) (_ map[int32]span, exists bool, err error) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	defer func() {
		// The client retries connection failures; when they last, say what
		// usually causes them rather than just "deadline exceeded".
		if errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil {
			err = fmt.Errorf("no answer from the brokers within %s (are they up, and are the TLS and SASL settings right?): %w", requestTimeout, err)
		}
	}()

	meta := kmsg.NewPtrMetadataRequest()
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(topic)
	meta.Topics = []kmsg.MetadataRequestTopic{mt}
	meta.AllowAutoTopicCreation = false
	metaResp, err := meta.RequestWith(ctx, cl)
	if err != nil {
		return nil, false, fmt.Errorf("read metadata of topic %q: %w", topic, err)
	}
	if len(metaResp.Topics) != 1 {
		return nil, false, fmt.Errorf("read metadata of topic %q: %d topics in the answer", topic, len(metaResp.Topics))
	}
	t := metaResp.Topics[0]
	if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
		if errors.Is(err, kerr.UnknownTopicOrPartition) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("read metadata of topic %q: %w", topic, err)
	}

	result := make(map[int32]span, len(t.Partitions))
	for _, which := range []int64{-2, -1} { // earliest, then latest
		list := kmsg.NewPtrListOffsetsRequest()
		list.ReplicaID = -1
		lt := kmsg.NewListOffsetsRequestTopic()
		lt.Topic = topic
		for _, p := range t.Partitions {
			lp := kmsg.NewListOffsetsRequestTopicPartition()
			lp.Partition = p.Partition
			lp.Timestamp = which
			lt.Partitions = append(lt.Partitions, lp)
		}
		list.Topics = []kmsg.ListOffsetsRequestTopic{lt}
		resp, err := list.RequestWith(ctx, cl)
		if err != nil {
			return nil, false, fmt.Errorf("list offsets of topic %q: %w", topic, err)
		}
		for _, rt := range resp.Topics {
			for _, p := range rt.Partitions {
				if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
					return nil, false, fmt.Errorf("list offsets of %s[%d]: %w", topic, p.Partition, err)
				}
				s := result[p.Partition]
				if which == -2 {
					s.start = p.Offset
				} else {
					s.end = p.Offset
				}
				result[p.Partition] = s
			}
		}
	}
	return result, true, nil
}

// ErrGroupBusy is returned by Replay when the consumer group has active
// members: another replay with the same group is running (or was killed
// less than a session timeout ago).
var ErrGroupBusy = errors.New("consumer group has active members")

// checkGroupIdle refuses a group with members, so that two replays never
// share the work and commit over each other.
func checkGroupIdle(ctx context.Context, cl *kgo.Client, group string) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	for {
		err := describeGroupIdle(ctx, cl, group)
		// A broker whose __consumer_offsets is still being created or
		// loaded (the first group on a new cluster, a coordinator moving)
		// answers COORDINATOR_NOT_AVAILABLE or COORDINATOR_LOAD_IN_PROGRESS
		// for a while: retriable, so wait for it within the deadline.
		if !kerr.IsRetriable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (still after %s)", err, requestTimeout)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func describeGroupIdle(ctx context.Context, cl *kgo.Client, group string) error {
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{group}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("describe consumer group %q: %w", group, err)
	}
	for _, g := range resp.Groups {
		if err := kerr.ErrorForCode(g.ErrorCode); err != nil {
			if errors.Is(err, kerr.GroupIDNotFound) { // never used: idle
				continue
			}
			return fmt.Errorf("describe consumer group %q: %w", group, err)
		}
		if len(g.Members) > 0 {
			return fmt.Errorf("%w: group %q has %d (state %s): another replay is running, or one was killed less than a session timeout (45s) ago; wait, or choose another group",
				ErrGroupBusy, group, len(g.Members), g.State)
		}
	}
	return nil
}
