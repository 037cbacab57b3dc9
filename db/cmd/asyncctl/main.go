// Command asyncctl is the operator CLI: it migrates the database and creates
// organizations, API keys, models, chains, deployments and webhook secrets.
//
// It reads the database from DATABASE_URL (or the DB_* variables), like the
// service. Every bad argument gives one line on stderr and exit status 2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sethvargo/go-envconfig"

	"github.com/openasync/asyncrequest/db"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/credential"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/webhook"
)

const usage = `usage: asyncctl <command> [flags]

commands:
  migrate                                   create the database if missing, apply pending migrations
  create-org <name>                         create an organization (no-op if it exists)
  create-api-key --org <name> [--name <label>]
                                            create an API key; it is printed once, only its hash is stored
  create-model --org <name> --id <model_id> [--chain] [--name <label>]
                                            create a model (or, with --chain, a chain)
  create-deployment --org <name> --model <model_id> --id <deployment_id> --url <base url>
                    [--env production,development] [--max-concurrency 8] [--credential-env VAR]
                                            create or update a deployment and point environments at it
  rotate-webhook-secret --org <name> [--secret whsec_...] [--overlap 24h]
                                            make a new webhook secret current; the old ones sign for --overlap
  reencrypt-credentials                     encrypt every upstream credential under the first UPSTREAM_CREDENTIAL_KEYS key
`

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

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer, env envconfig.Lookuper) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return usageErr("missing command (see asyncctl help)")
		}
		return nil
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	org := fs.String("org", "", "organization name")
	name := fs.String("name", "", "label")
	id := fs.String("id", "", "id")
	chain := fs.Bool("chain", false, "create a chain")
	model := fs.String("model", "", "model id")
	rawURL := fs.String("url", "", "deployment base url")
	envs := fs.String("env", "", "environments, comma-separated")
	maxConc := fs.Int("max-concurrency", 8, "max concurrent requests")
	credEnv := fs.String("credential-env", "", "variable holding the upstream credential")
	secret := fs.String("secret", "", "webhook secret")
	overlap := fs.Duration("overlap", postgres.WebhookSecretOverlapDefault, "old secret overlap")
	if err := fs.Parse(args); err != nil {
		return usageErr("%s: %v", cmd, err)
	}
	pos := fs.Args()
	var orgName string
	requireOrg := func() error {
		if *org == "" {
			return usageErr("%s: --org is required", cmd)
		}
		if !printable(*org) {
			return usageErr("%s: --org must be printable UTF-8 text", cmd)
		}
		return nil
	}

	// Validate everything before touching the database.
	switch cmd {
	case "migrate", "reencrypt-credentials":
	case "create-org":
		if len(pos) != 1 || strings.TrimSpace(pos[0]) == "" {
			return usageErr("create-org: expected exactly one organization name")
		}
		if !printable(pos[0]) {
			return usageErr("create-org: the organization name must be printable UTF-8 text")
		}
		orgName, pos = strings.TrimSpace(pos[0]), pos[1:]
	case "create-api-key":
		if err := requireOrg(); err != nil {
			return err
		}
	case "create-model":
		if err := requireOrg(); err != nil {
			return err
		}
		if !idPattern.MatchString(*id) {
			return usageErr("create-model: --id must be 1 to 64 letters, digits, '-' or '_'")
		}
	case "create-deployment":
		if err := requireOrg(); err != nil {
			return err
		}
		if !idPattern.MatchString(*model) {
			return usageErr("create-deployment: --model must be a model id")
		}
		if !idPattern.MatchString(*id) {
			return usageErr("create-deployment: --id must be 1 to 64 letters, digits, '-' or '_'")
		}
		u, err := url.Parse(*rawURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || !printable(*rawURL) {
			return usageErr("create-deployment: --url must be an http or https URL")
		}
		if *maxConc < 1 || *maxConc > 100000 {
			return usageErr("create-deployment: --max-concurrency must be between 1 and 100000")
		}
		for _, e := range splitList(*envs) {
			if !idPattern.MatchString(e) {
				return usageErr("create-deployment: --env %q is not a valid environment name", e)
			}
		}
		if *credEnv != "" {
			if v, ok := env.Lookup(*credEnv); !ok || v == "" {
				return usageErr("create-deployment: --credential-env %s is not set", *credEnv)
			}
			if v, _ := env.Lookup("UPSTREAM_CREDENTIAL_KEYS"); strings.TrimSpace(v) == "" {
				return usageErr("create-deployment: --credential-env needs UPSTREAM_CREDENTIAL_KEYS, the keys credentials are encrypted with")
			}
		}
	case "rotate-webhook-secret":
		if err := requireOrg(); err != nil {
			return err
		}
		if *secret != "" {
			if err := webhook.ValidSecret(*secret); err != nil {
				return usageErr("rotate-webhook-secret: --secret must be whsec_ followed by base64")
			}
		}
		if *overlap < 0 {
			return usageErr("rotate-webhook-secret: --overlap must not be negative")
		}
	default:
		return usageErr("unknown command %q (see asyncctl help)", cmd)
	}
	if len(pos) > 0 {
		return usageErr("%s: unexpected argument %q", cmd, pos[0])
	}

	cfg, err := config.LoadFrom(ctx, env)
	if err != nil {
		return usageErr("%v", err)
	}
	connString, _ := cfg.Database.ConnString()
	if cmd == "migrate" {
		if err := db.Migrate(ctx, connString, true, stdout); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "database at migration", db.LatestVersion())
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pg, err := postgres.Open(ctx, connString, 2)
	if err != nil {
		return err
	}
	defer pg.Close()
	pg.Credentials, _ = credential.ParseKeys(cfg.UpstreamCredentialKeys) // checked by config.LoadFrom

	if cmd == "reencrypt-credentials" {
		n, err := pg.DeploymentCredentialsReencrypt(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d upstream credentials re-encrypted under the first key\n", n)
		return nil
	}

	if cmd == "create-org" {
		o, err := pg.OrganizationEnsure(ctx, orgName)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "organization %q (id %d)\n", o.Name, o.ID)
		return nil
	}
	o, err := pg.OrganizationGetByName(ctx, *org)
	if errors.Is(err, postgres.ErrNotFound) {
		return usageErr("%s: organization %q does not exist (create-org first)", cmd, *org)
	}
	if err != nil {
		return err
	}
	switch cmd {
	case "create-api-key":
		key := postgres.NewAPIKey()
		if err := pg.APIKeyCreate(ctx, o.ID, key, *name); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", key)
		fmt.Fprintln(stderr, "asyncctl: API key created; it is shown only this once")
	case "create-model":
		kind := postgres.KindModel
		if *chain {
			kind = postgres.KindChain
		}
		err := pg.ModelCreate(ctx, postgres.Model{ID: *id, OrganizationID: o.ID, Kind: kind, Name: *name})
		if errors.Is(err, postgres.ErrConflict) {
			return usageErr("create-model: id %q is taken", *id)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %q\n", kind, *id)
	case "create-deployment":
		var cred string
		if *credEnv != "" {
			cred, _ = env.Lookup(*credEnv)
		}
		err := pg.DeploymentCreate(ctx, o.ID, postgres.Deployment{
			ID: *id, ModelID: *model, URL: *rawURL, Environments: splitList(*envs),
			MaxConcurrency: *maxConc, UpstreamCredential: cred,
		})
		switch {
		case errors.Is(err, postgres.ErrNotFound):
			return usageErr("create-deployment: model %q does not exist in organization %q", *model, *org)
		case errors.Is(err, postgres.ErrConflict):
			return usageErr("create-deployment: id %q belongs to another model", *id)
		case err != nil:
			return err
		}
		fmt.Fprintf(stdout, "deployment %q of %q -> %s (max_concurrency %d, environments: %s)\n",
			*id, *model, *rawURL, *maxConc, strings.Join(splitList(*envs), ","))
	case "rotate-webhook-secret":
		s := *secret
		if s == "" {
			if s, err = webhook.GenerateSecret(); err != nil {
				return err
			}
		}
		if err := pg.WebhookSecretRotate(ctx, o.ID, s, *overlap); err != nil {
			return err
		}
		fmt.Fprintln(stdout, s)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
