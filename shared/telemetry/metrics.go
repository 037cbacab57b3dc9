package telemetry

import (
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
}

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
	}
	reg.MustRegister(m.Submitted, m.Completed, m.Attempts, m.InferenceDuration, m.QueueWait,
		m.QueueDepth, m.DeploymentPaused, m.WebhookDeliveries, m.WebhookDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
