package devenv

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// ReadRecords consumes, with a client of its own and no consumer group,
// every topic matching one of the regular expressions in topics (matched as
// kgo.ConsumeRegex does, unanchored) from the earliest offset, until until
// returns true for the records read so far or ctx ends. Topics that appear
// while it reads are picked up within a second.
//
// Records of one partition are in offset order. When ctx ends first, the
// records read so far are returned with the error.
func ReadRecords(ctx context.Context, brokers, topics []string, until func(got []*kgo.Record) bool) ([]*kgo.Record, error) {
	var got []*kgo.Record
	err := consume(ctx, brokers, topics, func(batch []*kgo.Record) bool {
		got = append(got, batch...)
		return until(got)
	})
	return got, err
}

// ReadAll reads every record that the topics matching topics hold when it is
// called, as ReadRecords does. Records produced meanwhile may be included.
func ReadAll(ctx context.Context, brokers, topics []string) ([]*kgo.Record, error) {
	ends, err := EndOffsets(ctx, brokers, topics)
	if err != nil {
		return nil, err
	}
	missing := 0 // partitions not yet read to their end
	for _, e := range ends {
		if e > 0 {
			missing++
		}
	}
	var got []*kgo.Record
	err = consume(ctx, brokers, topics, func(batch []*kgo.Record) bool {
		for _, r := range batch {
			got = append(got, r)
			tp := TopicPartition{r.Topic, r.Partition}
			if end, ok := ends[tp]; ok && r.Offset == end-1 {
				missing--
			}
		}
		return missing == 0
	})
	return got, err
}

// TopicPartition names one partition of a topic.
type TopicPartition struct {
	Topic     string
	Partition int32
}

// EndOffsets returns the high watermark (the offset the next record will
// get) of every partition of the topics matching topics.
func EndOffsets(ctx context.Context, brokers, topics []string) (map[TopicPartition]int64, error) {
	patterns, err := compile(topics)
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, fmt.Errorf("end offsets: %w", err)
	}
	defer cl.Close()

	meta, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, cl)
	if err != nil {
		return nil, fmt.Errorf("end offsets: metadata: %w", err)
	}
	list := kmsg.NewPtrListOffsetsRequest()
	list.ReplicaID = -1
	for _, t := range meta.Topics {
		if t.Topic == nil || !matchAny(patterns, *t.Topic) {
			continue
		}
		lt := kmsg.NewListOffsetsRequestTopic()
		lt.Topic = *t.Topic
		for _, p := range t.Partitions {
			lp := kmsg.NewListOffsetsRequestTopicPartition()
			lp.Partition = p.Partition
			lp.Timestamp = -1 // latest
			lt.Partitions = append(lt.Partitions, lp)
		}
		list.Topics = append(list.Topics, lt)
	}
	ends := make(map[TopicPartition]int64)
	if len(list.Topics) == 0 {
		return ends, nil
	}
	resp, err := list.RequestWith(ctx, cl)
	if err != nil {
		return nil, fmt.Errorf("end offsets: list offsets: %w", err)
	}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				return nil, fmt.Errorf("end offsets: %s[%d]: %w", t.Topic, p.Partition, err)
			}
			ends[TopicPartition{t.Topic, p.Partition}] = p.Offset
		}
	}
	return ends, nil
}

// consume feeds each fetched batch to handle until it returns true. handle
// is called once with nothing before the first fetch.
func consume(ctx context.Context, brokers, topics []string, handle func(batch []*kgo.Record) bool) error {
	if handle(nil) {
		return nil
	}
	if _, err := compile(topics); err != nil {
		return err
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeRegex(),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.MetadataMinAge(100*time.Millisecond),
		kgo.MetadataMaxAge(time.Second), // how soon a new topic is seen
		kgo.FetchMaxWait(200*time.Millisecond),
	)
	if err != nil {
		return fmt.Errorf("read records: %w", err)
	}
	defer cl.Close()
	for {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("read records: %w", context.Cause(ctx))
		}
		var batch []*kgo.Record
		fetches.EachRecord(func(r *kgo.Record) { batch = append(batch, r) })
		if handle(batch) {
			return nil
		}
		// Fetch errors (a topic not there yet, a leader moving) are retried
		// by the client; only a closed client ends the loop.
		for _, fe := range fetches.Errors() {
			if errors.Is(fe.Err, kgo.ErrClientClosed) {
				return fmt.Errorf("read records: %w", fe.Err)
			}
		}
	}
}

func compile(topics []string) ([]*regexp.Regexp, error) {
	if len(topics) == 0 {
		return nil, errors.New("read records: no topic patterns")
	}
	var res []*regexp.Regexp
	for _, t := range topics {
		re, err := regexp.Compile(t)
		if err != nil {
			return nil, fmt.Errorf("topic pattern %q: %w", t, err)
		}
		res = append(res, re)
	}
	return res, nil
}

func matchAny(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}
