// Package telemetry sets up what every process reports about itself: one
// OpenTelemetry TracerProvider (exporting over OTLP only when the standard
// OTEL_EXPORTER_OTLP_* variables are set), the Prometheus metrics, and the
// slog logger.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
)

// TracerProvider is the process's tracer provider. Flush it at the end of
// each function invocation; Shutdown it when the process stops.
type TracerProvider struct {
	*sdktrace.TracerProvider
}

// Flush exports buffered spans; a Lambda function calls it before returning,
// since the process may be frozen right after.
func (tp *TracerProvider) Flush(ctx context.Context) error { return tp.ForceFlush(ctx) }

// SetupTracing installs the global TracerProvider and the W3C TraceContext
// propagator, once per process. Spans are exported over OTLP/HTTP when
// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set,
// and otherwise recorded by nothing. extra span processors (tests pass an
// in-memory exporter) are added as given.
func SetupTracing(ctx context.Context, serviceName string, extra ...sdktrace.SpanProcessor) (*TracerProvider, error) {
	// The function's name is the default service name; OTEL_SERVICE_NAME and
	// OTEL_RESOURCE_ATTRIBUTES override it.
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(serviceName)),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithIDGenerator(IDGenerator())}
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" {
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("otlp exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	for _, p := range extra {
		opts = append(opts, sdktrace.WithSpanProcessor(p))
	}
	if sampler, err := samplerFromEnv(); err != nil {
		return nil, err
	} else if sampler != nil {
		opts = append(opts, sdktrace.WithSampler(sampler))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return &TracerProvider{tp}, nil
}

// NewLogger returns the process logger: JSON (deployed) or text (the dev
// harness), at level debug, info, warn or error.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, errors.New("LOG_LEVEL: must be debug, info, warn or error")
	}
	opts := &slog.HandlerOptions{Level: lv}
	if strings.EqualFold(format, "text") {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}
