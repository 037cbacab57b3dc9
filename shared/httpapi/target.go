package httpapi

import (
	"context"
	"net"
	"net/http"
	"regexp"
	"strings"

	"github.com/openasync/asyncrequest/shared/postgres"
)

// Target is the model or chain a request's URL names.
type Target struct {
	Kind postgres.ModelKind
	// ID is the model or chain id; on a regional route (IsRegional), the
	// Host's "{model_id}-{env}" until ResolveDeployment splits it.
	ID string
	// Prefixed reports a target named by a path prefix, not the Host.
	Prefixed bool
}

// IsChain reports whether the target is a chain.
func (t Target) IsChain() bool { return t.Kind == postgres.KindChain }

// modelIDPattern is the shape of a model id, as the models table checks it.
var modelIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

type targetKey struct{}

// TargetFrom returns the target that WithTarget found for the request, if
// any.
func TargetFrom(ctx context.Context) (Target, bool) {
	t, ok := ctx.Value(targetKey{}).(Target)
	return t, ok
}

// WithTarget is middleware that reads the model or chain from the request
// and puts it in the request's context (TargetFrom):
//
//   - a path prefix, /models/{model_id}/... or /chains/{chain_id}/..., which
//     it strips, so that the routes below see /production/async_predict
//     whichever form was used; a prefix with an id that cannot exist, or
//     with nothing after it, is a 404;
//   - otherwise the Host header, model-{model_id}.<any domain> or
//     chain-{chain_id}.<any domain> (port ignored, prefix case-insensitive).
//
// The path prefix wins over the Host, since it is the more specific of the
// two: an API served at a host that happens to start with "model-" still
// works with path prefixes. A request naming no target passes on without
// one; the routes decide whether they need it.
func WithTarget(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, rest, prefixed := targetFromPath(r.URL.Path)
		if prefixed {
			if t.ID == "" {
				WriteError(w, r, nil, ErrNotFound)
				return
			}
			r2 := r.WithContext(context.WithValue(r.Context(), targetKey{}, t))
			u := *r.URL
			u.Path, u.RawPath = rest, ""
			r2.URL = &u
			next.ServeHTTP(w, r2)
			return
		}
		if t, ok := targetFromHost(r.Host); ok {
			r = r.WithContext(context.WithValue(r.Context(), targetKey{}, t))
		}
		next.ServeHTTP(w, r)
	})
}

// targetFromPath reads a /models/{id}/ or /chains/{id}/ prefix. prefixed
// reports whether the path starts with one; t.ID is empty when the id is
// malformed or nothing follows it.
func targetFromPath(path string) (t Target, rest string, prefixed bool) {
	for _, p := range []struct {
		prefix string
		kind   postgres.ModelKind
	}{{"/models/", postgres.KindModel}, {"/chains/", postgres.KindChain}} {
		after, ok := strings.CutPrefix(path, p.prefix)
		if !ok {
			continue
		}
		id, rest, ok := strings.Cut(after, "/")
		if !ok || !modelIDPattern.MatchString(id) {
			return Target{}, "", true
		}
		return Target{Kind: p.kind, ID: id, Prefixed: true}, "/" + rest, true
	}
	return Target{}, path, false
}

// targetFromHost reads model-{id}.<domain> or chain-{id}.<domain>.
func targetFromHost(host string) (Target, bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	label, _, ok := strings.Cut(host, ".")
	if !ok {
		return Target{}, false
	}
	for _, p := range []struct {
		prefix string
		kind   postgres.ModelKind
	}{{"model-", postgres.KindModel}, {"chain-", postgres.KindChain}} {
		if len(label) > len(p.prefix) && strings.EqualFold(label[:len(p.prefix)], p.prefix) {
			id := label[len(p.prefix):]
			if !modelIDPattern.MatchString(id) {
				return Target{}, false
			}
			return Target{Kind: p.kind, ID: id}, true
		}
	}
	return Target{}, false
}

// ResolveDeployment returns the deployment that r names for target t of
// organization org, and t with its ID resolved. On a deployment route it
// reads the path (DeploymentTarget). On a regional route (IsRegional) the
// Host label "{model_id}-{env}" is split against what exists: the longest
// model id of the organization for which the rest of the label is one of
// its environments wins, so model-example-chain-production names model
// example-chain's production, and model "example" with an environment
// "chain-production" would lose to it. postgres.ErrNotFound when nothing
// matches.
func ResolveDeployment(ctx context.Context, db *postgres.DB, r *http.Request, org int64, t Target) (Target, postgres.Deployment, error) {
	if !IsRegional(r) {
		dep, err := db.DeploymentResolve(ctx, DeploymentTarget(r, org, t))
		return t, dep, err
	}
	dep, _, err := db.DeploymentResolveRegional(ctx, postgres.DeploymentResolveRegionalParams{
		OrganizationID: org, Kind: t.Kind, Label: t.ID})
	if err != nil {
		return t, dep, err
	}
	t.ID = dep.ModelID
	return t, dep, nil
}
