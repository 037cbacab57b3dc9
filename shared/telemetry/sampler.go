package telemetry

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"strconv"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// samplerFromEnv replaces the SDK's ratio samplers when OTEL_TRACES_SAMPLER
// asks for one (traceidratio or parentbased_traceidratio, with the ratio in
// OTEL_TRACES_SAMPLER_ARG, default 1). The SDK's own reads bytes 8 to 15 of
// the trace id, whose first two bits are a request id's fixed UUID variant,
// so it would keep every request or none. Every span of a request starts
// under a sampled synthetic parent, so the parent-based form decides by the
// trace id too: all spans of one request, in any function, share the
// decision. Other samplers are left to the SDK.
func samplerFromEnv() (sdktrace.Sampler, error) {
	switch os.Getenv("OTEL_TRACES_SAMPLER") {
	case "traceidratio", "parentbased_traceidratio":
	default:
		return nil, nil
	}
	ratio := 1.0
	if arg := os.Getenv("OTEL_TRACES_SAMPLER_ARG"); arg != "" {
		v, err := strconv.ParseFloat(arg, 64)
		if err != nil || v < 0 || v > 1 || math.IsNaN(v) {
			return nil, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG: %q is not a ratio between 0 and 1", arg)
		}
		ratio = v
	}
	return RequestIDRatio(ratio), nil
}

// requestIDBits is how many low bits of a trace id RequestIDRatio reads:
// the last 62, after the variant.
const requestIDBits = 62

// RequestIDRatio samples the given fraction of requests, deciding by the
// random low 62 bits of the trace id (the request id), whatever the parent
// says.
func RequestIDRatio(ratio float64) sdktrace.Sampler {
	ratio = min(max(ratio, 0), 1)
	return requestIDRatio{ratio: ratio, bound: uint64(ratio * (1 << requestIDBits))}
}

type requestIDRatio struct {
	ratio float64
	bound uint64
}

func (s requestIDRatio) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	ts := trace.SpanContextFromContext(p.ParentContext).TraceState()
	x := binary.BigEndian.Uint64(p.TraceID[8:16]) & (1<<requestIDBits - 1)
	if s.ratio >= 1 || x < s.bound {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample, Tracestate: ts}
	}
	return sdktrace.SamplingResult{Decision: sdktrace.Drop, Tracestate: ts}
}

func (s requestIDRatio) Description() string {
	return fmt.Sprintf("RequestIDRatio{%g}", s.ratio)
}
