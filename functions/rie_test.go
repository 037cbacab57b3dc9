package functions_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/openasync/asyncrequest/functions/deliverwebhook"
	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/webhook"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// The recorded events in testdata name this key and model.
const (
	rieAPIKey       = "ak_rieTestKeyJ3m9Qx2Vd7Lw4Pz8Ks1Tn6Hb0Rc5"
	rieModelID      = "rie-model"
	rieDeploymentID = "rie-model-1"
)

// rieWaitFor bounds every wait of the emulator test: builds, cold starts
// and polls alike.
const rieWaitFor = 3 * time.Minute

// rieModule is where `go build` finds the functions.
const rieModule = "github.com/openasync/asyncrequest/functions/"

// TestLambdaRuntimeEmulator builds each function's bootstrap as it is
// deployed (for the local architecture), runs it under the AWS Lambda
// runtime interface emulator against a real database, and drives one
// request through all four with recorded events: submit, status,
// process-tick (against a model served here) and deliver-webhook (to a
// receiver served here, which verifies the signatures).
func TestLambdaRuntimeEmulator(t *testing.T) {
	t.Parallel()
	fx := setupRIE(t)

	var id string
	t.Run("Submit", func(t *testing.T) {
		event := loadEvent[events.APIGatewayV2HTTPRequest](t, "submit-event.json")
		event.Body = fmt.Sprintf(`{"model_input":"hello","webhook_endpoint":%q}`, fx.receiver.URL+"/hook")
		res := invoke[events.APIGatewayV2HTTPResponse](t, fx.submit, event)
		if res.StatusCode != http.StatusCreated {
			t.Fatalf("submit: status %d, body %s", res.StatusCode, res.Body)
		}
		var body struct {
			RequestID string `json:"request_id"`
		}
		if err := json.Unmarshal([]byte(res.Body), &body); err != nil {
			t.Fatalf("submit body %q: %v", res.Body, err)
		}
		if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(body.RequestID) {
			t.Fatalf("request_id %q is not 32 hex characters", body.RequestID)
		}
		id = body.RequestID
		if r := fx.request(t, id); r.State != postgres.StateQueued || r.DeploymentID != rieDeploymentID {
			t.Fatalf("after submit: state %s, deployment %s", r.State, r.DeploymentID)
		}
	})
	if id == "" {
		t.FailNow()
	}

	t.Run("Status", func(t *testing.T) {
		event := loadEvent[events.APIGatewayV2HTTPRequest](t, "status-event.json")
		event.RawPath = "/async_request/" + id
		event.RequestContext.HTTP.Path = event.RawPath
		event.PathParameters = map[string]string{"request_id": id}
		res := invoke[events.APIGatewayV2HTTPResponse](t, fx.status, event)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status: status %d, body %s", res.StatusCode, res.Body)
		}
		var body map[string]any
		if err := json.Unmarshal([]byte(res.Body), &body); err != nil {
			t.Fatalf("status body %q: %v", res.Body, err)
		}
		want := map[string]any{"request_id": id, "model_id": rieModelID, "deployment_id": rieDeploymentID,
			"status": "QUEUED", "webhook_status": "PENDING", "queue_position": 0.0}
		for k, v := range want {
			if body[k] != v {
				t.Errorf("status %s = %v, want %v (body %s)", k, body[k], v, res.Body)
			}
		}
	})

	t.Run("ProcessTick", func(t *testing.T) {
		event := loadEvent[events.CloudWatchEvent](t, "scheduled-event.json")
		claimed := 0
		r := fx.pollRequest(t, id, func(r postgres.Request) bool {
			res := invoke[processtick.TickResult](t, fx.processTick, event)
			claimed += res.Claimed
			return fx.request(t, id).State.Final()
		})
		if r.State != postgres.StateSucceeded {
			t.Fatalf("after process-tick: state %s, errors %v", r.State, r.Errors)
		}
		if claimed != 1 {
			t.Errorf("ticks claimed %d requests, want 1", claimed)
		}
		if got := fx.modelTraceparent(); !strings.Contains(got, "-"+id+"-") {
			t.Errorf("model got traceparent %q, want trace id %s", got, id)
		}
	})

	t.Run("DeliverWebhook", func(t *testing.T) {
		event := loadEvent[events.CloudWatchEvent](t, "scheduled-event.json")
		r := fx.pollRequest(t, id, func(postgres.Request) bool {
			invoke[deliverwebhook.TickResult](t, fx.deliverWebhook, event)
			return fx.request(t, id).WebhookState != postgres.WebhookPending
		})
		if r.WebhookState != postgres.WebhookSucceeded {
			t.Fatalf("after deliver-webhook: webhook_state %s", r.WebhookState)
		}
		got := fx.webhooks()
		if len(got) != 1 {
			t.Fatalf("receiver got %d webhooks, want 1", len(got))
		}
		if !got[0].verified {
			t.Errorf("webhook signatures did not verify: %v", got[0].err)
		}
		var body struct {
			RequestID string `json:"request_id"`
			Data      any    `json:"data"`
		}
		if err := json.Unmarshal(got[0].body, &body); err != nil {
			t.Fatal(err)
		}
		if body.RequestID != id || body.Data == nil {
			t.Errorf("webhook body %s: want request_id %s and the model's output", got[0].body, id)
		}
	})
}

// TestLambdaRuntimeEmulatorBadConfiguration checks that a function with a
// bad variable fails its init with one line naming the variable.
func TestLambdaRuntimeEmulatorBadConfiguration(t *testing.T) {
	t.Parallel()
	rie := findRIE(t)
	url, logs := startFunction(t, rie, t.TempDir(), "status", []string{
		"DATABASE_URL=postgres://postgres@127.0.0.1:1/unused", "LOG_FORMAT=xml",
	})
	payload, err := os.ReadFile(filepath.Join("testdata", "status-event.json"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := (&http.Client{Timeout: rieWaitFor}).Post(url, "application/json", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	// The emulator answers a failed init with an error status or an
	// error object, depending on its version.
	if res.StatusCode == http.StatusOK && !strings.Contains(string(body), "errorType") {
		t.Errorf("invocation answered %d %s, want an init error", res.StatusCode, body)
	}
	// The function's stderr reaches the emulator's output through a pipe,
	// which may lag the invocation's answer: wait for it.
	want := `async-status: configuration: LOG_FORMAT: must be "json" or "text"`
	var lines []string
	for deadline := time.Now().Add(rieWaitFor); ; time.Sleep(50 * time.Millisecond) {
		lines = lines[:0]
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, "LOG_FORMAT") {
				lines = append(lines, strings.TrimSpace(line))
			}
		}
		if len(lines) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(lines) == 0 || lines[0] != want {
		t.Errorf("function printed %q, want the one line %q\n%s", lines, want, logs)
	}
}

// rieFixture is a seeded database, a model and a receiver served by the
// test, and the four functions running under emulators.
type rieFixture struct {
	db       *postgres.DB
	orgID    int64
	receiver *httptest.Server

	submit, status, processTick, deliverWebhook string // invocation URLs

	rie, dir string
	env      []string

	mu          sync.Mutex
	traceparent string
	received    []receivedWebhook
}

type receivedWebhook struct {
	body     []byte
	verified bool
	err      error
}

func setupRIE(t *testing.T) *rieFixture {
	t.Helper()
	rie := findRIE(t)
	url := pgtest.URL(t)
	ctx := context.Background()
	pg, err := postgres.Open(ctx, url, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	fx := &rieFixture{db: pg}

	model := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fx.mu.Lock()
		fx.traceparent = r.Header.Get("traceparent")
		fx.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"output":"HELLO"}`)
	}))
	t.Cleanup(model.Close)

	secret, err := webhook.GenerateSecret()
	if err != nil {
		t.Fatal(err)
	}
	fx.receiver = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		_, err := webhook.Verify([]string{secret}, r.Header, body, time.Now())
		fx.mu.Lock()
		fx.received = append(fx.received, receivedWebhook{body: body, verified: err == nil, err: err})
		fx.mu.Unlock()
	}))
	t.Cleanup(fx.receiver.Close)

	org, err := pg.OrganizationEnsure(ctx, "rie")
	if err != nil {
		t.Fatal(err)
	}
	fx.orgID = org.ID
	steps := []error{
		pg.APIKeyCreate(ctx, org.ID, rieAPIKey, "rie"),
		pg.ModelCreate(ctx, postgres.Model{ID: rieModelID, OrganizationID: org.ID, Kind: postgres.KindModel}),
		pg.DeploymentCreate(ctx, org.ID, postgres.Deployment{ID: rieDeploymentID, ModelID: rieModelID, URL: model.URL,
			Environments: []string{"production"}, MaxConcurrency: 2}),
		pg.WebhookSecretRotate(ctx, org.ID, secret, time.Hour),
	}
	for _, err := range steps {
		if err != nil {
			t.Fatal(err)
		}
	}

	env := []string{
		"DATABASE_URL=" + url,
		"DB_MAX_CONNS=4",
		"LOG_FORMAT=json",
		"LOG_LEVEL=info",
		"TICK_BUDGET=1s",
		"POLL_INTERVAL=100ms",
		"WEBHOOK_ALLOW_HTTP=true",
		"WEBHOOK_ALLOW_PRIVATE=true",
		"AWS_LAMBDA_FUNCTION_TIMEOUT=120",
	}
	fx.rie, fx.env, fx.dir = rie, env, t.TempDir()
	fx.submit, _ = startFunction(t, rie, fx.dir, "submit", env)
	fx.status, _ = startFunction(t, rie, fx.dir, "status", env)
	fx.processTick, _ = startFunction(t, rie, fx.dir, "processtick", env)
	fx.deliverWebhook, _ = startFunction(t, rie, fx.dir, "deliverwebhook", env)
	return fx
}

func (fx *rieFixture) request(t *testing.T, id string) postgres.Request {
	t.Helper()
	rid, err := requestid.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	r, err := fx.db.RequestGetByID(context.Background(), fx.orgID, rid)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// pollRequest calls step until it reports done or rieWaitFor passes, and
// returns the request as it then is.
func (fx *rieFixture) pollRequest(t *testing.T, id string, step func(postgres.Request) bool) postgres.Request {
	t.Helper()
	deadline := time.Now().Add(rieWaitFor)
	for !step(fx.request(t, id)) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	return fx.request(t, id)
}

func (fx *rieFixture) modelTraceparent() string {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	return fx.traceparent
}

func (fx *rieFixture) webhooks() []receivedWebhook {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	return append([]receivedWebhook(nil), fx.received...)
}

// findRIE returns the path of aws-lambda-rie, the emulator pinned in
// go.mod's tool block, built (and cached) by `go tool -n`. A failure to
// build it fails the test: the emulator tests never skip.
func findRIE(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "tool", "-n", "aws-lambda-rie")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("aws-lambda-rie: go tool -n aws-lambda-rie: %v\n%s", err, stderr.Bytes())
	}
	return strings.TrimSpace(string(out))
}

// startFunction builds functions/<name>/lambda the way the Makefile does,
// for the local architecture, starts it under the emulator with env, and
// returns its invocation URL. The emulator and the function are killed when
// the test ends.
func startFunction(t *testing.T, rie, dir, name string, env []string) (string, *apitest.Buffer) {
	t.Helper()
	bin := filepath.Join(dir, name, "bootstrap")
	build := exec.Command("go", "build", "-tags", "lambda.norpc", "-trimpath", "-o", bin, rieModule+name+"/lambda")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}

	apiAddr, rieAddr := freeAddr(t), freeAddr(t)
	cmd := exec.Command(rie, "--runtime-api-address", apiAddr, "--runtime-interface-emulator-address", rieAddr, bin)
	cmd.Dir = filepath.Dir(bin)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}, env...)
	logs := &apitest.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	// Its own process group, so that the function the emulator starts is
	// killed with it; and killed if this test process dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start emulator for %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s under the emulator:\n%s", name, logs.String())
		}
	})

	deadline := time.Now().Add(rieWaitFor)
	for {
		c, err := net.DialTimeout("tcp", rieAddr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("emulator for %s never listened on %s:\n%s", name, rieAddr, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "http://" + rieAddr + "/2015-03-31/functions/function/invocations", logs
}

// invoke sends event to a function under the emulator and decodes its
// answer as R. An error answer from the function fails the test.
func invoke[R any](t *testing.T, url string, event any) R {
	t.Helper()
	payload, err := json.Marshal(event)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: rieWaitFor}
	res, err := client.Post(url, "application/json", bytes.NewReader(payload))
	if err != nil {
		t.Fatalf("invoke: %v", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	var failure struct {
		ErrorMessage string `json:"errorMessage"`
		ErrorType    string `json:"errorType"`
	}
	if json.Unmarshal(body, &failure) == nil && failure.ErrorType != "" {
		t.Fatalf("function failed: %s: %s", failure.ErrorType, failure.ErrorMessage)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("emulator answered %d: %s", res.StatusCode, body)
	}
	var out R
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("decode answer %s: %v", body, err)
	}
	return out
}

func loadEvent[E any](t *testing.T, name string) E {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var e E
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return e
}

// freeAddr returns a loopback address with a port free at the time of the
// call.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}
