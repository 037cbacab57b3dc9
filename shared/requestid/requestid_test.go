package requestid

import (
	"regexp"
	"sort"
	"testing"
	"time"
)

var hex32 = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestNew(t *testing.T) {
	t.Parallel()

	t.Run("FormatAndVersion", func(t *testing.T) {
		t.Parallel()
		id := New()
		s := id.String()
		if !hex32.MatchString(s) {
			t.Fatalf("id %q is not 32 lowercase hex", s)
		}
		if s[12] != '7' {
			t.Errorf("version nibble = %c, want 7", s[12])
		}
		if id.IsZero() {
			t.Error("id is zero")
		}
	})

	t.Run("TimeOrdered", func(t *testing.T) {
		t.Parallel()
		const n = 10000
		ids := make([]string, n)
		for i := range ids {
			ids[i] = New().String()
		}
		if !sort.StringsAreSorted(ids) {
			t.Fatal("ids made in sequence are not sorted")
		}
		seen := make(map[string]bool, n)
		for _, s := range ids {
			if seen[s] {
				t.Fatalf("duplicate id %s", s)
			}
			seen[s] = true
		}
	})

	t.Run("NowNotAnotherTime", func(t *testing.T) {
		t.Parallel()
		_ = NewAt(time.Now().Add(24 * time.Hour))
		if got := time.Since(New().Time()); got < -time.Minute || got > time.Minute {
			t.Errorf("New() after NewAt(tomorrow) is %v away from now", got)
		}
	})

	t.Run("EmbedsTime", func(t *testing.T) {
		t.Parallel()
		at := time.Date(2030, 1, 2, 3, 4, 5, 6_000_000, time.UTC)
		if got := NewAt(at).Time(); !got.Equal(at) {
			t.Errorf("Time() = %v, want %v", got, at)
		}
	})
}

func TestParse(t *testing.T) {
	t.Parallel()
	good := New().String()
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"Valid", good, true},
		{"Uppercase", "0190F5B0C2A87D3E9B1F4C6A2D8E0F11", false},
		{"Dashes", "0190f5b0-c2a8-7d3e-9b1f-4c6a2d8e0f11", false},
		{"Short", good[:31], false},
		{"Long", good + "0", false},
		{"Zero", "00000000000000000000000000000000", false},
		{"NotHex", "0190f5b0c2a87d3e9b1f4c6a2d8e0fzz", false},
		{"Empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id, err := Parse(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("Parse(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if tt.ok && id.String() != tt.in {
				t.Errorf("round trip = %q, want %q", id.String(), tt.in)
			}
		})
	}
}
