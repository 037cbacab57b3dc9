package console

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
)

type overviewView struct {
	Deployments []deploymentRow
	Since       time.Time
}

type deploymentRow struct {
	Deployment
	Charts deploymentCharts
	// Load is in progress against max_concurrency, in percent.
	Load int64
}

func (s *server) overview(w http.ResponseWriter, r *http.Request, sess *sessionCtx) {
	deps, err := s.backend.Deployments(r.Context(), sess.actor())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	now := s.now()
	since := now.UTC().Truncate(time.Minute).Add(-(chartMinutes - 1) * time.Minute)
	stats, err := s.backend.Completions(r.Context(), sess.actor(), since)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	charts := buildCharts(stats, now)
	v := overviewView{Since: since}
	for _, d := range deps {
		c, ok := charts[d.ID]
		if !ok {
			c = deploymentCharts{Completions: completionsChart([chartMinutes]*MinuteStat{}, since), Latency: latencyChart([chartMinutes]*MinuteStat{}, since)}
		}
		v.Deployments = append(v.Deployments, deploymentRow{Deployment: d, Charts: c,
			Load: min(100, d.InProgress*100/int64(max(1, d.MaxConcurrency)))})
	}
	s.render(w, r, http.StatusOK, "overview", page{Title: "Deployments", Nav: "overview", Session: sess, Flash: s.flash(w, r), Data: v})
}

// requestStates are the states the requests page filters by.
var requestStates = []postgres.RequestState{
	postgres.StateQueued, postgres.StateInProgress, postgres.StateSucceeded, postgres.StateFailed,
	postgres.StateExpired, postgres.StateCanceled, postgres.StateWebhookFailed,
}

type requestsView struct {
	Filter      RequestFilter
	States      []postgres.RequestState
	Deployments []string
	Page        RequestPage
	Query       string
	Problem     string
	NextURL     string
	FirstURL    string
	Paged       bool
}

// filterFrom reads a request filter from the query or form; an unknown
// state or a deployment that is not an id is ignored.
func filterFrom(r *http.Request) RequestFilter {
	var f RequestFilter
	if st := postgres.RequestState(r.FormValue("state")); slices.Contains(requestStates, st) {
		f.State = st
	}
	if d := r.FormValue("deployment"); validName(d) {
		f.DeploymentID = d
	}
	return f
}

// validName reports whether s has the shape of a deployment or model id.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (f RequestFilter) query() url.Values {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	if f.DeploymentID != "" {
		q.Set("deployment", f.DeploymentID)
	}
	return q
}

func (s *server) requests(w http.ResponseWriter, r *http.Request, sess *sessionCtx) {
	v := requestsView{Filter: filterFrom(r), States: requestStates, Query: strings.TrimSpace(r.FormValue("q"))}
	if v.Query != "" {
		id, err := requestid.Parse(strings.ToLower(v.Query))
		if err == nil {
			http.Redirect(w, r, "/console/requests/"+id.String(), http.StatusSeeOther)
			return
		}
		v.Problem = "A request id is 32 hexadecimal characters."
	}
	deps, err := s.backend.Deployments(r.Context(), sess.actor())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	for _, d := range deps {
		v.Deployments = append(v.Deployments, d.ID)
	}
	cursor := r.FormValue("cursor")
	if len(cursor) > 500 {
		cursor = ""
	}
	v.Paged = cursor != ""
	v.Page, err = s.backend.Requests(r.Context(), sess.actor(), v.Filter, cursor, PageSizeDefault)
	if errors.Is(err, ErrBadCursor) {
		v.Problem = "That page link is no longer valid; this is the first page."
		v.Paged = false
		v.Page, err = s.backend.Requests(r.Context(), sess.actor(), v.Filter, "", PageSizeDefault)
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	q := v.Filter.query()
	v.FirstURL = "/console/requests?" + q.Encode()
	if v.Page.NextCursor != "" {
		q.Set("cursor", v.Page.NextCursor)
		v.NextURL = "/console/requests?" + q.Encode()
	}
	s.render(w, r, http.StatusOK, "requests", page{Title: "Requests", Nav: "requests", Session: sess, Flash: s.flash(w, r), Data: v})
}

// ErrBadCursor is what a Backend's Requests returns for a cursor it did
// not make; the page then starts over at the first page.
var ErrBadCursor = errors.New("bad cursor")

type timelineEvent struct {
	Time   time.Time
	Kind   string // submitted, attempt, wait, final, webhook
	Title  string
	Badge  string
	Class  string
	Detail string
	Took   time.Duration
}

type requestView struct {
	Request     RequestDetail
	Events      []timelineEvent
	CanCancel   bool
	CanRetry    bool
	CanRedelive bool
	Final       bool
}

func (s *server) request(w http.ResponseWriter, r *http.Request, sess *sessionCtx) {
	id, err := requestid.Parse(r.PathValue("id"))
	if err != nil {
		s.errorPage(w, r, http.StatusNotFound, "No such request", "There is no request with this id in your organization.")
		return
	}
	d, err := s.backend.Request(r.Context(), sess.actor(), id)
	if errors.Is(err, postgres.ErrNotFound) {
		s.errorPage(w, r, http.StatusNotFound, "No such request", "There is no request with this id in your organization.")
		return
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	v := requestView{Request: d, Final: d.State.Final()}
	v.Events = append(v.Events, timelineEvent{Time: d.CreatedAt, Kind: "submitted", Title: "Submitted",
		Detail: "to " + d.DeploymentID + ", priority " + strconv.Itoa(d.Priority) + ", up to " + strconv.Itoa(d.MaxAttempts) + " attempts"})
	for _, a := range d.Attempts {
		e := timelineEvent{Time: a.StartedAt, Kind: "attempt", Took: a.FinishedAt.Sub(a.StartedAt)}
		if a.Counted {
			e.Title = "Attempt " + strconv.Itoa(a.Number)
		} else {
			e.Title, e.Kind = "Model not ready (not counted as an attempt)", "wait"
		}
		switch {
		case a.Code == "":
			e.Badge, e.Class = "OK", "ok"
		case !a.Counted:
			e.Badge, e.Class = a.Code, "wait"
		default:
			e.Badge, e.Class = a.Code, "bad"
		}
		if a.HTTPStatus != 0 {
			e.Detail = "model answered HTTP " + strconv.Itoa(a.HTTPStatus)
		} else {
			e.Detail = "no answer from the model"
		}
		if a.Message != "" {
			e.Detail += ": " + a.Message
		}
		v.Events = append(v.Events, e)
	}
	if v.Final {
		at := d.StatusAt
		if d.FinishedAt != nil {
			at = *d.FinishedAt
		}
		v.Events = append(v.Events, timelineEvent{Time: at, Kind: "final", Title: "Finished", Badge: string(d.State),
			Class: stateClass(d.State), Took: at.Sub(d.CreatedAt), Detail: "submit to final state"})
	}
	for _, dl := range d.Deliveries {
		e := timelineEvent{Time: dl.SentAt, Kind: "webhook", Title: "Webhook to " + d.WebhookHost, Badge: dl.Outcome,
			Class: stateClass(dl.Outcome), Took: dl.Duration}
		if dl.HTTPStatus != 0 {
			e.Detail = "receiver answered HTTP " + strconv.Itoa(dl.HTTPStatus)
		} else {
			e.Detail = "no answer from the receiver"
		}
		if dl.Error != "" {
			e.Detail += ": " + dl.Error
		}
		v.Events = append(v.Events, e)
	}
	sort.SliceStable(v.Events, func(i, j int) bool { return v.Events[i].Time.Before(v.Events[j].Time) })
	v.CanCancel = d.State == postgres.StateQueued
	v.CanRetry = (d.State == postgres.StateFailed || d.State == postgres.StateExpired) && d.Input != nil
	v.CanRedelive = d.WebhookHost != "" && v.Final && d.State != postgres.StateCanceled
	s.render(w, r, http.StatusOK, "request", page{Title: "Request " + d.ID.String(), Nav: "requests", Session: sess, Flash: s.flash(w, r), Data: v})
}

type keysView struct {
	Keys []APIKey
	// NewKey is shown once, right after it was made.
	NewKey      string
	NewKeyName  string
	NewKeyScope string
}

func (s *server) keys(w http.ResponseWriter, r *http.Request, sess *sessionCtx) {
	s.renderKeys(w, r, sess, keysView{})
}

func (s *server) renderKeys(w http.ResponseWriter, r *http.Request, sess *sessionCtx, v keysView) {
	var err error
	v.Keys, err = s.backend.APIKeys(r.Context(), sess.actor())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	s.render(w, r, http.StatusOK, "keys", page{Title: "API keys", Nav: "keys", Session: sess, Flash: s.flash(w, r), Data: v})
}

type secretsView struct {
	Secrets   []WebhookSecret
	NewSecret string
}

func (s *server) secrets(w http.ResponseWriter, r *http.Request, sess *sessionCtx) {
	s.renderSecrets(w, r, sess, secretsView{})
}

func (s *server) renderSecrets(w http.ResponseWriter, r *http.Request, sess *sessionCtx, v secretsView) {
	var err error
	v.Secrets, err = s.backend.WebhookSecrets(r.Context(), sess.actor())
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	s.render(w, r, http.StatusOK, "secrets", page{Title: "Webhook secrets", Nav: "secrets", Session: sess, Flash: s.flash(w, r), Data: v})
}
