package publisher

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/outbox-relay/outbox-relay/outbox"
)

func TestTopicRouting(t *testing.T) {
	tests := []struct {
		name          string
		template      string
		aggregateType string
		override      []byte
		want          string // "" when the topic is invalid
	}{
		{"default template", DefaultTopicTemplate, "order", nil, "outbox.event.order"},
		{"Debezium's template", "outbox.event.${routedByValue}", "order", nil, "outbox.event.order"},
		{"both placeholders", "${routedByValue}.${aggregatetype}", "a", nil, "a.a"},
		{"placeholder twice", "${aggregatetype}.x.${aggregatetype}", "a", nil, "a.x.a"},
		{"no placeholder", "all-events", "order", nil, "all-events"},
		{"override wins", DefaultTopicTemplate, "order", []byte("billing_v2"), "billing_v2"},
		{"empty aggregate type", "${aggregatetype}", "", nil, ""},
		{"slash", DefaultTopicTemplate, "a/b", nil, ""},
		{"space", DefaultTopicTemplate, "a b", nil, ""},
		{"non-ascii", DefaultTopicTemplate, "é", nil, ""},
		{"dot", "${aggregatetype}", ".", nil, ""},
		{"dot dot override", DefaultTopicTemplate, "order", []byte(".."), ""},
		{"three dots are fine", DefaultTopicTemplate, "order", []byte("..."), "..."},
		{"empty override", DefaultTopicTemplate, "order", []byte{}, ""},
		{"249 chars", DefaultTopicTemplate, "order", []byte(strings.Repeat("a", 249)), strings.Repeat("a", 249)},
		{"250 chars", DefaultTopicTemplate, "order", []byte(strings.Repeat("a", 250)), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := &outbox.Event{AggregateType: []byte(tt.aggregateType), Topic: tt.override}
			cache := newTopicCache(tt.template)
			for range 2 { // a miss, then a hit
				got, err := cache.topic(ev)
				if tt.want == "" {
					if !errors.Is(err, ErrInvalidTopic) {
						t.Errorf("topic = %q, %v; want ErrInvalidTopic", got, err)
					}
					continue
				}
				if err != nil || got != tt.want {
					t.Errorf("topic = %q, %v; want %q, nil", got, err, tt.want)
				}
			}
			got, err := routeTopic(tt.template, ev)
			if (err == nil) != (tt.want != "") || (err == nil && got != tt.want) {
				t.Errorf("routeTopic = %q, %v; want %q", got, err, tt.want)
			}
			raw := outbox.ExpandTopic(tt.template, ev.AggregateType)
			if ev.Topic != nil {
				raw = string(ev.Topic)
			}
			if err != nil && got != raw {
				t.Errorf("routeTopic = %q with %v; want the invalid name %q for dead letters", got, err, raw)
			}
		})
	}
}

func TestTopicCacheDoesNotAllocate(t *testing.T) {
	cache := newTopicCache(DefaultTopicTemplate)
	events := []outbox.Event{
		{AggregateType: []byte("order")},
		{AggregateType: []byte("order"), Topic: []byte("custom")},
	}
	for i := range events {
		cache.topic(&events[i])
	}
	allocs := testing.AllocsPerRun(100, func() {
		for i := range events {
			cache.topic(&events[i])
		}
	})
	if allocs != 0 {
		t.Errorf("cached topic lookups allocate %v times, want 0", allocs)
	}
}

func TestTopicCacheIsBounded(t *testing.T) {
	cache := newTopicCache(DefaultTopicTemplate)
	for i := range 3 * topicCacheLimit {
		cache.topic(&outbox.Event{Topic: fmt.Appendf(nil, "topic-%d", i)})
	}
	if n := len(cache.overrides); n > topicCacheLimit {
		t.Errorf("override cache holds %d topics, want at most %d", n, topicCacheLimit)
	}
}
