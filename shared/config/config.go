// Package config reads the service's configuration from environment
// variables, once, at start-up. Every binary (the four functions, the
// processor loop, the dev harness and the operator CLI) loads the same
// Config and reads the parts it needs, so one table in the README documents
// them all.
package config

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/openasync/asyncrequest/shared/credential"
)

// Config is the whole configuration. Defaults live in the struct tags.
type Config struct {
	Database  Database
	API       API
	Processor Processor
	Webhook   Webhook
	Retention Retention

	// UpstreamCredentialKeys encrypt deployments' upstream credentials at
	// rest: comma-separated base64 keys of 32 bytes, the first encrypts,
	// all decrypt (credential.ParseKeys). Unset, no deployment may be
	// given a credential. make dev generates one when unset.
	UpstreamCredentialKeys string `env:"UPSTREAM_CREDENTIAL_KEYS"`

	// LogFormat is "json" (deployed) or "text" (the dev harness).
	LogFormat string `env:"LOG_FORMAT, default=json"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `env:"LOG_LEVEL, default=info"`
}

// Database says where Postgres is: DATABASE_URL, or the DB_* variables of
// the original service when DATABASE_URL is unset.
type Database struct {
	URL      string `env:"DATABASE_URL"`
	Host     string `env:"DB_HOST"`
	Port     int    `env:"DB_PORT, default=5432"`
	User     string `env:"DB_USER, default=postgres"`
	Password string `env:"DB_PASSWORD"`
	Name     string `env:"DB_NAME, default=postgres"`
	// MaxConns caps the pool. Keep it small on Lambda, where every concurrent
	// invocation is its own process.
	MaxConns int32 `env:"DB_MAX_CONNS, default=10"`
}

// API configures the submit and status handlers.
type API struct {
	Port int `env:"API_PORT, default=9001"`
	// AdminPort serves /healthz, /readyz and /metrics of an API process
	// running alone (make run-server); make dev serves them on
	// PROCESSOR_PORT instead.
	AdminPort int `env:"API_ADMIN_PORT, default=9005"`
	// Server holds the limits of the API's HTTP server in a long-running
	// process.
	Server APIServer
	// SubmitRate and SubmitBurst are the per-organization token bucket for
	// submits, per API instance.
	SubmitRate  float64 `env:"ORG_SUBMIT_RATE, default=200"`
	SubmitBurst int     `env:"ORG_SUBMIT_BURST, default=400"`
	// ReadRate is the per-organization rate of status, cancel and queue reads.
	ReadRate float64 `env:"ORG_READ_RATE, default=100"`
	// MaxActiveRequests caps an organization's QUEUED plus IN_PROGRESS
	// requests across all instances.
	MaxActiveRequests int `env:"ORG_MAX_ACTIVE_REQUESTS, default=50000"`
}

// APIServer holds the limits of the API's HTTP server (make run-server and
// make dev; a Lambda function has no server of its own).
type APIServer struct {
	// ReadHeaderTimeout bounds reading a request's header.
	ReadHeaderTimeout time.Duration `env:"API_READ_HEADER_TIMEOUT, default=10s"`
	// ReadTimeout bounds reading a whole request, header and body.
	ReadTimeout time.Duration `env:"API_READ_TIMEOUT, default=30s"`
	// WriteTimeout bounds a request from the end of its header to the end
	// of its answer; it must exceed the longest long-poll (60 s).
	WriteTimeout time.Duration `env:"API_WRITE_TIMEOUT, default=75s"`
	// IdleTimeout closes a keep-alive connection that sends nothing.
	IdleTimeout time.Duration `env:"API_IDLE_TIMEOUT, default=60s"`
	// MaxHeaderBytes bounds a request's header (431 past it).
	MaxHeaderBytes int `env:"API_MAX_HEADER_BYTES, default=65536"`
	// MaxConns caps the open connections of one API process; past it, an
	// idle or still-silent connection is closed to make room, or else the
	// new one is answered 503 and closed.
	MaxConns int `env:"API_MAX_CONNS, default=4096"`
}

// Processor configures process-tick and its long-running loop.
type Processor struct {
	Port int `env:"PROCESSOR_PORT, default=9002"`
	// ModelTimeout is the per-attempt timeout of a model call.
	ModelTimeout time.Duration `env:"MODEL_TIMEOUT, default=3600s"`
	// Concurrency is how many model calls one processor runs at once.
	Concurrency int `env:"PROCESSOR_CONCURRENCY, default=256"`
	// LeaseDuration is how long a claim stays valid without renewal.
	LeaseDuration time.Duration `env:"LEASE_DURATION, default=30s"`
	// PollInterval is the safety-net poll when no wake-up arrives.
	PollInterval time.Duration `env:"POLL_INTERVAL, default=1s"`
	// ShutdownGrace is how long in-flight work may finish after SIGTERM.
	ShutdownGrace time.Duration `env:"SHUTDOWN_GRACE, default=25s"`
	// TickBudget is how long one scheduled tick (Lambda) keeps working.
	TickBudget time.Duration `env:"TICK_BUDGET, default=50s"`
	// BackpressureDelay is how long a request waits after the model said
	// it is not ready (429, connection refused) without a Retry-After.
	BackpressureDelay time.Duration `env:"BACKPRESSURE_DELAY, default=2s"`
	// BackpressureMinDelay is the floor on every back-pressure wait, a
	// model's Retry-After included, so a model answering 429 with
	// Retry-After: 0 is called at most once per this delay per request.
	BackpressureMinDelay time.Duration `env:"BACKPRESSURE_MIN_DELAY, default=100ms"`
}

// Webhook configures delivery and the URL policy.
type Webhook struct {
	// Timeout is the per-attempt delivery timeout.
	Timeout time.Duration `env:"WEBHOOK_TIMEOUT, default=15s"`
	// Schedule is the delay before each delivery attempt, comma-separated;
	// its length is the number of attempts.
	Schedule []time.Duration `env:"WEBHOOK_RETRY_SCHEDULE, default=0s,5s,30s,2m,10m,30m"`
	// CompatHeaders adds X-BASETEN-REQUEST-ID and X-BASETEN-SIGNATURE.
	CompatHeaders bool `env:"WEBHOOK_COMPAT_HEADERS, default=true"`
	// AllowHTTP permits http:// webhook URLs (local development only).
	AllowHTTP bool `env:"WEBHOOK_ALLOW_HTTP, default=false"`
	// AllowPrivate permits loopback and private webhook addresses (local
	// development only).
	AllowPrivate bool `env:"WEBHOOK_ALLOW_PRIVATE, default=false"`
	// Concurrency is how many deliveries one deliverer sends at once.
	Concurrency int `env:"WEBHOOK_CONCURRENCY, default=64"`
}

// Retention says how long finished data is kept.
type Retention struct {
	// Status is how long a request's row is kept after its final state.
	Status time.Duration `env:"RETENTION_STATUS, default=24h"`
	// Output is how long an output is kept after its webhook is delivered
	// or has failed (or after the request finished, with no webhook).
	Output time.Duration `env:"RETENTION_OUTPUT, default=1h"`
}

// Load reads the environment. Its error names the variable at fault.
func Load(ctx context.Context) (Config, error) {
	return LoadFrom(ctx, envconfig.OsLookuper())
}

// LoadFrom reads configuration from l (tests pass envconfig.MapLookuper).
func LoadFrom(ctx context.Context, l envconfig.Lookuper) (Config, error) {
	var c Config
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: l}); err != nil {
		return Config{}, fmt.Errorf("configuration: %s", nameVariable(err.Error()))
	}
	if err := c.validate(); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

func (c Config) validate() error {
	switch {
	case c.LogFormat != "json" && c.LogFormat != "text":
		return errors.New(`LOG_FORMAT: must be "json" or "text"`)
	case c.Database.MaxConns < 1:
		return errors.New("DB_MAX_CONNS: must be at least 1")
	case c.API.SubmitRate <= 0:
		return errors.New("ORG_SUBMIT_RATE: must be positive")
	case c.API.SubmitBurst < 1:
		return errors.New("ORG_SUBMIT_BURST: must be at least 1")
	case c.API.ReadRate <= 0:
		return errors.New("ORG_READ_RATE: must be positive")
	case c.API.MaxActiveRequests < 1:
		return errors.New("ORG_MAX_ACTIVE_REQUESTS: must be at least 1")
	case c.API.Server.ReadHeaderTimeout <= 0:
		return errors.New("API_READ_HEADER_TIMEOUT: must be positive")
	case c.API.Server.ReadTimeout <= 0:
		return errors.New("API_READ_TIMEOUT: must be positive")
	case c.API.Server.WriteTimeout <= 0:
		return errors.New("API_WRITE_TIMEOUT: must be positive")
	case c.API.Server.IdleTimeout <= 0:
		return errors.New("API_IDLE_TIMEOUT: must be positive")
	case c.API.Server.MaxHeaderBytes < 4096:
		return errors.New("API_MAX_HEADER_BYTES: must be at least 4096")
	case c.API.Server.MaxConns < 1:
		return errors.New("API_MAX_CONNS: must be at least 1")
	case c.Processor.ModelTimeout <= 0:
		return errors.New("MODEL_TIMEOUT: must be positive")
	case c.Processor.Concurrency < 1:
		return errors.New("PROCESSOR_CONCURRENCY: must be at least 1")
	case c.Processor.LeaseDuration < time.Second:
		return errors.New("LEASE_DURATION: must be at least 1s")
	case c.Processor.PollInterval <= 0:
		return errors.New("POLL_INTERVAL: must be positive")
	case c.Processor.BackpressureMinDelay < time.Millisecond:
		return errors.New("BACKPRESSURE_MIN_DELAY: must be at least 1ms")
	case c.Webhook.Timeout <= 0:
		return errors.New("WEBHOOK_TIMEOUT: must be positive")
	case len(c.Webhook.Schedule) == 0:
		return errors.New("WEBHOOK_RETRY_SCHEDULE: needs at least one delay")
	case c.Webhook.Concurrency < 1:
		return errors.New("WEBHOOK_CONCURRENCY: must be at least 1")
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"API_PORT", c.API.Port}, {"API_ADMIN_PORT", c.API.AdminPort}, {"PROCESSOR_PORT", c.Processor.Port}, {"DB_PORT", c.Database.Port}} {
		if p.v < 0 || p.v > 65535 {
			return fmt.Errorf("%s: %d is not a port", p.name, p.v)
		}
	}
	if _, err := credential.ParseKeys(c.UpstreamCredentialKeys); err != nil {
		return fmt.Errorf("UPSTREAM_CREDENTIAL_KEYS: %w", err)
	}
	_, err := c.Database.ConnString()
	return err
}

// ErrNoDatabase means neither DATABASE_URL nor DB_HOST is set.
var ErrNoDatabase = errors.New("DATABASE_URL: not set (set DATABASE_URL, or DB_HOST with DB_PORT, DB_USER, DB_PASSWORD and DB_NAME)")

// ConnString returns a postgres:// URL for the database.
func (d Database) ConnString() (string, error) {
	if d.URL != "" {
		u, err := url.Parse(d.URL)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return "", errors.New("DATABASE_URL: must be a postgres:// URL")
		}
		return d.URL, nil
	}
	if d.Host == "" {
		return "", ErrNoDatabase
	}
	u := url.URL{
		Scheme: "postgres",
		User:   url.UserPassword(d.User, d.Password),
		Host:   net.JoinHostPort(d.Host, strconv.Itoa(d.Port)),
		Path:   "/" + d.Name,
	}
	if d.Password == "" {
		u.User = url.User(d.User)
	}
	return u.String(), nil
}

// nameVariable rewrites envconfig's "Section: Field: problem" into
// "VARIABLE: problem", so the operator sees the name they set.
func nameVariable(msg string) string {
	var walk func(t reflect.Type, prefix string) string
	walk = func(t reflect.Type, prefix string) string {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			path := prefix + f.Name
			if tag, ok := f.Tag.Lookup("env"); ok {
				name, _, _ := strings.Cut(tag, ",")
				if rest, ok := strings.CutPrefix(msg, path+":"); ok {
					return name + ":" + rest
				}
				continue
			}
			if f.Type.Kind() == reflect.Struct {
				if out := walk(f.Type, path+": "); out != "" {
					return out
				}
			}
		}
		return ""
	}
	if out := walk(reflect.TypeFor[Config](), ""); out != "" {
		return out
	}
	return msg
}
