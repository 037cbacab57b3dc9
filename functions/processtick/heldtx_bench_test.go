package processtick_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// BenchmarkHeldTransaction measures the processor under a steady load
// (heldTxRate requests per second queued, an in-process model) while a
// transaction elsewhere holds its snapshot open, so that no dead row can be
// removed meanwhile: completions per second before, during and after the
// hold, and the sizes of the hot partial indexes before, at the end of the
// hold and after it. It is opt-in, being minutes long: set BENCH_HELD_TX to
// the hold's length (such as 2m).
func BenchmarkHeldTransaction(b *testing.B) {
	hold, err := time.ParseDuration(os.Getenv("BENCH_HELD_TX"))
	if err != nil || hold <= 0 {
		b.Skip("set BENCH_HELD_TX to the length of the held transaction (such as 2m) to run this benchmark")
	}
	const heldTxRate, tick = 2000, 50 * time.Millisecond
	const warmUp, before, after = 10 * time.Second, 30 * time.Second, 60 * time.Second
	ctx := context.Background()
	bench := setupThroughput(b, "http://model.internal", &http.Client{Transport: instantModel{}})
	metrics := telemetry.NewMetrics(prometheus.NewRegistry())
	succeeded := metrics.Completed.WithLabelValues(string(postgres.StateSucceeded))
	p := processtick.New(processtick.Options{
		DB: bench.db, Config: config.Processor{PollInterval: 10 * time.Millisecond},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: metrics,
		Client: &http.Client{Transport: instantModel{}},
	})
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = p.Run(runCtx) }()
	go func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		for runCtx.Err() == nil {
			bench.insert(heldTxRate*int(tick)/int(time.Second), postgres.StateQueued)
			select {
			case <-runCtx.Done():
			case <-t.C:
			}
		}
	}()
	indexKB := func() (queued, inProgress float64) {
		err := bench.db.Pool.QueryRow(ctx, `SELECT pg_relation_size('async_requests_queued_idx') / 1024.0,
			pg_relation_size('async_requests_in_progress_idx') / 1024.0`).Scan(&queued, &inProgress)
		if err != nil {
			b.Fatal(err)
		}
		return queued, inProgress
	}
	rate := func(d time.Duration) float64 {
		start := counterValue(b, succeeded)
		time.Sleep(d)
		return (counterValue(b, succeeded) - start) / d.Seconds()
	}
	for b.Loop() {
		time.Sleep(warmUp)
		q0, ip0 := indexKB()
		rBefore := rate(before)
		conn, err := pgx.ConnectConfig(ctx, bench.db.Pool.Config().ConnConfig)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ`); err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `SELECT txid_current(), count(*) FROM deployments`); err != nil {
			b.Fatal(err)
		}
		rDuring := rate(hold)
		q1, ip1 := indexKB()
		if _, err := conn.Exec(ctx, `ROLLBACK`); err != nil {
			b.Fatal(err)
		}
		conn.Close(ctx)
		rAfter := rate(after)
		q2, ip2 := indexKB()
		b.ReportMetric(rBefore, "before-req/s")
		b.ReportMetric(rDuring, "held-req/s")
		b.ReportMetric(rAfter, "after-req/s")
		b.ReportMetric(100*(1-rDuring/rBefore), "drop-%")
		b.ReportMetric(q0, "queued-idx-before-KB")
		b.ReportMetric(q1, "queued-idx-held-KB")
		b.ReportMetric(q2, "queued-idx-after-KB")
		b.ReportMetric(ip0, "inprogress-idx-before-KB")
		b.ReportMetric(ip1, "inprogress-idx-held-KB")
		b.ReportMetric(ip2, "inprogress-idx-after-KB")
		b.ReportMetric(0, "ns/op")
	}
}
