package telemetry

import (
	"context"
	"crypto/rand"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/openasync/asyncrequest/shared/requestid"
)

// Request is what the spans of a request say about it.
type Request struct {
	ID           requestid.ID
	ModelID      string // the chain id for a chain
	IsChain      bool
	DeploymentID string
}

// Attributes are request_id, model_id (chain_id for a chain) and
// deployment_id.
func (r Request) Attributes() []attribute.KeyValue {
	key := "model_id"
	if r.IsChain {
		key = "chain_id"
	}
	return []attribute.KeyValue{
		attribute.String("request_id", r.ID.String()),
		attribute.String(key, r.ModelID),
		attribute.String("deployment_id", r.DeploymentID),
	}
}

// RequestSpanID is the span id of a request's root span: the last 8 bytes
// of its id, which are random, and never all zero in an id requestid.New
// makes (the variant bits are set).
func RequestSpanID(id requestid.ID) trace.SpanID {
	var s trace.SpanID
	copy(s[:], id[8:])
	if !s.IsValid() {
		s[7] = 1 // an id not made by requestid.New
	}
	return s
}

// RequestParent is the span context of a request's root span, as a remote
// parent: trace id the request id, span id RequestSpanID.
func RequestParent(id requestid.ID) trace.SpanContext {
	return trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID(id), SpanID: RequestSpanID(id), TraceFlags: trace.FlagsSampled, Remote: true,
	})
}

// StartRequestSpan starts span name of request r, whichever process runs
// it: a child of the request's root span (RequestParent), carrying r's
// Attributes. Submit, each attempt and each webhook delivery start theirs
// here, so that a trace viewer shows a request as one trace whose spans are
// siblings under its root.
func StartRequestSpan(ctx context.Context, tracer trace.Tracer, name string, r Request, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	ctx = trace.ContextWithRemoteSpanContext(ctx, RequestParent(r.ID))
	opts = append(opts, trace.WithAttributes(r.Attributes()...))
	return tracer.Start(ctx, name, opts...)
}

type rootKey struct{}

// StartRequestRoot starts the root span of request r, named "request": the
// span RequestParent stands for, exported so that the other spans of the
// request have their parent in the trace. Its ids are the request's own
// when the tracer provider uses IDGenerator, as SetupTracing's does. Submit
// starts it once per request.
func StartRequestRoot(ctx context.Context, tracer trace.Tracer, r Request) (context.Context, trace.Span) {
	ctx = context.WithValue(ctx, rootKey{}, r.ID)
	return tracer.Start(ctx, "request", trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(r.Attributes()...))
}

// IDGenerator makes random trace and span ids, as the SDK's default does,
// except for a request's root span (StartRequestRoot), whose trace id is
// the request id and span id RequestSpanID.
func IDGenerator() sdktrace.IDGenerator { return idGenerator{} }

type idGenerator struct{}

func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if id, ok := ctx.Value(rootKey{}).(requestid.ID); ok {
		return trace.TraceID(id), RequestSpanID(id)
	}
	var t trace.TraceID
	for !t.IsValid() {
		_, _ = rand.Read(t[:])
	}
	return t, randomSpanID()
}

func (idGenerator) NewSpanID(context.Context, trace.TraceID) trace.SpanID { return randomSpanID() }

func randomSpanID() trace.SpanID {
	var s trace.SpanID
	for !s.IsValid() {
		_, _ = rand.Read(s[:])
	}
	return s
}
