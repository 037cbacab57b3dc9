// Package localdev is the dev harness (SPEC §10 and §11): everything the
// service needs to run on one machine with no setup. Its commands (see Run)
// mount the very handlers the Lambda functions deploy (submit and status on
// the API port, process-tick and deliver-webhook loops with their probes on
// the processor port) next to a local webhook receiver, a built-in example
// model, seed data and, when no database is configured, a throwaway
// Postgres.
package localdev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/openasync/asyncrequest/db"
	"github.com/openasync/asyncrequest/functions/console"
	"github.com/openasync/asyncrequest/functions/deliverwebhook"
	"github.com/openasync/asyncrequest/functions/manage"
	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/functions/submit"
	"github.com/openasync/asyncrequest/localdev/examplemodel"
	"github.com/openasync/asyncrequest/localdev/receiver"
	"github.com/openasync/asyncrequest/shared/bootstrap"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/credential"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpserver"
	service "github.com/openasync/asyncrequest/shared/manage"
	"github.com/openasync/asyncrequest/shared/probe"
	"github.com/openasync/asyncrequest/shared/webhook"
)

// Config holds the variables only the harness reads; the service's own
// (API_PORT, PROCESSOR_PORT, DATABASE_URL, ...) are in config.Config.
type Config struct {
	// ReceiverPort is the webhook receiver's port.
	ReceiverPort int `env:"WEBHOOK_RECEIVER_PORT, default=9003"`
	// ModelPort is the example model's port.
	ModelPort int `env:"EXAMPLE_MODEL_PORT, default=9004"`
	// ListenHost is the interface every server of the harness listens on:
	// loopback by default, since the receiver and the model take no
	// credentials; 0.0.0.0 inside a container.
	ListenHost string `env:"LOCALDEV_LISTEN_HOST, default=127.0.0.1"`
	// APIKey is the seeded API key; generated when unset.
	APIKey string `env:"LOCALDEV_API_KEY"`
	// WebhookSecrets verify webhooks in the receiver (comma-separated for
	// the webhook command alone); dev seeds the one given as current, or
	// keeps or generates one when unset.
	WebhookSecrets []string `env:"LOCALDEV_WEBHOOK_SECRET"`
	// ModelConcurrency is the example deployments' max_concurrency.
	ModelConcurrency int `env:"LOCALDEV_MODEL_CONCURRENCY, default=8"`
}

// ConsoleLinkTTL is how long the console link that dev prints signs in
// (once).
const ConsoleLinkTTL = time.Hour

// ShutdownTimeoutDefault bounds closing an HTTP server's open connections
// on stop.
const ShutdownTimeoutDefault = 5 * time.Second

// Commands are the harness's commands, as the Makefile runs them.
var Commands = map[string]string{
	"dev":       "everything in one process, with seed data and a throwaway Postgres when DATABASE_URL is unset",
	"server":    "the API alone on API_PORT, with probes and metrics on API_ADMIN_PORT, against DATABASE_URL",
	"processor": "the process-tick and deliver-webhook loops, with probes and metrics on PROCESSOR_PORT, against DATABASE_URL",
	"webhook":   "the local webhook receiver alone on WEBHOOK_RECEIVER_PORT",
}

// Run runs command (one of Commands) until ctx is canceled, then stops
// gracefully and returns nil. The ready banner of dev goes to out; logs go
// to stderr. Configuration comes from the environment, with text logs by
// default; dev alone also forces http and private webhook URLs on, since
// its receiver is on localhost. server and processor are production
// processes and honour WEBHOOK_ALLOW_HTTP and WEBHOOK_ALLOW_PRIVATE as set.
func Run(ctx context.Context, command string, out io.Writer) error {
	var local Config
	if err := envconfig.Process(ctx, &local); err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	for _, p := range []struct {
		name string
		port int
	}{{"WEBHOOK_RECEIVER_PORT", local.ReceiverPort}, {"EXAMPLE_MODEL_PORT", local.ModelPort}} {
		if p.port < 0 || p.port > 65535 {
			return fmt.Errorf("configuration: %s: %d is not a port", p.name, p.port)
		}
	}
	if local.ModelConcurrency < 1 {
		return errors.New("configuration: LOCALDEV_MODEL_CONCURRENCY: must be at least 1")
	}
	for _, s := range local.WebhookSecrets {
		if err := webhook.ValidSecret(s); err != nil {
			return fmt.Errorf("configuration: LOCALDEV_WEBHOOK_SECRET: %w", err)
		}
	}
	if command == "dev" && len(local.WebhookSecrets) > 1 {
		return errors.New("configuration: LOCALDEV_WEBHOOK_SECRET: dev takes one secret (the webhook command takes several)")
	}
	throwaway := command == "dev" && os.Getenv("DATABASE_URL") == "" && os.Getenv("DB_HOST") == ""
	cfg, err := config.LoadFrom(ctx, lookuper(command == "dev", throwaway || command == "webhook"))
	if err != nil {
		return err
	}
	h := &harness{local: local, cfg: cfg, out: out}
	switch command {
	case "dev":
		return h.dev(ctx, throwaway)
	case "server":
		return h.server(ctx)
	case "processor":
		return h.processor(ctx)
	case "webhook":
		return h.webhook(ctx)
	}
	return fmt.Errorf("unknown command %q", command)
}

// placeholderDatabaseURL satisfies the configuration when the harness
// provides the database itself (a throwaway server) or needs none (the
// webhook receiver); it is never connected to.
const placeholderDatabaseURL = "postgres://postgres@127.0.0.1:5432/" + ThrowawayDatabase

// lookuper reads the environment, with the harness's overrides: logs are
// text unless LOG_FORMAT says otherwise and, with devSettings (make dev
// alone), webhook URLs over http and to private addresses are allowed
// whatever the environment says (the receiver is on localhost).
func lookuper(devSettings, placeholderDB bool) envconfig.Lookuper {
	defaults := map[string]string{"LOG_FORMAT": "text"}
	if placeholderDB {
		defaults["DATABASE_URL"] = placeholderDatabaseURL
	}
	forced := map[string]string{}
	if devSettings {
		forced["WEBHOOK_ALLOW_HTTP"], forced["WEBHOOK_ALLOW_PRIVATE"] = "true", "true"
	}
	return envconfig.MultiLookuper(
		envconfig.MapLookuper(forced),
		envconfig.OsLookuper(),
		envconfig.MapLookuper(defaults),
	)
}

// warnWebhookPolicy logs one warning line when cfg lets webhooks go over
// http or to private addresses, so a production process started with
// development settings says so.
func warnWebhookPolicy(log *slog.Logger, cfg config.Config) {
	var allowed []string
	if cfg.Webhook.AllowHTTP {
		allowed = append(allowed, "http:// URLs (WEBHOOK_ALLOW_HTTP)")
	}
	if cfg.Webhook.AllowPrivate {
		allowed = append(allowed, "loopback and private addresses (WEBHOOK_ALLOW_PRIVATE)")
	}
	if len(allowed) > 0 {
		log.Warn("webhooks may go to " + strings.Join(allowed, " and ") + ": for local development only")
	}
}

// harness runs one command.
type harness struct {
	local Config
	cfg   config.Config
	out   io.Writer
}

func (h *harness) dev(ctx context.Context, throwaway bool) error {
	log, err := bootstrap.NewLogger(h.cfg, "asyncdev")
	if err != nil {
		return err
	}
	// Bind every port first, so a port in use fails at once, naming its
	// variable, before a database is started.
	ls, err := h.listen(portVar{"API_PORT", h.cfg.API.Port}, portVar{"PROCESSOR_PORT", h.cfg.Processor.Port},
		portVar{"WEBHOOK_RECEIVER_PORT", h.local.ReceiverPort}, portVar{"EXAMPLE_MODEL_PORT", h.local.ModelPort})
	if err != nil {
		return err
	}
	defer closeAll(ls)

	dbNote := "DATABASE_URL"
	if throwaway {
		pg, err := StartPostgres(ctx, log)
		if err != nil {
			return err
		}
		defer func() {
			if err := pg.Stop(); err != nil {
				log.Error("stop throwaway postgres", "error", err)
				return
			}
			log.Info("throwaway postgres removed")
		}()
		h.cfg.Database.URL = pg.DatabaseURL(ThrowawayDatabase)
		dbNote = "throwaway (" + pg.Kind + "), removed on exit"
	}
	url, err := h.cfg.Database.ConnString()
	if err != nil {
		return err
	}
	if err := db.Migrate(ctx, url, true, logWriter{log}); err != nil {
		return fmt.Errorf("migrate %s: %w", redact(url), err)
	}

	if h.cfg.UpstreamCredentialKeys == "" {
		h.cfg.UpstreamCredentialKeys = credential.NewKey()
		log.Info("UPSTREAM_CREDENTIAL_KEYS is unset: upstream credentials are encrypted under a key made for this run")
	}
	p, err := bootstrap.Start(ctx, "asyncdev", h.cfg)
	if err != nil {
		return err
	}
	defer p.Close()
	warnWebhookPolicy(p.Logger, h.cfg)

	modelURL := "http://" + net.JoinHostPort(loopback(h.local.ListenHost), strconv.Itoa(port(ls[3])))
	seeded, err := Seed(ctx, p.DB, SeedOptions{
		APIKey:           h.local.APIKey,
		WebhookSecret:    first(h.local.WebhookSecrets),
		ModelURL:         modelURL,
		ModelConcurrency: h.local.ModelConcurrency,
	})
	if err != nil {
		return err
	}

	var run runner
	// One registry: the processor's port serves the API's metrics too.
	api := run.start(ls[0], h.apiServer(p))
	run.serve(ls[1], p.Logger, probe.New(p.DB, p.Registry))
	run.serve(ls[2], p.Logger, receiver.New(receiver.Options{
		Logger: p.Logger.With("component", "receiver"),
		SecretsFunc: func(ctx context.Context) ([]string, error) {
			return p.DB.WebhookSecretsActive(ctx, seeded.OrganizationID)
		},
	}))
	run.serve(ls[3], p.Logger, examplemodel.New(examplemodel.Options{Logger: p.Logger.With("component", "example-model")}))
	workCtx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	workers := h.workers(workCtx, p)

	if err := probe.Ready(ctx, p.DB); err != nil {
		log.Error("not ready", "error", err)
	}
	signIn, err := p.DB.ConsoleLoginTokenCreate(ctx, seeded.APIKey, ConsoleLinkTTL)
	if err != nil {
		return err
	}
	printBanner(h.out, banner{
		ports:    [4]int{port(ls[0]), port(ls[1]), port(ls[2]), port(ls[3])},
		apiKey:   seeded.APIKey,
		secret:   seeded.WebhookSecret,
		keyNote:  note(h.local.APIKey == "", "generated; set LOCALDEV_API_KEY to keep one", "LOCALDEV_API_KEY"),
		database: redact(url) + "  (" + dbNote + ")",
		signIn:   signIn,
	})

	err = run.wait(ctx)
	log.Info("stopping: the API first, then the workers (work under way may finish), then the rest")
	stopWork()
	run.shutdown(api)
	<-workers
	run.shutdownAll()
	return err
}

func (h *harness) server(ctx context.Context) error {
	p, err := h.start(ctx, "async-api")
	if err != nil {
		return err
	}
	defer p.Close()
	ls, err := h.listen(portVar{"API_PORT", h.cfg.API.Port}, portVar{"API_ADMIN_PORT", h.cfg.API.AdminPort})
	if err != nil {
		return err
	}
	var run runner
	api := run.start(ls[0], h.apiServer(p))
	run.serve(ls[1], p.Logger, probe.New(p.DB, p.Registry))
	p.Logger.Info("API listening; probes and metrics listening", "addr", ls[0].Addr().String(), "admin_addr", ls[1].Addr().String(),
		"max_conns", h.cfg.API.Server.MaxConns)
	err = run.wait(ctx)
	run.shutdown(api) // before the probes, so /readyz answers while the API drains
	run.shutdownAll()
	return err
}

func (h *harness) processor(ctx context.Context) error {
	p, err := h.start(ctx, "async-processor")
	if err != nil {
		return err
	}
	defer p.Close()
	ls, err := h.listen(portVar{"PROCESSOR_PORT", h.cfg.Processor.Port})
	if err != nil {
		return err
	}
	var run runner
	run.serve(ls[0], p.Logger, probe.New(p.DB, p.Registry))
	workCtx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	workers := h.workers(workCtx, p)
	p.Logger.Info("processor running; probes and metrics listening", "addr", ls[0].Addr().String())
	err = run.wait(ctx)
	stopWork()
	<-workers
	run.shutdownAll()
	return err
}

func (h *harness) webhook(ctx context.Context) error {
	log, err := bootstrap.NewLogger(h.cfg, "async-webhook-receiver")
	if err != nil {
		return err
	}
	ls, err := h.listen(portVar{"WEBHOOK_RECEIVER_PORT", h.local.ReceiverPort})
	if err != nil {
		return err
	}
	if len(h.local.WebhookSecrets) == 0 {
		log.Warn("LOCALDEV_WEBHOOK_SECRET is unset: webhooks are received but none verifies")
	}
	var run runner
	run.serve(ls[0], log, receiver.New(receiver.Options{Secrets: h.local.WebhookSecrets, Logger: log}))
	log.Info("webhook receiver listening", "post", "http://"+ls[0].Addr().String()+"/webhook",
		"list", "http://"+ls[0].Addr().String()+"/webhooks")
	err = run.wait(ctx)
	run.shutdownAll()
	return err
}

// start starts a process against the configured database, warning when it
// is not migrated (server and processor leave migrations to dev and the
// operator command).
func (h *harness) start(ctx context.Context, service string) (*bootstrap.Process, error) {
	p, err := bootstrap.Start(ctx, service, h.cfg)
	if err != nil {
		return nil, err
	}
	warnWebhookPolicy(p.Logger, h.cfg)
	if err := probe.Ready(ctx, p.DB); err != nil {
		p.Logger.Warn("database not ready; run make dev once against it, or the operator's migrate command", "reason", err)
	}
	return p, nil
}

// apiServer is the API (api) with the server limits of API_* and HTTP
// server metrics.
func (h *harness) apiServer(p *bootstrap.Process) *httpserver.Server {
	return httpserver.New(httpserver.Options{
		Handler:    p.Metrics.InstrumentHandler(h.api(p)),
		Limits:     h.cfg.API.Server,
		Overloaded: httpapi.Overloaded,
		Logger:     p.Logger,
		Metrics:    p.Metrics,
	})
}

// api is the API as the functions serve it: submit, status and the
// management API, mounted on one port and sharing one API key cache, with
// the console under /console/.
func (h *harness) api(p *bootstrap.Process) http.Handler {
	cache := httpapi.NewAuthCache()
	return console.Mount(httpapi.Mux(
		submit.New(submit.Options{DB: p.DB, API: h.cfg.API, Webhook: h.cfg.Webhook, Logger: p.Logger, Metrics: p.Metrics, AuthCache: cache}),
		status.New(status.Options{DB: p.DB, API: h.cfg.API, Logger: p.Logger, Metrics: p.Metrics, AuthCache: cache,
			Handlers: manage.Handlers(manage.Options{DB: p.DB, API: h.cfg.API, Logger: p.Logger, AuthCache: cache})}),
	), console.New(console.Options{Service: &service.Service{DB: p.DB, Logger: p.Logger, KeyRevoked: cache.Evict}, Logger: p.Logger}))
}

// workers runs the process-tick and deliver-webhook loops until ctx is
// canceled; the channel closes once both have stopped gracefully. On a stop
// the deliverer goes on delivering until the processor has recorded its last
// outcomes, so webhooks of requests finishing in its grace go out too.
func (h *harness) workers(ctx context.Context, p *bootstrap.Process) <-chan struct{} {
	proc := processtick.New(processtick.Options{DB: p.DB, Config: h.cfg.Processor, Logger: p.Logger, Metrics: p.Metrics})
	procDone := make(chan struct{})
	deliverer := deliverwebhook.New(deliverwebhook.Options{DB: p.DB, Config: h.cfg.Webhook, Logger: p.Logger,
		Metrics: p.Metrics, ShutdownGrace: h.cfg.Processor.ShutdownGrace, Upstream: procDone})
	var loops sync.WaitGroup
	loops.Go(func() {
		defer close(procDone)
		if err := proc.Run(ctx); err != nil {
			p.Logger.Error("process-tick stopped", "error", err)
		}
	})
	loops.Go(func() {
		if err := deliverer.Run(ctx); err != nil {
			p.Logger.Error("deliver-webhook stopped", "error", err)
		}
	})
	done := make(chan struct{})
	go func() {
		loops.Wait()
		close(done)
	}()
	return done
}

// portVar is a port and the variable that sets it.
type portVar struct {
	name string
	port int
}

// listen binds ports on the harness's listen host, in order; an error
// names the variable that sets the port.
func (h *harness) listen(ports ...portVar) ([]net.Listener, error) {
	var ls []net.Listener
	for _, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(h.local.ListenHost, strconv.Itoa(p.port)))
		if err != nil {
			closeAll(ls)
			return nil, fmt.Errorf("%s: %w (set %s to another port)", p.name, err, p.name)
		}
		ls = append(ls, l)
	}
	return ls, nil
}

func closeAll(ls []net.Listener) {
	for _, l := range ls {
		_ = l.Close()
	}
}

func port(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }

// loopback is the host the harness's own URLs (the example deployments,
// the printed commands) use for a server listening on host.
func loopback(host string) string {
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return "127.0.0.1"
	}
	return host
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func note(cond bool, yes, no string) string {
	if cond {
		return yes
	}
	return no
}

// runner serves HTTP servers and stops them.
type runner struct {
	servers []server
	errs    chan error
}

// server is an *http.Server or an *httpserver.Server.
type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Close() error
}

// serve serves h on l in the background (the probes, the receiver, the
// example model: the API has its own limits, in apiServer).
func (r *runner) serve(l net.Listener, log *slog.Logger, h http.Handler) server {
	return r.start(l, &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)})
}

// start serves s on l in the background.
func (r *runner) start(l net.Listener, s server) server {
	if r.errs == nil {
		r.errs = make(chan error, 8)
	}
	r.servers = append(r.servers, s)
	go func() {
		if err := s.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			r.errs <- fmt.Errorf("serve %s: %w", l.Addr(), err)
		}
	}()
	return s
}

// wait blocks until ctx is canceled (nil) or a server fails (its error).
func (r *runner) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-r.errs:
		return err
	}
}

func (r *runner) shutdown(s server) {
	ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeoutDefault)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		_ = s.Close()
	}
}

func (r *runner) shutdownAll() {
	for _, s := range r.servers {
		r.shutdown(s)
	}
}

// logWriter turns the lines the migrations print into log records.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Info("migrate: " + string(trimNewline(p)))
	return len(p), nil
}

func trimNewline(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
