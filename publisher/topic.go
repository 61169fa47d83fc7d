package publisher

import (
	"errors"
	"fmt"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// ErrInvalidTopic is wrapped by the error of an event whose topic Kafka would
// not accept as a name.
var ErrInvalidTopic = errors.New("invalid topic name")

// topicCacheLimit bounds each topic cache: aggregate types are few, but
// per-row topics come from the rows and could be anything.
const topicCacheLimit = 4096

// validTopic wraps ErrInvalidTopic when Kafka would refuse name as a topic
// name (outbox.ValidTopic).
func validTopic(name string) error {
	if !outbox.ValidTopic(name) {
		return fmt.Errorf("%w: %q", ErrInvalidTopic, name)
	}
	return nil
}

// routeTopic returns the topic ev goes to, without caching. With an error
// (an invalid name) it still returns the name, for dead letters and logs.
func routeTopic(template string, ev *outbox.Event) (string, error) {
	var name string
	if ev.Topic != nil {
		name = string(ev.Topic)
	} else {
		name = outbox.ExpandTopic(template, ev.AggregateType)
	}
	return name, validTopic(name)
}

// route is a cached routing decision.
type route struct {
	topic string
	err   error
}

// topicCache remembers routing decisions so that the hot path does not
// allocate a topic string per record. It is not safe for concurrent use.
type topicCache struct {
	template  string
	templated map[string]route // by aggregate type
	overrides map[string]route // by the event's own topic
}

func newTopicCache(template string) *topicCache {
	return &topicCache{
		template:  template,
		templated: make(map[string]route),
		overrides: make(map[string]route),
	}
}

func (c *topicCache) topic(ev *outbox.Event) (string, error) {
	m, key := c.templated, ev.AggregateType
	if ev.Topic != nil {
		m, key = c.overrides, ev.Topic
	}
	// The string(key) conversion in a map index does not allocate.
	if r, ok := m[string(key)]; ok {
		return r.topic, r.err
	}
	topic, err := routeTopic(c.template, ev)
	if len(m) >= topicCacheLimit {
		clear(m)
	}
	m[string(key)] = route{topic: topic, err: err}
	return topic, err
}
