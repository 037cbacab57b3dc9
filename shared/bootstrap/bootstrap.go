// Package bootstrap starts a process of the service the same way everywhere.
// The four Lambda functions and the dev harness set up their configuration,
// logger, tracer provider, metrics and database pool here, and stop them
// here, so a handler runs with the same dependencies under Lambda as under
// localdev.
package bootstrap

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/credential"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// CloseTimeoutDefault bounds exporting the last spans when a process stops:
// on Lambda, SIGTERM leaves about half a second before the process is
// killed.
const CloseTimeoutDefault = 500 * time.Millisecond

// Process holds what a process of the service sets up once.
type Process struct {
	// Service names the process in logs and traces (service.name).
	Service string
	Config  config.Config
	// Logger carries a "service" attribute.
	Logger *slog.Logger
	Tracer *telemetry.TracerProvider
	// Registry holds Metrics and the Go runtime and process collectors;
	// the probe serves it at /metrics.
	Registry *prometheus.Registry
	Metrics  *telemetry.Metrics
	// DB is the pool, capped at Config.Database.MaxConns, with the
	// retention periods of Config.Retention.
	DB *postgres.DB
}

// MustStart loads the configuration from the environment and starts a
// process named service. On any error it prints one line naming the problem
// (for bad configuration, the variable) and exits with status 1: the way a
// Lambda function's init fails.
func MustStart(ctx context.Context, service string) *Process {
	cfg, err := config.Load(ctx)
	if err != nil {
		Exit(service, err)
	}
	p, err := Start(ctx, service, cfg)
	if err != nil {
		Exit(service, err)
	}
	return p
}

// Start sets up a process named service with cfg. It does not wait for the
// database: the pool connects on first use, so a process can start while
// the database is briefly away.
func Start(ctx context.Context, service string, cfg config.Config) (*Process, error) {
	logger, err := NewLogger(cfg, service)
	if err != nil {
		return nil, err
	}
	connString, err := cfg.Database.ConnString()
	if err != nil {
		return nil, err
	}
	keys, err := credential.ParseKeys(cfg.UpstreamCredentialKeys)
	if err != nil {
		return nil, fmt.Errorf("configuration: UPSTREAM_CREDENTIAL_KEYS: %w", err)
	}
	tp, err := telemetry.SetupTracing(ctx, service)
	if err != nil {
		return nil, err
	}
	pg, err := postgres.Open(ctx, connString, cfg.Database.MaxConns)
	if err != nil {
		shutdown(tp)
		return nil, err
	}
	pg.Credentials = keys
	pg.StatusRetention = cfg.Retention.Status
	pg.OutputRetention = cfg.Retention.Output
	reg := prometheus.NewRegistry()
	return &Process{
		Service:  service,
		Config:   cfg,
		Logger:   logger,
		Tracer:   tp,
		Registry: reg,
		Metrics:  telemetry.NewMetrics(reg),
		DB:       pg,
	}, nil
}

// NewLogger returns the logger Start gives a process named service: to
// stderr, in the configured format and level, with a "service" attribute.
func NewLogger(cfg config.Config, service string) (*slog.Logger, error) {
	logger, err := telemetry.NewLogger(os.Stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		return nil, err
	}
	return logger.With("service", service), nil
}

// Close closes the pool and shuts the tracer provider down, exporting the
// spans still buffered within CloseTimeoutDefault. Lambda functions pass it
// to lambda.WithEnableSIGTERM.
func (p *Process) Close() {
	p.DB.Close()
	shutdown(p.Tracer)
}

func shutdown(tp *telemetry.TracerProvider) {
	ctx, cancel := context.WithTimeout(context.Background(), CloseTimeoutDefault)
	defer cancel()
	_ = tp.Shutdown(ctx)
}

// Exit prints "service: err" as one line on stderr and exits with status 1.
func Exit(service string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", service, err)
	os.Exit(1)
}
