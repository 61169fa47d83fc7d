package outbox

import "testing"

func TestUnacked(t *testing.T) {
	noPublishedAt := DefaultMapping()
	noPublishedAt.PublishedAt = ""
	tests := []struct {
		name           string
		mapping        Mapping
		hasPublishedAt bool
		want           string
	}{
		{"table with published_at", DefaultMapping(), true, `"published_at" IS NULL`},
		{"table without published_at", DefaultMapping(), false, "TRUE"},
		{"mapping names none", noPublishedAt, true, "TRUE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.mapping.Unacked(tt.hasPublishedAt); got != tt.want {
				t.Errorf("Unacked(%v) = %q, want %q", tt.hasPublishedAt, got, tt.want)
			}
		})
	}
}

func TestAckModeRecordsDelivery(t *testing.T) {
	for mode, want := range map[AckMode]bool{AckDelete: true, AckMark: true, AckNone: false, "later": false} {
		if got := mode.RecordsDelivery(); got != want {
			t.Errorf("%q.RecordsDelivery() = %v, want %v", mode, got, want)
		}
	}
}
