package telemetry_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// TestInstrumentHandler checks the API's request histogram: labelled by the
// route pattern the router matched (never the raw path), the method and
// the status, with OpenTelemetry's names as Prometheus renders them.
func TestInstrumentHandler(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := telemetry.NewMetrics(reg)
	var rt httpapi.Router
	rt.Handle("GET /async_request/{request_id}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	rt.Handle("POST /production/async_predict", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	}))
	h := m.InstrumentHandler(httpapi.WithTarget(&rt))
	for _, req := range []struct{ method, path string }{
		{"GET", "/async_request/0190f5b0c2a87d3e9b1f4c6a2d8e0f11"},
		{"GET", "/async_request/0190f5b0c2a87d3e9b1f4c6a2d8e0f12"},
		{"POST", "/models/m1/production/async_predict"},
		{"GET", "/no/such/path"},
		{"BREW", "/async_request/x"},
	} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(req.method, req.path, nil))
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[[3]string]uint64{}
	for _, f := range families {
		if f.GetName() != "http_server_request_duration_seconds" {
			continue
		}
		for _, metric := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range metric.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			key := [3]string{labels["http_route"], labels["http_request_method"], labels["http_response_status_code"]}
			got[key] = metric.GetHistogram().GetSampleCount()
		}
	}
	want := map[[3]string]uint64{
		{"/async_request/{request_id}", "GET", "200"}: 2,
		{"/production/async_predict", "POST", "201"}:  1,
		{"", "GET", "404"}:                            1,
		{"", "_OTHER", "405"}:                         1,
	}
	if len(got) != len(want) {
		t.Errorf("series %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("series %v: %d requests, want %d (all series: %v)", k, got[k], n, got)
		}
	}
}
