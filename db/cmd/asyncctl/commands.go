package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/openasync/asyncrequest/shared/manage"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/webhook"
)

// This file holds the commands that act on an organization, one function
// and one flag set each.

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// table writes rows as aligned columns.
func table(w io.Writer, header string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func timeText(t *manage.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(manage.TimeFormat)
}

func createAPIKeyCmd(c *cli, fs *flag.FlagSet) func() error {
	name := fs.String("name", "", "a `label` for the key")
	scope := fs.String("scope", "manage", "`scope`: invoke (the async API only) or manage (also the management API and console actions)")
	return func() error {
		if err := c.checkOrg(); err != nil {
			return err
		}
		if *scope != "invoke" && *scope != "manage" {
			return usageErr("create-api-key: --scope must be invoke or manage")
		}
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		k, err := svc.APIKeyCreate(c.ctx, a, manage.APIKeyCreate{Name: *name, Scope: *scope})
		if err != nil {
			return refusal(c.cmd, err)
		}
		if err := c.show(k, func(w io.Writer) { fmt.Fprintln(w, k.Key) }); err != nil {
			return err
		}
		fmt.Fprintln(c.stderr, "asyncctl: API key created; it is shown only this once")
		return nil
	}
}

func listAPIKeysCmd(c *cli, fs *flag.FlagSet) func() error {
	return func() error {
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		ks, err := svc.APIKeyList(c.ctx, a)
		if err != nil {
			return err
		}
		return c.show(map[string]any{"api_keys": ks}, func(w io.Writer) {
			var rows [][]string
			for _, k := range ks {
				rows = append(rows, []string{strconv.FormatInt(k.ID, 10), k.Prefix + "...", string(k.Scope), k.Name,
					timeText(&k.CreatedAt), timeText(k.LastUsedAt)})
			}
			table(w, "ID\tPREFIX\tSCOPE\tNAME\tCREATED\tLAST USED", rows)
		})
	}
}

func revokeAPIKeyCmd(c *cli, fs *flag.FlagSet) func() error {
	id := fs.Int64("id", 0, "the API key's `id` (list-api-keys shows it)")
	return func() error {
		if err := c.checkOrg(); err != nil {
			return err
		}
		if *id <= 0 {
			return usageErr("revoke-api-key: --id must be an API key id")
		}
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		k, err := svc.APIKeyRevoke(c.ctx, a, *id)
		if err != nil {
			return refusal(c.cmd, err)
		}
		return c.show(k, func(w io.Writer) {
			fmt.Fprintf(w, "API key %d (%s...) revoked; running API instances refuse it within %s\n", k.ID, k.Prefix, "30s")
		})
	}
}

func createModelCmd(c *cli, fs *flag.FlagSet) func() error {
	id := fs.String("id", "", "the model's `id`: 1 to 64 letters, digits, '-' or '_'")
	chain := fs.Bool("chain", false, "create a chain, not a model")
	name := fs.String("name", "", "a `label`")
	return func() error {
		if err := c.checkOrg(); err != nil {
			return err
		}
		if !idPattern.MatchString(*id) {
			return usageErr("create-model: --id must be 1 to 64 letters, digits, '-' or '_'")
		}
		kind := postgres.KindModel
		if *chain {
			kind = postgres.KindChain
		}
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		m, err := svc.ModelPut(c.ctx, a, *id, manage.ModelPut{Kind: string(kind), Name: *name})
		if err != nil {
			if isCode(err, "ID_TAKEN") {
				return usageErr("create-model: id %q is taken", *id)
			}
			return refusal(c.cmd, err)
		}
		return c.show(m, func(w io.Writer) { fmt.Fprintf(w, "%s %q\n", m.Kind, m.ID) })
	}
}

func createDeploymentCmd(c *cli, fs *flag.FlagSet) func() error {
	model := fs.String("model", "", "the `model_id` it deploys")
	id := fs.String("id", "", "the deployment's `id`: 1 to 64 letters, digits, '-' or '_'")
	rawURL := fs.String("url", "", "the deployment's base `url` (http or https)")
	envs := fs.String("env", "", "`environments` to point at it, comma-separated (production,development)")
	maxConc := fs.Int("max-concurrency", manage.DeploymentMaxConcurrencyDefault, "most requests `n` in progress at once")
	credEnv := fs.String("credential-env", "", "the environment `variable` holding the upstream credential (kept as it is when not given)")
	return func() error {
		if err := c.checkOrg(); err != nil {
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
		put := manage.DeploymentPut{ModelID: *model, URL: *rawURL, Environments: splitList(*envs), MaxConcurrency: *maxConc}
		if *credEnv != "" {
			v, ok := c.env.Lookup(*credEnv)
			if !ok || v == "" {
				return usageErr("create-deployment: --credential-env %s is not set", *credEnv)
			}
			if k, _ := c.env.Lookup("UPSTREAM_CREDENTIAL_KEYS"); strings.TrimSpace(k) == "" {
				return usageErr("create-deployment: --credential-env needs UPSTREAM_CREDENTIAL_KEYS, the keys credentials are encrypted with")
			}
			put.UpstreamCredential = &v
		}
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		d, err := svc.DeploymentPut(c.ctx, a, *id, put)
		switch {
		case errors.Is(err, manage.ErrNoModel):
			return usageErr("create-deployment: model %q does not exist in organization %q", *model, c.org)
		case isCode(err, "ID_TAKEN"):
			return usageErr("create-deployment: id %q belongs to another model", *id)
		case err != nil:
			return refusal(c.cmd, err)
		}
		return c.show(d, func(w io.Writer) {
			fmt.Fprintf(w, "deployment %q of %q -> %s (max_concurrency %d, environments: %s)\n",
				d.ID, *model, *rawURL, d.MaxConcurrency, strings.Join(d.Environments, ","))
		})
	}
}

func deploymentRows(ds []manage.Deployment) [][]string {
	var rows [][]string
	for _, d := range ds {
		paused := "no"
		if d.Paused {
			paused = "yes"
		}
		rows = append(rows, []string{d.ID, d.ModelID + d.ChainID, d.URLHost, strings.Join(d.Environments, ","),
			strconv.Itoa(d.MaxConcurrency), paused, strconv.FormatInt(d.Queued, 10), strconv.FormatInt(d.InProgress, 10),
			(time.Duration(d.OldestQueuedAgeSeconds) * time.Second).String()})
	}
	return rows
}

const deploymentHeader = "ID\tMODEL\tURL HOST\tENVIRONMENTS\tMAX CONCURRENCY\tPAUSED\tQUEUED\tIN PROGRESS\tOLDEST QUEUED"

func listDeploymentsCmd(c *cli, fs *flag.FlagSet) func() error {
	return func() error {
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		ds, err := svc.DeploymentList(c.ctx, a)
		if err != nil {
			return err
		}
		return c.show(map[string]any{"deployments": ds}, func(w io.Writer) { table(w, deploymentHeader, deploymentRows(ds)) })
	}
}

// deploymentID defines --id for the commands that change one deployment.
func deploymentID(fs *flag.FlagSet) *string {
	return fs.String("id", "", "the deployment's `id`")
}

func (c *cli) checkDeployment(id string) error {
	if err := c.checkOrg(); err != nil {
		return err
	}
	if !idPattern.MatchString(id) {
		return usageErr("%s: --id must be a deployment id", c.cmd)
	}
	return nil
}

// updateDeployment applies p to deployment id and prints it.
func (c *cli) updateDeployment(id string, p manage.DeploymentPatch) error {
	svc, a, err := c.service()
	if err != nil {
		return err
	}
	d, err := svc.DeploymentUpdate(c.ctx, a, id, p)
	if err != nil {
		return refusal(c.cmd, err)
	}
	return c.show(d, func(w io.Writer) { table(w, deploymentHeader, deploymentRows([]manage.Deployment{d})) })
}

func pauseCmd(paused bool) func(c *cli, fs *flag.FlagSet) func() error {
	return func(c *cli, fs *flag.FlagSet) func() error {
		id := deploymentID(fs)
		return func() error {
			if err := c.checkDeployment(*id); err != nil {
				return err
			}
			return c.updateDeployment(*id, manage.DeploymentPatch{Paused: &paused})
		}
	}
}

func setConcurrencyCmd(c *cli, fs *flag.FlagSet) func() error {
	id := deploymentID(fs)
	n := fs.Int("max-concurrency", 0, "most requests `n` in progress at once, 1 to 100000")
	return func() error {
		if err := c.checkDeployment(*id); err != nil {
			return err
		}
		if *n < 1 || *n > 100000 {
			return usageErr("set-concurrency: --max-concurrency must be between 1 and 100000")
		}
		return c.updateDeployment(*id, manage.DeploymentPatch{MaxConcurrency: n})
	}
}

func purgeQueueCmd(c *cli, fs *flag.FlagSet) func() error {
	id := deploymentID(fs)
	return func() error {
		if err := c.checkDeployment(*id); err != nil {
			return err
		}
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		res, err := svc.DeploymentPurge(c.ctx, a, *id)
		if err != nil {
			return refusal(c.cmd, err)
		}
		return c.show(res, func(w io.Writer) { fmt.Fprintf(w, "%d queued requests canceled\n", res.Canceled) })
	}
}

// filterFlags defines the request filter flags.
type filterFlags struct {
	state, deployment, model, after, before *string
}

func defineFilter(fs *flag.FlagSet) filterFlags {
	return filterFlags{
		state:      fs.String("state", "", "only requests in this `state` (QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, EXPIRED, CANCELED, WEBHOOK_FAILED)"),
		deployment: fs.String("deployment", "", "only requests of this deployment `id`"),
		model:      fs.String("model", "", "only requests of this model or chain `id`"),
		after:      fs.String("created-after", "", "only requests created after this RFC 3339 `time`"),
		before:     fs.String("created-before", "", "only requests created before this RFC 3339 `time`"),
	}
}

func requestRows(rs []manage.Request) [][]string {
	var rows [][]string
	for _, r := range rs {
		rows = append(rows, []string{r.RequestID.String(), string(r.Status), string(r.WebhookStatus), r.ModelID + r.ChainID,
			r.DeploymentID, strconv.Itoa(r.Attempts), timeText(&r.CreatedAt)})
	}
	return rows
}

const requestHeader = "REQUEST ID\tSTATUS\tWEBHOOK\tMODEL\tDEPLOYMENT\tATTEMPTS\tCREATED"

func listRequestsCmd(c *cli, fs *flag.FlagSet) func() error {
	f := defineFilter(fs)
	limit := fs.Int("limit", manage.RequestListLimitDefault, fmt.Sprintf("page size `n`, 1 to %d", postgres.RequestListMax))
	cursor := fs.String("cursor", "", "continue after the page that printed this `cursor`")
	return func() error {
		if err := c.checkOrg(); err != nil {
			return err
		}
		after, err := flagTime(c.cmd, "created-after", *f.after)
		if err != nil {
			return err
		}
		before, err := flagTime(c.cmd, "created-before", *f.before)
		if err != nil {
			return err
		}
		if *limit < 1 || *limit > postgres.RequestListMax {
			return usageErr("list-requests: --limit must be between 1 and %d", postgres.RequestListMax)
		}
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		page, err := svc.RequestList(c.ctx, a, manage.RequestListParams{
			State: *f.state, DeploymentID: *f.deployment, ModelID: *f.model, CreatedAfter: after, CreatedBefore: before,
			Limit: *limit, Cursor: *cursor,
		})
		if err != nil {
			return refusal(c.cmd, err)
		}
		return c.show(page, func(w io.Writer) {
			table(w, requestHeader, requestRows(page.Requests))
			if page.NextCursor != nil {
				fmt.Fprintf(w, "more: --cursor %s\n", *page.NextCursor)
			}
		})
	}
}

func requestID(fs *flag.FlagSet) *string {
	return fs.String("id", "", "the `request_id`")
}

func showRequestCmd(c *cli, fs *flag.FlagSet) func() error {
	id := requestID(fs)
	return func() error {
		if err := c.checkOrg(); err != nil {
			return err
		}
		if *id == "" {
			return usageErr("show-request: --id is required")
		}
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		d, err := svc.RequestGet(c.ctx, a, *id)
		if err != nil {
			return refusal(c.cmd, err)
		}
		return c.show(d, func(w io.Writer) {
			table(w, requestHeader, requestRows([]manage.Request{d.Request}))
			if d.WebhookHost != "" {
				fmt.Fprintf(w, "webhook host: %s\n", d.WebhookHost)
			}
			fmt.Fprintln(w, "\nattempts:")
			var rows [][]string
			for _, at := range d.Attempts {
				status := "-"
				if at.HTTPStatus != nil {
					status = strconv.Itoa(*at.HTTPStatus)
				}
				rows = append(rows, []string{strconv.Itoa(at.Number), timeText(&at.StartedAt), fmt.Sprintf("%d ms", at.DurationMS),
					status, at.Code, at.Message})
			}
			table(w, "#\tSTARTED\tDURATION\tHTTP\tCODE\tMESSAGE", rows)
			fmt.Fprintln(w, "\nwebhook deliveries:")
			rows = nil
			for _, wd := range d.WebhookDeliveries {
				status := "-"
				if wd.HTTPStatus != nil {
					status = strconv.Itoa(*wd.HTTPStatus)
				}
				rows = append(rows, []string{timeText(&wd.SentAt), fmt.Sprintf("%d ms", wd.DurationMS), status, wd.Outcome, wd.Error})
			}
			table(w, "SENT\tDURATION\tHTTP\tOUTCOME\tERROR", rows)
		})
	}
}

func retryRequestCmd(c *cli, fs *flag.FlagSet) func() error {
	id := requestID(fs)
	return func() error {
		if err := c.checkOrg(); err != nil {
			return err
		}
		if *id == "" {
			return usageErr("retry-request: --id is required")
		}
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		r, err := svc.RequestRetry(c.ctx, a, *id)
		if err != nil {
			return refusal(c.cmd, err)
		}
		return c.show(r, func(w io.Writer) { fmt.Fprintf(w, "request %s is %s again\n", r.RequestID, r.Status) })
	}
}

func bulkCmd(name string) func(c *cli, fs *flag.FlagSet) func() error {
	return func(c *cli, fs *flag.FlagSet) func() error {
		ids := fs.String("ids", "", "request `ids`, comma-separated (instead of a filter)")
		f := defineFilter(fs)
		return func() error {
			if err := c.checkOrg(); err != nil {
				return err
			}
			var p manage.BulkParams
			filtered := *f.state != "" || *f.deployment != "" || *f.model != "" || *f.after != "" || *f.before != ""
			switch {
			case *ids != "" && filtered:
				return usageErr("%s: give --ids or filter flags, not both", name)
			case *ids != "":
				p.IDs = splitList(*ids)
			case filtered:
				p.Filter = &manage.BulkFilter{State: *f.state, DeploymentID: *f.deployment, ModelID: *f.model,
					CreatedAfter: *f.after, CreatedBefore: *f.before}
			default:
				return usageErr("%s: give --ids or at least one filter flag (--state, --deployment, --model, --created-after, --created-before)", name)
			}
			svc, a, err := c.service()
			if err != nil {
				return err
			}
			act := svc.RequestsCancel
			if name == "retry-requests" {
				act = svc.RequestsRetry
			}
			res, err := act(c.ctx, a, p)
			if err != nil {
				return refusal(c.cmd, err)
			}
			return c.show(res, func(w io.Writer) { fmt.Fprintf(w, "matched %d, changed %d\n", res.Matched, res.Changed) })
		}
	}
}

func listWebhookSecretsCmd(c *cli, fs *flag.FlagSet) func() error {
	return func() error {
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		ss, err := svc.WebhookSecretList(c.ctx, a)
		if err != nil {
			return err
		}
		return c.show(map[string]any{"webhook_secrets": ss}, func(w io.Writer) {
			var rows [][]string
			for _, s := range ss {
				rows = append(rows, []string{strconv.FormatInt(s.ID, 10), timeText(&s.CreatedAt), timeText(s.ExpiresAt)})
			}
			table(w, "ID\tCREATED\tEXPIRES", rows)
		})
	}
}

func rotateWebhookSecretCmd(c *cli, fs *flag.FlagSet) func() error {
	secret := fs.String("secret", "", "the new `secret` (whsec_ and base64); generated when not given")
	overlap := fs.Duration("overlap", postgres.WebhookSecretOverlapDefault, "how long the old secrets keep signing (`duration`)")
	return func() error {
		if err := c.checkOrg(); err != nil {
			return err
		}
		if *secret != "" {
			if err := webhook.ValidSecret(*secret); err != nil {
				return usageErr("rotate-webhook-secret: --secret must be whsec_ followed by base64")
			}
		}
		if *overlap <= 0 {
			return usageErr("rotate-webhook-secret: --overlap must be positive")
		}
		svc, a, err := c.service()
		if err != nil {
			return err
		}
		svc.WebhookSecretOverlap = *overlap
		s, err := svc.WebhookSecretRotate(c.ctx, a, *secret)
		if err != nil {
			return refusal(c.cmd, err)
		}
		return c.show(s, func(w io.Writer) { fmt.Fprintln(w, s.Secret) })
	}
}
