package outbox

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
