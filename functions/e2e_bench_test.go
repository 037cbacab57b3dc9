package functions_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/functions/deliverwebhook"
	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/functions/submit"
	"github.com/openasync/asyncrequest/localdev/loadtest"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/webhook"
)

// BenchmarkWritePath measures the write path against its own baseline, side
// by side in one run, all on loopback:
//
//   - RawInsert16: the database's limit, single-row durable INSERTs into a
//     table shaped like async_requests (its columns, defaults, checks and
//     indexes) from 16 connections; the baseline of the others' x-raw.
//   - RawInsertNotifyInTx16: the same with a pg_notify in each insert's
//     transaction, as submits once did: the NOTIFY lock is held through
//     every commit's flush, so no two commits share one.
//   - RawInsertThenNotify16: the insert, then the pg_notify in a
//     transaction of its own with synchronous_commit off.
//   - Batcher64: the submit's group commit alone, without HTTP: 64
//     goroutines calling RequestBatcher.Insert, nothing draining.
//   - SubmitHTTP64: POST async_predict over a real listener from 64 client
//     connections, the processor draining meanwhile (HTTP model), and
//     SubmitHTTP64NoProcessor, the same with nothing draining, to show
//     what the processor's share of the machine costs the submits.
//   - EndToEndHTTP64: the same with a webhook_endpoint: submit, HTTP model,
//     signed webhook received and verified; completed requests per second
//     from the first submit to the last webhook.
//   - IdleSubmitToModel: one submit at a time into an idle service: from
//     sending the submit to the model receiving the call (p50, p99), and to
//     the submit's 201 (answered-p50).
//
// The load of SubmitHTTP64 and EndToEndHTTP64 comes from package loadtest,
// which `make loadtest` runs against a live service.
func BenchmarkWritePath(b *testing.B) {
	var raw float64
	versusRaw := func(b *testing.B, rate float64) {
		if raw > 0 {
			b.ReportMetric(rate/raw, "x-raw")
		}
	}
	b.Run("RawInsert16", func(b *testing.B) {
		raw = rawInserts(b, rawPlain)
	})
	b.Run("RawInsertNotifyInTx16", func(b *testing.B) {
		versusRaw(b, rawInserts(b, rawNotifyInTx))
	})
	b.Run("RawInsertThenNotify16", func(b *testing.B) {
		versusRaw(b, rawInserts(b, rawThenNotify))
	})
	submits := func(b *testing.B, withWorkers bool, count int) {
		svc := startService(b, withWorkers)
		var total time.Duration
		var n int
		var p50, p99 []time.Duration
		for b.Loop() {
			res := svc.load(b, loadtest.Options{Concurrency: 64, Count: count})
			total += res.SubmitElapsed
			n += res.Submitted
			p50, p99 = append(p50, res.SubmitP50), append(p99, res.SubmitP99)
		}
		rate := float64(n) / total.Seconds()
		b.ReportMetric(rate, "req/s")
		versusRaw(b, rate)
		reportLatency(b, "submit", p50, p99)
		svc.reportBatches(b)
		b.ReportMetric(0, "ns/op")
	}
	b.Run("Batcher64", func(b *testing.B) {
		versusRaw(b, batcherInserts(b))
	})
	b.Run("SubmitHTTP64", func(b *testing.B) { submits(b, true, 10000) })
	b.Run("SubmitHTTP64NoProcessor", func(b *testing.B) { submits(b, false, 6000) })
	b.Run("EndToEndHTTP64", func(b *testing.B) {
		svc := startService(b, true)
		var total time.Duration
		var n, dups int
		var p50, p99 []time.Duration
		for b.Loop() {
			res := svc.load(b, loadtest.Options{Concurrency: 64, Count: 5000, Secret: svc.secret})
			if res.Completed != res.Submitted || res.Unverified > 0 {
				b.Fatalf("%d webhooks verified for %d submits, %d unverified", res.Completed, res.Submitted, res.Unverified)
			}
			total += res.E2EElapsed
			n += res.Completed
			dups += res.Duplicates
			p50, p99 = append(p50, res.WebhookP50), append(p99, res.WebhookP99)
		}
		rate := float64(n) / total.Seconds()
		b.ReportMetric(rate, "req/s")
		versusRaw(b, rate)
		reportLatency(b, "webhook", p50, p99)
		svc.reportBatches(b)
		b.ReportMetric(float64(dups), "duplicates")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("IdleSubmitToModel", func(b *testing.B) {
		svc := startService(b, true)
		client := &http.Client{}
		var lat, answered []time.Duration
		for b.Loop() {
			for range 200 {
				start := time.Now()
				if _, err := svc.submit(client, `{"model_input": {"idle": true}}`); err != nil {
					b.Fatal(err)
				}
				answered = append(answered, time.Since(start))
				select {
				case at := <-svc.calls:
					lat = append(lat, at.Sub(start))
				case <-time.After(30 * time.Second):
					b.Fatal("the model was not called within 30 s")
				}
				// Let the processor record the outcome, so the next submit
				// finds it idle.
				time.Sleep(5 * time.Millisecond)
			}
		}
		slices.Sort(lat)
		slices.Sort(answered)
		b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
		b.ReportMetric(ms(lat[min(len(lat)-1, len(lat)*99/100)]), "p99-ms")
		b.ReportMetric(ms(answered[len(answered)/2]), "answered-p50-ms")
		b.ReportMetric(0, "ns/op")
	})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// reportLatency reports the median over iterations of each iteration's
// percentile.
func reportLatency(b *testing.B, what string, p50, p99 []time.Duration) {
	slices.Sort(p50)
	slices.Sort(p99)
	b.ReportMetric(ms(p50[len(p50)/2]), what+"-p50-ms")
	b.ReportMetric(ms(p99[len(p99)/2]), what+"-p99-ms")
}

// rawKind is what each raw insert sends.
type rawKind int

const (
	rawPlain rawKind = iota
	rawNotifyInTx
	rawThenNotify
)

// rawRows is how many rows one iteration of a raw case inserts; fewer for
// the slow NOTIFY-in-the-transaction case.
func rawRows(kind rawKind) int64 {
	if kind == rawNotifyInTx {
		return 3000
	}
	return 10000
}

// rawInserts runs a raw insert case and returns its rate.
func rawInserts(b *testing.B, kind rawKind) float64 {
	ctx := context.Background()
	db, err := postgres.Open(ctx, pgtest.URL(b), 20)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE raw_requests (LIKE async_requests INCLUDING ALL)`); err != nil {
		b.Fatal(err)
	}
	const insert = `
		INSERT INTO raw_requests (id, organization_id, model_id, is_chain, deployment_id, state,
			webhook_state, webhook_endpoint, priority, due_at, deadline_at, max_attempts,
			initial_delay_ms, max_delay_ms, input, created_at, status_at)
		VALUES ($1, 1, 'bench', false, 'bench-1', 'QUEUED', 'NO_WEBHOOK_PROVIDED', NULL, 0, now(),
			now() + interval '10 minutes', 3, 1000, 5000, $2, now(), now())`
	input := []byte(`{"prompt": "load"}`)
	one := func() error {
		switch kind {
		case rawNotifyInTx:
			return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, insert, requestid.New(), input); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, "raw_bench")
				return err
			})
		case rawThenNotify:
			if _, err := db.Pool.Exec(ctx, insert, requestid.New(), input); err != nil {
				return err
			}
			_, err := db.Pool.Exec(ctx, `SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')`, "raw_bench")
			return err
		}
		_, err := db.Pool.Exec(ctx, insert, requestid.New(), input)
		return err
	}
	var total time.Duration
	for b.Loop() {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		start := time.Now()
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= rawRows(kind) {
					if err := one(); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		total += time.Since(start)
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	rate := float64(int64(b.N)*rawRows(kind)) / total.Seconds()
	b.ReportMetric(rate, "req/s")
	b.ReportMetric(0, "ns/op")
	return rate
}

// batcherInserts runs the Batcher64 case and returns its rate.
func batcherInserts(b *testing.B) float64 {
	ctx := context.Background()
	db, err := postgres.Open(ctx, pgtest.URL(b), 20)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	tenant := pgtest.SeedTenant(b, db, "bench", []postgres.Model{{ID: "example", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "example-1", ModelID: "example", Environments: []string{"production"}}})
	batcher := postgres.NewRequestBatcher(db, postgres.RequestBatcherOptions{})
	const perIteration = 10000
	var total time.Duration
	for b.Loop() {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		start := time.Now()
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= perIteration {
					_, err := batcher.Insert(ctx, postgres.RequestInsertParams{
						ID: requestid.New(), OrganizationID: tenant.ID, ModelID: "example", DeploymentID: "example-1",
						MaxTimeInQueue: 10 * time.Minute, MaxAttempts: 3, InitialDelayMS: 1000, MaxDelayMS: 5000,
						Input: []byte(`{"prompt": "load"}`),
					})
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		total += time.Since(start)
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	rate := float64(b.N*perIteration) / total.Seconds()
	st := batcher.Stats()
	b.ReportMetric(rate, "req/s")
	b.ReportMetric(float64(st.Rows)/float64(max(st.Batches, 1)), "rows/batch")
	b.ReportMetric(0, "ns/op")
	return rate
}

// service is the whole service on loopback: the API on a real listener, a
// processor and a deliverer, an HTTP model and a seeded organization.
type service struct {
	db     *postgres.DB
	api    *httptest.Server
	key    string
	secret string
	calls  chan time.Time // when the model received each call, if someone listens
	// batcher is the API's group commit.
	batcher *postgres.RequestBatcher
}

// reportBatches reports the submits an insert statement carried on average.
func (s *service) reportBatches(b *testing.B) {
	st := s.batcher.Stats()
	b.ReportMetric(float64(st.Rows)/float64(max(st.Batches, 1)), "rows/batch")
}

// startService starts the service; withWorkers false leaves out the
// processor and the deliverer.
func startService(b *testing.B, withWorkers bool) *service {
	b.Helper()
	ctx, stop := context.WithCancel(context.Background())
	db, err := postgres.Open(ctx, pgtest.URL(b), 20)
	if err != nil {
		b.Fatal(err)
	}
	svc := &service{db: db, calls: make(chan time.Time, 1)}
	model := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := time.Now()
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case svc.calls <- at:
		default:
		}
		_, _ = w.Write([]byte(`{"ok": true}`))
	}))
	tenant := pgtest.SeedTenant(b, db, "bench", []postgres.Model{{ID: "example", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "example-1", ModelID: "example", URL: model.URL, Environments: []string{"production"}, MaxConcurrency: 100000}})
	svc.key = tenant.Key
	if svc.secret, err = webhook.GenerateSecret(); err != nil {
		b.Fatal(err)
	}
	if err := db.WebhookSecretRotate(ctx, tenant.ID, svc.secret, 0); err != nil {
		b.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	hooks := config.Webhook{AllowHTTP: true, AllowPrivate: true}
	svc.batcher = postgres.NewRequestBatcher(db, postgres.RequestBatcherOptions{})
	svc.api = httptest.NewServer(submit.New(submit.Options{DB: db, Logger: quiet, Webhook: hooks, Batcher: svc.batcher,
		API: config.API{SubmitRate: 1e9, SubmitBurst: 1e9, MaxActiveRequests: 1e9}}))
	proc := processtick.New(processtick.Options{DB: db, Logger: quiet})
	deliverer := deliverwebhook.New(deliverwebhook.Options{DB: db, Config: hooks, Logger: quiet})
	var wg sync.WaitGroup
	runs := []func(context.Context) error{proc.Run, deliverer.Run}
	if !withWorkers {
		runs = nil
	}
	for _, run := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = run(ctx)
		}()
	}
	b.Cleanup(func() {
		stop()
		wg.Wait()
		svc.api.Close()
		model.Close()
		db.Close()
	})
	return svc
}

// load runs the load generator against the service; the clock runs only
// while it does.
func (s *service) load(b *testing.B, o loadtest.Options) loadtest.Result {
	b.Helper()
	o.URL, o.Key = s.api.URL, s.key
	res, err := loadtest.Run(context.Background(), o)
	if err != nil {
		b.Fatal(err)
	}
	if res.Refused > 0 {
		b.Fatalf("%d submits refused: %s", res.Refused, res.FirstError)
	}
	return res
}

// submit posts one request to the production environment.
func (s *service) submit(c *http.Client, body string) (string, error) {
	req, _ := http.NewRequest(http.MethodPost, s.api.URL+loadtest.PathDefault, strings.NewReader(body))
	req.Header.Set("Authorization", "Api-Key "+s.key)
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("submit: %s %s", resp.Status, out)
	}
	return string(out), nil
}
