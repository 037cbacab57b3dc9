package loadtest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/localdev/loadtest"
	"github.com/openasync/asyncrequest/shared/webhook"
)

// fakeAPI answers every submit 201 and sends its webhook signed with
// secret; the first request's webhook is sent twice, and one extra webhook
// is signed with another secret.
func fakeAPI(t *testing.T, secret string) *httptest.Server {
	t.Helper()
	var n atomic.Int64
	send := func(url, id, secret string) {
		body := []byte(fmt.Sprintf(`{"request_id": %q}`, id))
		h, err := webhook.Signer{Secrets: []string{secret}}.Headers(id, id, time.Now(), body)
		if err != nil {
			t.Error(err)
			return
		}
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		req.Header = h
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	other, _ := webhook.GenerateSecret()
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Api-Key k" || r.URL.Path != loadtest.PathDefault {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		var b struct {
			WebhookEndpoint string `json:"webhook_endpoint"`
		}
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil || !strings.HasSuffix(b.WebhookEndpoint, "/webhook") {
			http.Error(w, "no webhook", http.StatusBadRequest)
			return
		}
		i := n.Add(1)
		id := fmt.Sprintf("%032x", i)
		if i == 1 {
			// Before the answer, so they all arrive before the run ends.
			send(b.WebhookEndpoint, id, secret)
			send(b.WebhookEndpoint, id, secret)
			send(b.WebhookEndpoint, fmt.Sprintf("%032x", 1<<40), other)
		} else {
			go send(b.WebhookEndpoint, id, secret)
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"request_id": %q}`, id)
	}))
}

func TestRun(t *testing.T) {
	t.Parallel()
	secret, err := webhook.GenerateSecret()
	if err != nil {
		t.Fatal(err)
	}
	api := fakeAPI(t, secret)
	defer api.Close()
	res, err := loadtest.Run(context.Background(), loadtest.Options{
		URL: api.URL, Key: "k", Secret: secret, Concurrency: 8, Count: 200, Wait: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Submitted != 200 || res.Refused != 0 || res.Completed != 200 {
		t.Errorf("%d submitted, %d refused, %d completed; want 200, 0, 200", res.Submitted, res.Refused, res.Completed)
	}
	if res.Duplicates != 1 || res.Unverified != 1 {
		t.Errorf("%d duplicates, %d unverified; want 1 and 1", res.Duplicates, res.Unverified)
	}
	if res.SubmitRate() <= 0 || res.CompletionRate() <= 0 || res.WebhookP99 < res.WebhookP50 {
		t.Errorf("rates %v, %v, webhook p50 %v p99 %v", res.SubmitRate(), res.CompletionRate(), res.WebhookP50, res.WebhookP99)
	}
	var out strings.Builder
	res.Print(&out)
	if !strings.Contains(out.String(), "200 completed") || !strings.Contains(out.String(), "1 duplicates") {
		t.Errorf("report:\n%s", out.String())
	}
}

func TestRunRefusals(t *testing.T) {
	t.Parallel()
	api := fakeAPI(t, "whsec_unused")
	defer api.Close()
	res, err := loadtest.Run(context.Background(), loadtest.Options{URL: api.URL, Key: "wrong", Concurrency: 2, Count: 5})
	if err != nil {
		t.Fatal(err)
	}
	if res.Submitted != 0 || res.Refused != 5 || !strings.Contains(res.FirstError, "401") {
		t.Errorf("result %+v", res)
	}
}
