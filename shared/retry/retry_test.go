package retry_test

import (
	"fmt"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/shared/retry"
)

func TestBackoff(t *testing.T) {
	t.Parallel()
	const s = time.Second
	tests := []struct {
		attempt      int
		initial, max time.Duration
		want         time.Duration
	}{
		{attempt: 1, initial: s, max: 5 * s, want: s},
		{attempt: 2, initial: s, max: 5 * s, want: 2 * s},
		{attempt: 3, initial: s, max: 5 * s, want: 4 * s},
		{attempt: 4, initial: s, max: 5 * s, want: 5 * s},
		{attempt: 10, initial: s, max: 5 * s, want: 5 * s},
		{attempt: 1000, initial: 10 * s, max: 60 * s, want: 60 * s},
		{attempt: 0, initial: s, max: 5 * s, want: s},
		{attempt: 3, initial: 0, max: 5 * s, want: 0},
		{attempt: 3, initial: s, max: 0, want: 0},
		{attempt: 1, initial: 8 * s, max: 3 * s, want: 3 * s},
		{attempt: 7, initial: 250 * time.Millisecond, max: 60 * s, want: 16 * s},
		{attempt: 80, initial: s, max: math.MaxInt64, want: math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("Attempt%dInitial%vMax%v", tt.attempt, tt.initial, tt.max), func(t *testing.T) {
			t.Parallel()
			if got := retry.Backoff(tt.attempt, tt.initial, tt.max); got != tt.want {
				t.Errorf("Backoff(%d, %v, %v) = %v, want %v", tt.attempt, tt.initial, tt.max, got, tt.want)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	p := retry.Policy{BackpressureDelay: 2 * time.Second, BackpressureMin: 100 * time.Millisecond}
	second := retry.Attempt{Number: 2, MaxAttempts: 3, InitialDelay: time.Second, MaxDelay: 5 * time.Second}
	last := retry.Attempt{Number: 3, MaxAttempts: 3, InitialDelay: time.Second, MaxDelay: 5 * time.Second}
	tests := []struct {
		name   string
		policy retry.Policy
		at     retry.Attempt
		answer retry.Answer
		want   retry.Decision
	}{
		{"Success", p, second, retry.Answer{Kind: retry.Success}, retry.Decision{}},
		{"Failed", p, second, retry.Answer{Kind: retry.Failed}, retry.Decision{}},
		{"RetryableBackoff", p, second, retry.Answer{Kind: retry.Retryable}, retry.Decision{Again: true, Delay: 2 * time.Second}},
		{"RetryableLastAttempt", p, last, retry.Answer{Kind: retry.Retryable}, retry.Decision{}},
		{"UnavailableRetryAfterLonger", p, second, retry.Answer{Kind: retry.Retryable, RetryAfter: "30"},
			retry.Decision{Again: true, Delay: 30 * time.Second}},
		{"UnavailableRetryAfterShorter", p, second, retry.Answer{Kind: retry.Retryable, RetryAfter: "0"},
			retry.Decision{Again: true, Delay: 2 * time.Second}},
		{"UnavailableRetryAfterCapped", p, second, retry.Answer{Kind: retry.Retryable, RetryAfter: "999999999"},
			retry.Decision{Again: true, Delay: retry.RetryAfterMax}},
		{"UnavailableRetryAfterDate", p, second, retry.Answer{Kind: retry.Retryable, RetryAfter: now.Add(time.Minute).Format(http.TimeFormat)},
			retry.Decision{Again: true, Delay: time.Minute}},
		{"NotReadyDefault", p, second, retry.Answer{Kind: retry.NotReady}, retry.Decision{Again: true, Uncount: true, Delay: 2 * time.Second}},
		{"NotReadyRetryAfter", p, second, retry.Answer{Kind: retry.NotReady, RetryAfter: "7"},
			retry.Decision{Again: true, Uncount: true, Delay: 7 * time.Second}},
		{"NotReadyRetryAfterZeroFloored", p, second, retry.Answer{Kind: retry.NotReady, RetryAfter: "0"},
			retry.Decision{Again: true, Uncount: true, Delay: 100 * time.Millisecond}},
		{"NotReadyPastDateFloored", p, second, retry.Answer{Kind: retry.NotReady, RetryAfter: now.Add(-time.Hour).Format(http.TimeFormat)},
			retry.Decision{Again: true, Uncount: true, Delay: 100 * time.Millisecond}},
		{"NotReadyNotReadyOnLastAttempt", p, last, retry.Answer{Kind: retry.NotReady},
			retry.Decision{Again: true, Uncount: true, Delay: 2 * time.Second}},
		{"NotReadyZeroPolicyDefaults", retry.Policy{}, second, retry.Answer{Kind: retry.NotReady, RetryAfter: "0"},
			retry.Decision{Again: true, Uncount: true, Delay: retry.BackpressureMinDefault}},
		{"Stopped", p, last, retry.Answer{Kind: retry.Stopped}, retry.Decision{Again: true, Uncount: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.policy.Decide(tt.at, tt.answer, now); got != tt.want {
				t.Errorf("Decide = %+v, want %+v", got, tt.want)
			}
		})
	}
	if got := retry.Lost(second); got != (retry.Decision{Again: true, Delay: 2 * time.Second}) {
		t.Errorf("Lost(second) = %+v", got)
	}
	if got := retry.Lost(last); got != (retry.Decision{}) {
		t.Errorf("Lost(last) = %+v", got)
	}
}
