package telemetry

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the service's Prometheus metrics. Names follow Prometheus
// conventions: a unit suffix, _total on counters.
type Metrics struct {
	// Submitted counts accepted submits (not idempotent replays).
	Submitted *prometheus.CounterVec // labels: deployment_id
	// Completed counts requests reaching a final state.
	Completed *prometheus.CounterVec // labels: status
	// Attempts counts model calls by outcome: success, the error code, or
	// not_ready for back-pressure.
	Attempts *prometheus.CounterVec // labels: outcome
	// InferenceDuration is the time a model call took.
	InferenceDuration prometheus.Histogram
	// QueueWait is the time from a request becoming due to being claimed.
	QueueWait prometheus.Histogram
	// QueueDepth is the number of requests per state and deployment, read
	// from the partial indexes by the processor.
	QueueDepth *prometheus.GaugeVec // labels: state, deployment_id
	// DeploymentPaused is 1 for each paused deployment (whose queue no
	// processor claims), read by the processor with the queue depth.
	DeploymentPaused *prometheus.GaugeVec // labels: deployment_id
	// WebhookDeliveries counts delivery attempts by outcome.
	WebhookDeliveries *prometheus.CounterVec // labels: outcome
	// WebhookDuration is the time a delivery attempt took.
	WebhookDuration prometheus.Histogram

	// HTTPServerDuration is the time the API took to answer a request, by
	// route pattern, method and status: OpenTelemetry's
	// http.server.request.duration as Prometheus names it. See
	// InstrumentHandler.
	HTTPServerDuration *prometheus.HistogramVec // labels: http_route, http_request_method, http_response_status_code
	// HTTPServerConnections is the API server's open connections.
	HTTPServerConnections prometheus.Gauge
	// HTTPServerConnectionsShed counts connections the API server closed
	// at its connection cap: idle or silent ones closed to make room
	// (reason "evicted") and new ones answered 503 ("refused").
	HTTPServerConnectionsShed *prometheus.CounterVec // labels: reason
}

// HTTPServerDurationBuckets are OpenTelemetry's advisory buckets for
// http.server.request.duration, plus 30 s and 60 s for long-polls.
var HTTPServerDurationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60}

// NewMetrics creates the metrics and registers them, with the Go runtime and
// process collectors, on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Submitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "async_requests_submitted_total", Help: "Requests accepted by submit.",
		}, []string{"deployment_id"}),
		Completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "async_requests_completed_total", Help: "Requests that reached a final state, by status.",
		}, []string{"status"}),
		Attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "async_request_attempts_total", Help: "Model calls, by outcome.",
		}, []string{"outcome"}),
		InferenceDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "async_request_inference_duration_seconds", Help: "Duration of model calls.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 14),
		}),
		QueueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "async_request_queue_wait_seconds", Help: "Time from due to claimed.",
			Buckets: prometheus.ExponentialBuckets(0.001, 3, 15),
		}),
		QueueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "async_requests_queue_depth", Help: "Requests QUEUED or IN_PROGRESS, by deployment.",
		}, []string{"state", "deployment_id"}),
		DeploymentPaused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "async_deployment_paused", Help: "1 for each paused deployment.",
		}, []string{"deployment_id"}),
		WebhookDeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "async_webhook_deliveries_total", Help: "Webhook delivery attempts, by outcome.",
		}, []string{"outcome"}),
		WebhookDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "async_webhook_delivery_duration_seconds", Help: "Duration of webhook delivery attempts.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 10),
		}),
		HTTPServerDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "http_server_request_duration_seconds", Help: "Duration of HTTP server requests.",
			Buckets: HTTPServerDurationBuckets,
		}, []string{"http_route", "http_request_method", "http_response_status_code"}),
		HTTPServerConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "http_server_open_connections", Help: "Open connections of the API's HTTP server.",
		}),
		HTTPServerConnectionsShed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_server_connections_shed_total", Help: "Connections closed at the connection cap, by reason.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.Submitted, m.Completed, m.Attempts, m.InferenceDuration, m.QueueWait,
		m.QueueDepth, m.DeploymentPaused, m.WebhookDeliveries, m.WebhookDuration,
		m.HTTPServerDuration, m.HTTPServerConnections, m.HTTPServerConnectionsShed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

type routeKey struct{}

// route is where the router writes the pattern a request matched.
type route struct{ pattern string }

// SetRoute records, for InstrumentHandler, the route pattern that r's
// router matched, such as "GET /async_request/{request_id}" (a method
// before the path is dropped). Outside InstrumentHandler it does nothing.
func SetRoute(ctx context.Context, pattern string) {
	if rt, ok := ctx.Value(routeKey{}).(*route); ok {
		if _, path, ok := strings.Cut(pattern, " "); ok {
			pattern = path
		}
		rt.pattern = pattern
	}
}

// InstrumentHandler returns next observing HTTPServerDuration for every
// request. http_route is the pattern that a router reported with SetRoute,
// never the raw path (so ids never become series), and "" when no route
// matched; a method outside the standard ones is "_OTHER", as OpenTelemetry
// says.
func (m *Metrics) InstrumentHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rt := &route{}
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), routeKey{}, rt)))
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		m.HTTPServerDuration.WithLabelValues(rt.pattern, method(r.Method), strconv.Itoa(status)).
			Observe(time.Since(start).Seconds())
	})
}

func method(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "_OTHER"
}

// statusWriter keeps the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 && status >= 200 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush lets a long-poll flush through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
