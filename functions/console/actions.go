package console

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// An action is a POST to /console/actions/{name}. Sent without confirm=yes
// it answers a page that says what will happen, carrying the same fields
// and a button that sends them again with confirm=yes: every action is
// confirmed without JavaScript. Done, it redirects (303) back to where it
// came from with a message.
type action struct {
	// confirm describes what the action will do, from its form; empty for
	// actions that need no confirmation.
	confirm func(f actionForm) (string, error)
	// button labels the confirmation's submit button.
	button string
	// danger marks destructive actions (a red button).
	danger bool
	do     func(s *server, w http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (done string, err error)
}

// actionForm is an action's fields.
type actionForm struct {
	url.Values
}

func (f actionForm) id() (requestid.ID, error) {
	id, err := requestid.Parse(f.Get("id"))
	if err != nil {
		return id, errNotFound
	}
	return id, nil
}

func (f actionForm) deployment() (string, error) {
	if d := f.Get("deployment"); validName(d) {
		return d, nil
	}
	return "", errNotFound
}

// errNotFound is an action on something that does not exist in the
// session's organization.
var errNotFound = postgres.ErrNotFound

// refusal is an action the backend refused, with a message for the user.
type refusal struct{ msg string }

func (e refusal) Error() string { return e.msg }

// Refuse returns an error whose message the console shows as it is: a
// Backend returns it for actions that are not allowed (a retry of a
// request whose input is gone).
func Refuse(msg string) error { return refusal{msg} }

var actions = map[string]action{
	"cancel": {
		button: "Cancel the request", danger: true,
		confirm: func(f actionForm) (string, error) {
			return "Cancel request " + f.Get("id") + "? It will not run, and no webhook will be sent.", nil
		},
		do: func(s *server, _ http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			id, err := f.id()
			if err != nil {
				return "", err
			}
			canceled, msg, err := s.backend.Cancel(r.Context(), sess.actor(), id)
			if err != nil {
				return "", err
			}
			if !canceled {
				return "", Refuse(msg)
			}
			return "Request canceled.", nil
		},
	},
	"retry": {
		button: "Run it again",
		confirm: func(f actionForm) (string, error) {
			return "Run request " + f.Get("id") + " again, with the same id and a fresh attempt budget?", nil
		},
		do: func(s *server, _ http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			id, err := f.id()
			if err != nil {
				return "", err
			}
			if err := s.backend.Retry(r.Context(), sess.actor(), id); err != nil {
				return "", err
			}
			return "Request queued again.", nil
		},
	},
	"redeliver": {
		button: "Send the webhook again",
		confirm: func(f actionForm) (string, error) {
			return "Send the webhook of request " + f.Get("id") + " again, from its stored result?", nil
		},
		do: func(s *server, _ http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			id, err := f.id()
			if err != nil {
				return "", err
			}
			if err := s.backend.Redeliver(r.Context(), sess.actor(), id); err != nil {
				return "", err
			}
			return "Webhook queued for delivery.", nil
		},
	},
	"bulk-cancel": {
		button: "Cancel them", danger: true,
		confirm: func(f actionForm) (string, error) {
			return "Cancel every queued request" + describeFilter(f) + " (at most 10,000 at once)?", nil
		},
		do: func(s *server, _ http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			matched, changed, err := s.backend.BulkCancel(r.Context(), sess.actor(), filterFromValues(f.Values))
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%d requests matched, %d canceled.", matched, changed), nil
		},
	},
	"bulk-retry": {
		button: "Run them again",
		confirm: func(f actionForm) (string, error) {
			return "Run every failed or expired request" + describeFilter(f) + " again (at most 10,000 at once)?", nil
		},
		do: func(s *server, _ http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			matched, changed, err := s.backend.BulkRetry(r.Context(), sess.actor(), filterFromValues(f.Values))
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%d requests matched, %d queued again.", matched, changed), nil
		},
	},
	"purge": {
		button: "Purge the queue", danger: true,
		confirm: func(f actionForm) (string, error) {
			return "Cancel every queued request of deployment " + f.Get("deployment") + "? Running requests finish.", nil
		},
		do: func(s *server, _ http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			dep, err := f.deployment()
			if err != nil {
				return "", err
			}
			n, err := s.backend.Purge(r.Context(), sess.actor(), dep)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("Queue of %s purged: %d requests canceled.", dep, n), nil
		},
	},
	"pause": {
		button: "Pause",
		confirm: func(f actionForm) (string, error) {
			return "Pause deployment " + f.Get("deployment") + "? It keeps accepting requests, but none is started until it is resumed; queue deadlines still run.", nil
		},
		do: func(s *server, _ http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			return setPaused(s, r, sess, f, true)
		},
	},
	"resume": {
		button: "Resume",
		confirm: func(f actionForm) (string, error) {
			return "Resume deployment " + f.Get("deployment") + "? Its queued requests start again.", nil
		},
		do: func(s *server, _ http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			return setPaused(s, r, sess, f, false)
		},
	},
	"concurrency": {
		button: "Change it",
		confirm: func(f actionForm) (string, error) {
			n, err := concurrency(f)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("Set max_concurrency of deployment %s to %d? It takes effect on the next claim.", f.Get("deployment"), n), nil
		},
		do: func(s *server, _ http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			dep, err := f.deployment()
			if err != nil {
				return "", err
			}
			n, err := concurrency(f)
			if err != nil {
				return "", err
			}
			if err := s.backend.SetConcurrency(r.Context(), sess.actor(), dep, n); err != nil {
				return "", err
			}
			return fmt.Sprintf("max_concurrency of %s is now %d.", dep, n), nil
		},
	},
	"create-key": {
		// Making a key destroys nothing; it is shown once on the answer.
		do: func(s *server, w http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			name := strings.TrimSpace(f.Get("name"))
			scope := f.Get("scope")
			if scope != "invoke" && scope != string(postgres.ScopeManage) {
				return "", Refuse("Choose the scope invoke or manage.")
			}
			if len(name) > 100 {
				return "", Refuse("A key's name is at most 100 characters.")
			}
			key, err := s.backend.APIKeyCreate(r.Context(), sess.actor(), name, scope)
			if err != nil {
				return "", err
			}
			s.renderKeys(w, r, sess, keysView{NewKey: key, NewKeyName: name, NewKeyScope: scope})
			return "", nil
		},
	},
	"revoke-key": {
		button: "Revoke the key", danger: true,
		confirm: func(f actionForm) (string, error) {
			return "Revoke API key " + f.Get("prefix") + "…? Clients using it are refused, and its console sessions end.", nil
		},
		do: func(s *server, _ http.ResponseWriter, r *http.Request, sess *sessionCtx, f actionForm) (string, error) {
			id, err := strconv.ParseInt(f.Get("key"), 10, 64)
			if err != nil {
				return "", errNotFound
			}
			if err := s.backend.APIKeyRevoke(r.Context(), sess.actor(), id); err != nil {
				return "", err
			}
			return "Key revoked.", nil
		},
	},
	"rotate-secret": {
		button: "Rotate",
		confirm: func(actionForm) (string, error) {
			return "Make a new webhook secret? The current one keeps signing for 24 hours, so receivers can switch.", nil
		},
		do: func(s *server, w http.ResponseWriter, r *http.Request, sess *sessionCtx, _ actionForm) (string, error) {
			secret, err := s.backend.WebhookSecretRotate(r.Context(), sess.actor())
			if err != nil {
				return "", err
			}
			s.renderSecrets(w, r, sess, secretsView{NewSecret: secret})
			return "", nil
		},
	},
}

func setPaused(s *server, r *http.Request, sess *sessionCtx, f actionForm, paused bool) (string, error) {
	dep, err := f.deployment()
	if err != nil {
		return "", err
	}
	if err := s.backend.SetPaused(r.Context(), sess.actor(), dep, paused); err != nil {
		return "", err
	}
	if paused {
		return "Deployment " + dep + " paused.", nil
	}
	return "Deployment " + dep + " resumed.", nil
}

// ConcurrencyMax is the largest max_concurrency, as the schema allows.
const ConcurrencyMax = 100_000

func concurrency(f actionForm) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(f.Get("max_concurrency")))
	if err != nil || n < 1 || n > ConcurrencyMax {
		return 0, Refuse(fmt.Sprintf("max_concurrency is a whole number from 1 to %d.", ConcurrencyMax))
	}
	return n, nil
}

func filterFromValues(v url.Values) RequestFilter {
	r := &http.Request{Form: v}
	return filterFrom(r)
}

func describeFilter(f actionForm) string {
	flt := filterFromValues(f.Values)
	var parts []string
	if flt.DeploymentID != "" {
		parts = append(parts, " of deployment "+flt.DeploymentID)
	}
	if flt.State != "" {
		parts = append(parts, " in state "+string(flt.State))
	}
	return strings.Join(parts, "")
}

type confirmView struct {
	Action   string
	Question string
	Button   string
	Danger   bool
	Fields   [][2]string
	Back     string
}

// action runs or confirms the action the path names.
func (s *server) action(w http.ResponseWriter, r *http.Request, sess *sessionCtx) {
	a, ok := actions[r.PathValue("action")]
	if !ok {
		s.errorPage(w, r, http.StatusNotFound, "Not found", "There is no such action.")
		return
	}
	if !sess.CanAct() {
		s.errorPage(w, r, http.StatusForbidden, "Not allowed",
			"You are signed in with an API key of scope invoke: you can see everything here, but only a manage key can act.")
		return
	}
	f := actionForm{r.PostForm}
	back := backURL(f.Get("back"))
	if a.confirm != nil && f.Get("confirm") != "yes" {
		q, err := a.confirm(f)
		if err != nil {
			s.actionError(w, r, err)
			return
		}
		v := confirmView{Action: r.PathValue("action"), Question: q, Button: a.button, Danger: a.danger, Back: back}
		for _, k := range []string{"id", "deployment", "state", "max_concurrency", "key", "prefix"} {
			if f.Has(k) {
				v.Fields = append(v.Fields, [2]string{k, f.Get(k)})
			}
		}
		s.render(w, r, http.StatusOK, "confirm", page{Title: "Confirm", Session: sess, Data: v})
		return
	}
	done, err := a.do(s, w, r, sess, f)
	if err != nil {
		s.actionError(w, r, err)
		return
	}
	if done == "" {
		return // the action wrote its own answer
	}
	s.log.Info("console action", "action", r.PathValue("action"), "organization_id", sess.OrganizationID,
		"api_key_id", sess.APIKeyID, "result", done)
	s.setFlash(w, r, done)
	http.Redirect(w, r, back, http.StatusSeeOther)
}

func (s *server) actionError(w http.ResponseWriter, r *http.Request, err error) {
	var ref refusal
	var apiErr *httpapi.Error
	switch {
	case errors.As(err, &ref):
		s.errorPage(w, r, http.StatusConflict, "Not done", ref.msg)
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound:
		s.errorPage(w, r, http.StatusNotFound, "Not found", "There is no such request, deployment or key in your organization.")
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusForbidden:
		s.errorPage(w, r, http.StatusForbidden, "Not allowed", "Only a key of scope manage can act.")
	case errors.As(err, &apiErr) && apiErr.Status < 500:
		// The service's refusals are written for the operator.
		msg := apiErr.Message
		if msg != "" {
			msg = strings.ToUpper(msg[:1]) + msg[1:] + "."
		}
		s.errorPage(w, r, http.StatusConflict, "Not done", msg)
	case errors.Is(err, postgres.ErrNotFound):
		s.errorPage(w, r, http.StatusNotFound, "Not found", "There is no such request, deployment or key in your organization.")
	default:
		s.serverError(w, r, err)
	}
}

// backURL keeps the page an action returns to when it is a console path.
func backURL(b string) string {
	if !strings.HasPrefix(b, Prefix) || strings.HasPrefix(b, "//") || strings.ContainsAny(b, "\\\r\n") {
		return Prefix
	}
	return b
}

// flashCookie carries the message an action leaves for the next page: a
// cookie, not the URL, so a link cannot put words in the console's mouth.
const flashCookie = "console_flash"

// setFlash leaves msg for the next page the browser loads.
func (s *server) setFlash(w http.ResponseWriter, r *http.Request, msg string) {
	s.setCookie(w, r, flashCookie, base64.RawURLEncoding.EncodeToString([]byte(msg)), 60)
}

// flash takes the message an action left, if any.
func (s *server) flash(w http.ResponseWriter, r *http.Request) string {
	c, err := r.Cookie(flashCookie)
	if err != nil {
		return ""
	}
	s.setCookie(w, r, flashCookie, "", -1)
	b, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil || len(b) > 500 {
		return ""
	}
	return strings.ToValidUTF8(string(b), "")
}
