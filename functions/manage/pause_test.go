package manage_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/openasync/asyncrequest/functions/manage"
	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// TestPause: a paused deployment holds its queue while another deployment
// of the model runs; its queue deadlines still run out; queue status and
// the metrics show it; resumed, its requests are claimed.
func TestPause(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	cache := httpapi.NewAuthCache()
	h := apitest.Validated(t, status.New(status.Options{DB: b.db, Logger: quiet, AuthCache: cache,
		Handlers: manage.Handlers(manage.Options{DB: b.db, Logger: quiet, AuthCache: cache})}))
	decode(t, send(h, "PATCH", "/v1/deployments/m1-a", b.key, map[string]any{"paused": true}), http.StatusOK, &struct{}{})

	held := b.insert(b.acme, "m1", "m1-a", "")
	expiring := b.insert(b.acme, "m1", "m1-a", "")
	runs := b.insert(b.acme, "m1", "m1-b", "")
	claim := func() map[string]bool {
		t.Helper()
		got, err := b.db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p", Limit: 10, LeaseDuration: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]bool{}
		for _, c := range got {
			ids[c.ID.String()] = true
		}
		return ids
	}
	if got := claim(); len(got) != 1 || !got[runs] {
		t.Fatalf("claimed %v, want only %s of the running deployment", got, runs)
	}

	var qs struct {
		Queued int64 `json:"num_queued_requests"`
		Paused bool  `json:"paused"`
	}
	decode(t, send(h, "GET", "/models/m1/deployment/m1-a/async_queue_status", b.key, nil), http.StatusOK, &qs)
	if !qs.Paused || qs.Queued != 2 {
		t.Errorf("queue status = %+v", qs)
	}

	metrics := telemetry.NewMetrics(prometheus.NewRegistry())
	proc := processtick.New(processtick.Options{DB: b.db, Logger: quiet, Metrics: metrics})
	if err := proc.RefreshQueueDepth(ctx); err != nil {
		t.Fatal(err)
	}
	var m dto.Metric
	if err := metrics.DeploymentPaused.WithLabelValues("m1-a").Write(&m); err != nil || m.GetGauge().GetValue() != 1 {
		t.Errorf("async_deployment_paused{m1-a} = %v, %v", m.GetGauge().GetValue(), err)
	}

	b.exec(expiring, `UPDATE async_requests SET deadline_at = now() - interval '1 second' WHERE id = $1`)
	if expired, err := b.db.RequestExpireBatch(ctx, 10); err != nil || len(expired) != 1 || expired[0].ID.String() != expiring {
		t.Fatalf("expired = %+v, %v: a paused queue's deadlines still run", expired, err)
	}

	decode(t, send(h, "PATCH", "/v1/deployments/m1-a", b.key, map[string]any{"paused": false}), http.StatusOK, &struct{}{})
	if got := claim(); len(got) != 1 || !got[held] {
		t.Fatalf("after resume claimed %v, want %s", got, held)
	}
	if err := proc.RefreshQueueDepth(ctx); err != nil {
		t.Fatal(err)
	}
	series := make(chan prometheus.Metric, 10)
	metrics.DeploymentPaused.Collect(series)
	close(series)
	if n := len(series); n != 0 {
		t.Errorf("%d paused series after resume", n)
	}
}
