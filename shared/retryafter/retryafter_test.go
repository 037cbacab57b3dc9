package retryafter_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/shared/retryafter"
)

func TestParse(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 28, 14, 0, 0, 0, time.UTC)
	const limit = time.Hour
	tests := []struct {
		name   string
		value  string
		want   time.Duration
		wantOK bool
	}{
		{"Seconds", "120", 2 * time.Minute, true},
		{"Spaces", " 7 ", 7 * time.Second, true},
		{"Zero", "0", 0, true},
		{"AtTheLimit", "3600", limit, true},
		{"Capped", "86400", limit, true},
		{"Huge", "99999999999999999999", limit, true},
		{"Date", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"DatePast", now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"DateCapped", now.Add(48 * time.Hour).Format(http.TimeFormat), limit, true},
		{"Negative", "-5", 0, false},
		{"Fraction", "1.5", 0, false},
		{"Garbage", "soon", 0, false},
		{"Empty", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := retryafter.Parse(tt.value, now, limit)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("Parse(%q) = %v, %v; want %v, %v", tt.value, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}
