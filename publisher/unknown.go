package publisher

import (
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// unknownTopics follows the topics the brokers answer
// UNKNOWN_TOPIC_OR_PARTITION for. Such a topic is retried like any broker
// error while it may be being created; once it has been unknown on every
// attempt for the timeout, its records fail as unknown_topic (and go to the
// dead-letter topic) so that the records behind them flow.
type unknownTopics struct {
	timeout time.Duration
	now     func() time.Time
	streaks map[string]unknownStreak
}

// unknownStreak is a run of attempts that all found the topic unknown.
type unknownStreak struct{ first, last time.Time }

func newUnknownTopics(timeout time.Duration) *unknownTopics {
	return &unknownTopics{timeout: timeout, now: time.Now, streaks: map[string]unknownStreak{}}
}

// isUnknownTopic reports whether err says the brokers do not know a topic.
func isUnknownTopic(err error) bool {
	return errors.Is(err, kafka.UnknownTopicOrPartition)
}

// failed records an attempt that found topic unknown. It returns an error for
// the records of topic once the streak has lasted the timeout, nil while
// they are to be retried. A streak whose last attempt is older than the
// timeout (nothing was sent to the topic meanwhile) starts over.
func (u *unknownTopics) failed(topic string, cause error) error {
	now := u.now()
	s, ok := u.streaks[topic]
	if !ok || now.Sub(s.last) > u.timeout {
		s.first = now
	}
	s.last = now
	u.streaks[topic] = s
	if d := now.Sub(s.first); d >= u.timeout {
		return fmt.Errorf("topic %q unknown to the brokers for %s (auto-creation off? create it, then replay the dead letters): %w",
			topic, d.Round(time.Millisecond), cause)
	}
	return nil
}

// written ends the streaks of the topics of msgs, which the brokers took.
func (u *unknownTopics) written(msgs []kafka.Message) {
	if len(u.streaks) == 0 {
		return
	}
	for i := range msgs {
		delete(u.streaks, msgs[i].Topic)
	}
}

// byTopic splits msgs and indexes into runs of one topic each, keeping the
// order within every topic.
func byTopic(msgs []kafka.Message, indexes []int) (groups [][]kafka.Message, groupIndexes [][]int) {
	at := map[string]int{}
	for i := range msgs {
		g, ok := at[msgs[i].Topic]
		if !ok {
			g = len(groups)
			at[msgs[i].Topic] = g
			groups, groupIndexes = append(groups, nil), append(groupIndexes, nil)
		}
		groups[g] = append(groups[g], msgs[i])
		groupIndexes[g] = append(groupIndexes[g], indexes[i])
	}
	return groups, groupIndexes
}
