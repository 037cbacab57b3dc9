package telemetry_test

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

func TestRequestIDRatio(t *testing.T) {
	t.Parallel()
	const n = 20000
	ids := make([]requestid.ID, n)
	for i := range ids {
		ids[i] = requestid.New()
	}
	// A sampled remote parent, as every span of a request has.
	parent := trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID(ids[0]), SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled, Remote: true,
	}))
	for _, tt := range []struct {
		name     string
		ratio    float64
		min, max int
	}{
		{"None", 0, 0, 0},
		{"Tenth", 0.1, n / 10 * 85 / 100, n / 10 * 115 / 100},
		{"Half", 0.5, n / 2 * 95 / 100, n / 2 * 105 / 100},
		{"All", 1, n, n},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := telemetry.RequestIDRatio(tt.ratio)
			kept := 0
			for _, id := range ids {
				res := s.ShouldSample(sdktrace.SamplingParameters{ParentContext: parent, TraceID: trace.TraceID(id), Name: "attempt"})
				again := s.ShouldSample(sdktrace.SamplingParameters{ParentContext: parent, TraceID: trace.TraceID(id), Name: "webhook"})
				if res.Decision != again.Decision {
					t.Fatalf("request %s: spans of one request decided differently", id)
				}
				if res.Decision == sdktrace.RecordAndSample {
					kept++
				}
			}
			if kept < tt.min || kept > tt.max {
				t.Errorf("ratio %v kept %d of %d requests, want %d to %d", tt.ratio, kept, n, tt.min, tt.max)
			}
		})
	}
}
