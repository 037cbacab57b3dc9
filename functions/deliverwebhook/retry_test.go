package deliverwebhook

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/safehttp"
	"github.com/openasync/asyncrequest/shared/webhook"
)

func TestNextDelay(t *testing.T) {
	t.Parallel()
	short := []time.Duration{0, 10 * time.Millisecond, 20 * time.Millisecond}
	tests := []struct {
		name     string
		schedule []time.Duration
		attempts int
		jitter   float64
		want     time.Duration
		wantOK   bool
	}{
		{"DefaultAfterFirst", ScheduleDefault, 1, 0, 5 * time.Second, true},
		{"DefaultAfterSecond", ScheduleDefault, 2, 0, 30 * time.Second, true},
		{"DefaultAfterThird", ScheduleDefault, 3, 0, 2 * time.Minute, true},
		{"DefaultAfterFourth", ScheduleDefault, 4, 0, 10 * time.Minute, true},
		{"DefaultAfterFifth", ScheduleDefault, 5, 0, 30 * time.Minute, true},
		{"DefaultExhausted", ScheduleDefault, 6, 0, 0, false},
		{"PastTheEnd", ScheduleDefault, 9, 0, 0, false},
		{"JitterUp", ScheduleDefault, 2, 1, 33 * time.Second, true},
		{"JitterDown", ScheduleDefault, 2, -1, 27 * time.Second, true},
		{"JitterHalf", ScheduleDefault, 1, 0.5, 5250 * time.Millisecond, true},
		{"JitterClamped", ScheduleDefault, 1, 7, 5500 * time.Millisecond, true},
		{"ZeroAttemptsIsFirst", ScheduleDefault, 0, 0, 5 * time.Second, true},
		{"Short", short, 2, 0, 20 * time.Millisecond, true},
		{"ShortExhausted", short, 3, 0, 0, false},
		{"SingleAttempt", []time.Duration{0}, 1, 0, 0, false},
		{"Empty", nil, 1, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := NextDelay(tt.schedule, tt.attempts, tt.jitter)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("NextDelay(%v, %d, %v) = %v, %v; want %v, %v", tt.schedule, tt.attempts, tt.jitter, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 28, 14, 0, 0, 0, time.UTC)
	blocked := &url.Error{Op: "Post", URL: "https://internal.example/?token=secret", Err: fmt.Errorf("dial tcp 10.0.0.1:443: %w", safehttp.ErrBlockedAddress)}
	timeout := &url.Error{Op: "Post", URL: "https://slow.example/?token=secret", Err: context.DeadlineExceeded}
	tests := []struct {
		name       string
		status     int
		retryAfter string
		err        error
		want       verdict
		wantAfter  time.Duration
		wantReason string
	}{
		{name: "OK", status: 200, want: verdictSuccess},
		{name: "Accepted", status: 202, want: verdictSuccess},
		{name: "NoContent", status: 204, want: verdictSuccess},
		{name: "MovedPermanently", status: 301, want: verdictFail, wantReason: "redirects are not followed"},
		{name: "Found", status: 302, want: verdictFail},
		{name: "NotModified", status: 304, want: verdictFail},
		{name: "TemporaryRedirect", status: 307, want: verdictFail},
		{name: "BadRequest", status: 400, want: verdictFail, wantReason: "400 Bad Request"},
		{name: "Unauthorized", status: 401, want: verdictFail},
		{name: "NotFound", status: 404, want: verdictFail},
		{name: "RequestTimeout", status: 408, want: verdictRetry},
		{name: "Gone", status: 410, want: verdictFail},
		{name: "TooManyRequests", status: 429, want: verdictRetry},
		{name: "TooManyRequestsRetryAfter", status: 429, retryAfter: "120", want: verdictRetry, wantAfter: 2 * time.Minute},
		{name: "TooManyRequestsDate", status: 429, retryAfter: now.Add(time.Minute).Format(http.TimeFormat), want: verdictRetry, wantAfter: time.Minute},
		{name: "InternalServerError", status: 500, want: verdictRetry},
		{name: "InternalServerErrorIgnoresRetryAfter", status: 500, retryAfter: "120", want: verdictRetry},
		{name: "BadGateway", status: 502, want: verdictRetry},
		{name: "ServiceUnavailableRetryAfter", status: 503, retryAfter: "30", want: verdictRetry, wantAfter: 30 * time.Second},
		{name: "GatewayTimeout", status: 504, want: verdictRetry},
		{name: "NetworkError", err: errors.New("connection reset by peer"), want: verdictRetry},
		{name: "Timeout", err: timeout, want: verdictRetry, wantReason: "timed out"},
		{name: "BlockedAddress", err: blocked, want: verdictFail, wantReason: "non-public address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var resp *http.Response
			if tt.err == nil {
				resp = &http.Response{StatusCode: tt.status, Header: http.Header{}}
				if tt.retryAfter != "" {
					resp.Header.Set("Retry-After", tt.retryAfter)
				}
			}
			got := classify(resp, tt.err, now)
			if got.verdict != tt.want || got.retryAfter != tt.wantAfter {
				t.Errorf("classify = %v (retry after %v), want %v (%v)", got.verdict, got.retryAfter, tt.want, tt.wantAfter)
			}
			if !strings.Contains(got.reason, tt.wantReason) {
				t.Errorf("reason %q does not say %q", got.reason, tt.wantReason)
			}
			if got.verdict != verdictSuccess && got.reason == "" {
				t.Error("no reason for a failure")
			}
			if strings.Contains(got.reason, "token=secret") {
				t.Errorf("reason %q repeats the URL", got.reason)
			}
		})
	}
}

func TestEncodePayload(t *testing.T) {
	t.Parallel()
	id, err := requestid.Parse("0190f5b0c2a87d3e9b1f4c6a2d8e0f11")
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Date(2026, 11, 28, 14, 0, 1, 234567000, time.FixedZone("CET", 3600))
	base := postgres.WebhookDelivery{
		ID: 1, Attempt: 1, RequestID: id, ModelID: "abc123", DeploymentID: "def456",
		State: postgres.StateSucceeded,
	}
	tests := []struct {
		name   string
		modify func(*postgres.WebhookDelivery)
		sent   time.Time // default sent
		want   string
	}{
		{
			name: "Model",
			modify: func(d *postgres.WebhookDelivery) {
				d.Output = []byte(`{"output":"<HI & BYE>","n":[1,2]}`)
			},
			want: `{"request_id":"0190f5b0c2a87d3e9b1f4c6a2d8e0f11","model_id":"abc123","deployment_id":"def456",` +
				`"type":"async_request_completed","time":"2026-11-28T13:00:01.234567Z","status":"SUCCEEDED",` +
				`"data":{"output":"<HI & BYE>","n":[1,2]},"errors":[]}`,
		},
		{
			name: "ChainFailed",
			modify: func(d *postgres.WebhookDelivery) {
				d.IsChain, d.State = true, postgres.StateFailed
				d.Errors = []postgres.AttemptError{{Code: "MODEL_INVALID_INPUT", Message: "400"}}
			},
			want: `{"request_id":"0190f5b0c2a87d3e9b1f4c6a2d8e0f11","chain_id":"abc123","deployment_id":"def456",` +
				`"type":"async_request_completed","time":"2026-11-28T13:00:01.234567Z","status":"FAILED",` +
				`"data":null,"errors":[{"code":"MODEL_INVALID_INPUT","message":"400"}]}`,
		},
		{
			name:   "Expired",
			modify: func(d *postgres.WebhookDelivery) { d.State = postgres.StateExpired },
			want: `{"request_id":"0190f5b0c2a87d3e9b1f4c6a2d8e0f11","model_id":"abc123","deployment_id":"def456",` +
				`"type":"async_request_completed","time":"2026-11-28T13:00:01.234567Z","status":"EXPIRED","data":null,"errors":[]}`,
		},
		{
			// A WEBHOOK_FAILED request's redelivery reports the state its
			// model reached.
			name:   "RedeliveryOfWebhookFailed",
			modify: func(d *postgres.WebhookDelivery) { d.State, d.Output = postgres.StateWebhookFailed, []byte(`1`) },
			want: `{"request_id":"0190f5b0c2a87d3e9b1f4c6a2d8e0f11","model_id":"abc123","deployment_id":"def456",` +
				`"type":"async_request_completed","time":"2026-11-28T13:00:01.234567Z","status":"SUCCEEDED","data":1,"errors":[]}`,
		},
		{
			name:   "OutputNotJSON",
			modify: func(d *postgres.WebhookDelivery) { d.Output = []byte("plain text") },
			want: `{"request_id":"0190f5b0c2a87d3e9b1f4c6a2d8e0f11","model_id":"abc123","deployment_id":"def456",` +
				`"type":"async_request_completed","time":"2026-11-28T13:00:01.234567Z","status":"SUCCEEDED","data":"plain text","errors":[]}`,
		},
		{
			name:   "WholeSecond",
			modify: func(*postgres.WebhookDelivery) {},
			sent:   time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
			want: `{"request_id":"0190f5b0c2a87d3e9b1f4c6a2d8e0f11","model_id":"abc123","deployment_id":"def456",` +
				`"type":"async_request_completed","time":"2026-01-02T03:04:05.000000Z","status":"SUCCEEDED","data":null,"errors":[]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := base
			tt.modify(&d)
			at := sent
			if !tt.sent.IsZero() {
				at = tt.sent
			}
			got, err := EncodePayload(d, at)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("payload\n got %s\nwant %s", got, tt.want)
			}
			// Another attempt, later, by another deliverer: the same bytes
			// but for "time", which is the new send time.
			d.Attempt, d.ID = 4, 2
			later := at.Add(10 * time.Minute)
			again, _ := EncodePayload(d, later)
			want := strings.Replace(tt.want, `"time":"`+at.UTC().Format(webhook.TimeFormat)+`"`,
				`"time":"`+later.UTC().Format(webhook.TimeFormat)+`"`, 1)
			if string(again) != want {
				t.Errorf("a later attempt's payload\n got %s\nwant %s", again, want)
			}
		})
	}
}
