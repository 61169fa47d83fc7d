package outbox

import (
	"fmt"
	"strings"
)

// The topic template's placeholders: each is replaced by the event's
// routing value (its aggregatetype column). ${routedByValue} is the name
// Debezium's outbox event router gives it, so its templates work as they are.
const (
	PlaceholderAggregateType = "${aggregatetype}"
	PlaceholderRoutedByValue = "${routedByValue}"
)

// ExpandTopic replaces the placeholders of template by routing.
func ExpandTopic(template string, routing []byte) string {
	if !strings.Contains(template, "${") {
		return template
	}
	r := string(routing)
	return strings.ReplaceAll(strings.ReplaceAll(template, PlaceholderAggregateType, r), PlaceholderRoutedByValue, r)
}

// CheckTopicTemplate refuses a template with a placeholder other than
// ${aggregatetype} and ${routedByValue} (a "${" left unexpanded would make
// every topic name invalid), or whose fixed part cannot be in a topic name.
func CheckTopicTemplate(template string) error {
	for rest := template; ; {
		i := strings.Index(rest, "${")
		if i < 0 {
			break
		}
		rest = rest[i:]
		end := strings.IndexByte(rest, '}')
		if end < 0 {
			return fmt.Errorf("unterminated placeholder %q (known: %s, %s)", rest, PlaceholderAggregateType, PlaceholderRoutedByValue)
		}
		if p := rest[:end+1]; p != PlaceholderAggregateType && p != PlaceholderRoutedByValue {
			return fmt.Errorf("unknown placeholder %s (known: %s, %s)", p, PlaceholderAggregateType, PlaceholderRoutedByValue)
		}
		rest = rest[end+1:]
	}
	if name := ExpandTopic(template, []byte("x")); !ValidTopic(name) {
		return fmt.Errorf("%q is not a valid topic name with every placeholder filled in (Kafka allows 1 to 249 of [a-zA-Z0-9._-])", name)
	}
	return nil
}

// maxTopicLen is Kafka's limit on a topic name.
const maxTopicLen = 249

// ValidTopic reports whether Kafka accepts name as a topic name: 1 to 249
// characters of [a-zA-Z0-9._-], and neither "." nor "..".
func ValidTopic(name string) bool {
	if name == "" || len(name) > maxTopicLen || name == "." || name == ".." {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
