// Package probe serves what a long-running process exposes on its admin
// port (the processor's PROCESSOR_PORT, the API's API_ADMIN_PORT): liveness
// (/healthz), readiness (/readyz) and Prometheus metrics (/metrics).
package probe

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/openasync/asyncrequest/db"
	"github.com/openasync/asyncrequest/shared/postgres"
)

// ReadyTimeoutDefault bounds the database check of one /readyz call.
const ReadyTimeoutDefault = 2 * time.Second

// New returns the probe handler. /healthz answers 200 while the process
// runs. /readyz answers 200 when the database answers and its migrations are
// at the version this binary was built with, 503 otherwise, so a deploy
// that forgot to migrate never takes traffic.
func New(pg *postgres.DB, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeoutDefault)
		defer cancel()
		if err := Ready(ctx, pg); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}

// Ready checks that the database answers and is migrated to this binary's
// latest migration.
func Ready(ctx context.Context, pg *postgres.DB) error {
	var version *string
	err := pg.Pool.QueryRow(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&version)
	if err != nil {
		if postgres.IsUnavailable(err) || ctx.Err() != nil {
			return fmt.Errorf("database unreachable")
		}
		return fmt.Errorf("database not migrated")
	}
	want := db.LatestVersion()
	if version == nil || *version != want {
		got := "none"
		if version != nil {
			got = *version
		}
		return fmt.Errorf("database at migration %s, want %s", got, want)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
