// Command asyncctl is the operator CLI: it migrates the database, creates
// organizations, API keys, models, chains, deployments and webhook secrets,
// and runs every action of the management API (SPEC §13) through the same
// service code (shared/manage) as the /v1 routes.
//
// Each command has its own flags; `asyncctl <command> --help` lists them.
// Every command but migrate and reencrypt-credentials takes --org (the organization's name) and
// --json (the answer as the management API's JSON, for scripts). It reads
// the database from DATABASE_URL (or the DB_* variables), like the
// service. A bad argument gives one line on stderr and exit status 2; a
// failure (not found, refused, database down) exit status 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sethvargo/go-envconfig"

	"github.com/openasync/asyncrequest/db"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/credential"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/manage"
	"github.com/openasync/asyncrequest/shared/postgres"
)

// command is one asyncctl command: its name, what it does, the arguments
// its usage line shows, and setup, which defines its flags on fs and
// returns the function that runs it once they are parsed.
type command struct {
	name    string
	args    string
	summary string
	// noOrg: the command takes no --org (migrate).
	noOrg bool
	setup func(c *cli, fs *flag.FlagSet) func() error
}

// commands in the order usage lists them.
var commands = []command{
	{name: "migrate", summary: "create the database if missing, apply pending migrations", noOrg: true, setup: migrateCmd},
	{name: "create-org", args: "--org <name>", summary: "create an organization (no-op if it exists); the name may also be the one argument", setup: createOrgCmd},
	{name: "create-api-key", args: "--org <name> [--name <label>] [--scope manage|invoke]", summary: "create an API key; it is printed once, only its hash is stored", setup: createAPIKeyCmd},
	{name: "list-api-keys", args: "--org <name>", summary: "list the API keys (prefix, name, scope, created, last used; never the key)", setup: listAPIKeysCmd},
	{name: "revoke-api-key", args: "--org <name> --id <api_key_id>", summary: "revoke an API key (refused everywhere within 30 s)", setup: revokeAPIKeyCmd},
	{name: "create-model", args: "--org <name> --id <model_id> [--chain] [--name <label>]", summary: "create a model (or, with --chain, a chain), or rename it", setup: createModelCmd},
	{name: "create-deployment", args: "--org <name> --model <model_id> --id <deployment_id> --url <base url> [--env production,development] [--max-concurrency 8] [--credential-env VAR]", summary: "create or update a deployment and point environments at it", setup: createDeploymentCmd},
	{name: "list-deployments", args: "--org <name>", summary: "list deployments with their live queue figures", setup: listDeploymentsCmd},
	{name: "pause-deployment", args: "--org <name> --id <deployment_id>", summary: "stop claiming a deployment's requests (submits are still accepted)", setup: pauseCmd(true)},
	{name: "resume-deployment", args: "--org <name> --id <deployment_id>", summary: "claim a paused deployment's requests again", setup: pauseCmd(false)},
	{name: "set-concurrency", args: "--org <name> --id <deployment_id> --max-concurrency <n>", summary: "change a deployment's max_concurrency", setup: setConcurrencyCmd},
	{name: "purge-queue", args: "--org <name> --id <deployment_id>", summary: "cancel every QUEUED request of a deployment", setup: purgeQueueCmd},
	{name: "list-requests", args: "--org <name> [--state S] [--deployment D] [--model M] [--created-after T] [--created-before T] [--limit 50] [--cursor C]", summary: "list requests, newest first", setup: listRequestsCmd},
	{name: "show-request", args: "--org <name> --id <request_id>", summary: "show a request with its attempts and webhook deliveries", setup: showRequestCmd},
	{name: "retry-request", args: "--org <name> --id <request_id>", summary: "run a FAILED or EXPIRED request again", setup: retryRequestCmd},
	{name: "cancel-requests", args: "--org <name> (--ids a,b,... | [--state S] [--deployment D] [--model M] [--created-after T] [--created-before T])", summary: "cancel QUEUED requests by id or filter, at most 10,000 per call", setup: bulkCmd("cancel-requests")},
	{name: "retry-requests", args: "--org <name> (--ids a,b,... | [--state S] [--deployment D] [--model M] [--created-after T] [--created-before T])", summary: "retry FAILED or EXPIRED requests by id or filter, at most 10,000 per call", setup: bulkCmd("retry-requests")},
	{name: "reencrypt-credentials", summary: "encrypt every upstream credential under the first UPSTREAM_CREDENTIAL_KEYS key", noOrg: true, setup: reencryptCmd},
	{name: "list-webhook-secrets", args: "--org <name>", summary: "list the webhook secrets that sign (id, created, expires; never the secret)", setup: listWebhookSecretsCmd},
	{name: "rotate-webhook-secret", args: "--org <name> [--secret whsec_...] [--overlap 24h]", summary: "make a new webhook secret current; the old ones sign for --overlap", setup: rotateWebhookSecretCmd},
}

func usage() string {
	var b strings.Builder
	b.WriteString("usage: asyncctl <command> [flags]   (asyncctl <command> --help lists its flags)\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-22s %s\n", c.name, c.summary)
	}
	b.WriteString("\nevery command but migrate and reencrypt-credentials takes --org <name>; every one takes --json\n")
	return b.String()
}

// errUsage marks errors that are the caller's: exit status 2.
type errUsage struct{ msg string }

func (e errUsage) Error() string { return e.msg }

func usageErr(format string, args ...any) error { return errUsage{fmt.Sprintf(format, args...)} }

// printable reports whether s is valid UTF-8 without control characters, as
// names and URLs stored in the database must be.
func printable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, envconfig.OsLookuper())
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, env envconfig.Lookuper) int {
	err := dispatch(ctx, args, stdout, stderr, env)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "asyncctl: "+strings.ReplaceAll(err.Error(), "\n", " "))
	var u errUsage
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

// cli is what every command shares: its output, the environment, the
// common flags, and the database once opened.
type cli struct {
	ctx    context.Context
	cmd    string
	stdout io.Writer
	stderr io.Writer
	env    envconfig.Lookuper
	org    string
	json   bool
	pg     *postgres.DB
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer, env envconfig.Lookuper) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage())
		if len(args) == 0 {
			return usageErr("missing command (see asyncctl help)")
		}
		return nil
	}
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == args[0] })
	if i < 0 {
		return usageErr("unknown command %q (see asyncctl help)", args[0])
	}
	cmd := commands[i]
	c := &cli{ctx: ctx, cmd: cmd.name, stdout: stdout, stderr: stderr, env: env}
	defer func() {
		if c.pg != nil {
			c.pg.Close()
		}
	}()
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if !cmd.noOrg {
		fs.StringVar(&c.org, "org", "", "the organization's `name`")
	}
	fs.BoolVar(&c.json, "json", false, "print the answer as JSON")
	runCmd := cmd.setup(c, fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "usage: asyncctl %s %s\n\n%s\n\nflags:\n", cmd.name, cmd.args, cmd.summary)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return nil
		}
		return usageErr("%s: %v", cmd.name, err)
	}
	if cmd.name != "create-org" && fs.NArg() > 0 {
		return usageErr("%s: unexpected argument %q", cmd.name, fs.Arg(0))
	}
	return runCmd()
}

// open connects to the database (once).
func (c *cli) open() (*postgres.DB, error) {
	if c.pg != nil {
		return c.pg, nil
	}
	cfg, err := config.LoadFrom(c.ctx, c.env)
	if err != nil {
		return nil, usageErr("%v", err)
	}
	connString, _ := cfg.Database.ConnString()
	pg, err := postgres.Open(c.ctx, connString, 2)
	if err != nil {
		return nil, err
	}
	pg.Credentials, _ = credential.ParseKeys(cfg.UpstreamCredentialKeys) // checked by config.LoadFrom
	c.pg = pg
	return pg, nil
}

// checkOrg validates --org without touching the database.
func (c *cli) checkOrg() error {
	if c.org == "" {
		return usageErr("%s: --org is required", c.cmd)
	}
	if !printable(c.org) {
		return usageErr("%s: --org must be printable UTF-8 text", c.cmd)
	}
	return nil
}

// service checks --org, opens the database and returns the management service acting for
// --org as the operator (key id 0, named "asyncctl").
func (c *cli) service() (*manage.Service, manage.Actor, error) {
	if err := c.checkOrg(); err != nil {
		return nil, manage.Actor{}, err
	}
	pg, err := c.open()
	if err != nil {
		return nil, manage.Actor{}, err
	}
	o, err := pg.OrganizationGetByName(c.ctx, c.org)
	if errors.Is(err, postgres.ErrNotFound) {
		return nil, manage.Actor{}, usageErr("%s: organization %q does not exist (create-org first)", c.cmd, c.org)
	}
	if err != nil {
		return nil, manage.Actor{}, err
	}
	// Actions are logged on stderr, as the API logs them.
	svc := &manage.Service{DB: pg, Logger: slog.New(slog.NewTextHandler(c.stderr, nil))}
	return svc, manage.Actor{OrganizationID: o.ID, KeyName: "asyncctl", Scope: postgres.ScopeManage}, nil
}

// show prints v as JSON with --json, else as human prints it.
func (c *cli) show(v any, human func(w io.Writer)) error {
	if c.json {
		enc := json.NewEncoder(c.stdout)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	human(c.stdout)
	return nil
}

// refusal turns the service's answer to a caller mistake (a 400) into a
// usage error; anything else stays as it is (exit status 1).
func refusal(cmd string, err error) error {
	var e *httpapi.Error
	if errors.As(err, &e) {
		if e.Status == http.StatusBadRequest {
			return usageErr("%s: %s", cmd, e.Message)
		}
		return fmt.Errorf("%s: %s", cmd, e.Message)
	}
	return err
}

// isCode reports whether err is the service's refusal with code.
func isCode(err error, code string) bool {
	var e *httpapi.Error
	return errors.As(err, &e) && e.Code == code
}

// flagTime parses an optional RFC 3339 time flag.
func flagTime(cmd, name, raw string) (time.Time, error) {
	if raw == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, raw)
	if err != nil {
		return time.Time{}, usageErr("%s: --%s must be an RFC 3339 time such as 2026-12-01T09:00:00Z", cmd, name)
	}
	return t, nil
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func migrateCmd(c *cli, fs *flag.FlagSet) func() error {
	return func() error {
		cfg, err := config.LoadFrom(c.ctx, c.env)
		if err != nil {
			return usageErr("%v", err)
		}
		connString, _ := cfg.Database.ConnString()
		log := c.stdout
		if c.json {
			log = io.Discard
		}
		if err := db.Migrate(c.ctx, connString, true, log); err != nil {
			return err
		}
		return c.show(map[string]string{"version": db.LatestVersion()}, func(w io.Writer) {
			fmt.Fprintln(w, "database at migration", db.LatestVersion())
		})
	}
}

func createOrgCmd(c *cli, fs *flag.FlagSet) func() error {
	return func() error {
		name := c.org
		switch {
		case fs.NArg() > 1 || (fs.NArg() == 1 && name != ""):
			return usageErr("create-org: expected exactly one organization name (--org or one argument)")
		case fs.NArg() == 1:
			name = fs.Arg(0)
		}
		name = strings.TrimSpace(name)
		if name == "" {
			return usageErr("create-org: expected exactly one organization name (--org or one argument)")
		}
		if !printable(name) {
			return usageErr("create-org: the organization name must be printable UTF-8 text")
		}
		pg, err := c.open()
		if err != nil {
			return err
		}
		o, err := pg.OrganizationEnsure(c.ctx, name)
		if err != nil {
			return err
		}
		return c.show(map[string]any{"id": o.ID, "name": o.Name}, func(w io.Writer) {
			fmt.Fprintf(w, "organization %q (id %d)\n", o.Name, o.ID)
		})
	}
}

func reencryptCmd(c *cli, fs *flag.FlagSet) func() error {
	return func() error {
		pg, err := c.open()
		if err != nil {
			return err
		}
		n, err := pg.DeploymentCredentialsReencrypt(c.ctx)
		if err != nil {
			return err
		}
		return c.show(map[string]int{"reencrypted": n}, func(w io.Writer) {
			fmt.Fprintf(w, "%d upstream credentials re-encrypted under the first key\n", n)
		})
	}
}
