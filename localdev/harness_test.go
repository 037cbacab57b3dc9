package localdev_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/localdev"
	"github.com/openasync/asyncrequest/localdev/examplemodel"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/webhook"
)

// waitFor bounds every wait of these tests: builds, start-up and polls.
const waitFor = 2 * time.Minute

const testAPIKey = "ak_asyncdevE2EtestKey7Hq2Lm9"

// buildAsyncdev builds the asyncdev command into a directory removed when
// the test ends.
func buildAsyncdev(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "asyncdev")
	args := append(append([]string{"build"}, raceFlags...), "-o", bin, "github.com/openasync/asyncrequest/localdev/cmd/asyncdev")
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("build asyncdev: %v\n%s", err, out)
	}
	return bin
}

// process is a running asyncdev command.
type process struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr *apitest.Buffer
	exited         chan struct{}
	exitErr        error
}

// startAsyncdev starts `bin command` with env (and PATH and HOME) and
// waits until ready reports true. The process is killed, if still running,
// when the test ends, and its output logged if the test failed.
func startAsyncdev(t *testing.T, bin, command string, env []string, ready func(*process) bool) *process {
	t.Helper()
	p := &process{
		name:   "asyncdev " + command,
		cmd:    exec.Command(bin, command),
		stdout: &apitest.Buffer{},
		stderr: &apitest.Buffer{},
		exited: make(chan struct{}),
	}
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.exitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s stdout:\n%s\n%s stderr:\n%s", p.name, p.stdout, p.name, p.stderr)
		}
	})
	poll(t, p.name+" to be ready", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("%s exited before it was ready: %v\n%s", p.name, p.exitErr, p.stderr)
		default:
		}
		return ready(p)
	})
	return p
}

// stop sends SIGTERM and checks that the process exits with status 0 and,
// when built with the race detector, found no race.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(waitFor):
		t.Fatalf("%s did not exit after SIGTERM", p.name)
	}
	if p.exitErr != nil {
		t.Errorf("%s exited with %v, want status 0", p.name, p.exitErr)
	}
	if strings.Contains(p.stderr.String(), "WARNING: DATA RACE") {
		t.Errorf("the race detector found a race in %s", p.name)
	}
}

// answers reports whether a GET of url answers 200.
func answers(url string, header ...string) bool {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}

// client drives the API and the receiver over HTTP.
type client struct {
	api, receiver string // base URLs
}

// startDev builds and starts `asyncdev dev` against a fresh database,
// every port free, and waits until it has printed its ready banner and its
// processor is ready.
func startDev(t *testing.T) (*process, client) {
	t.Helper()
	ports := freePorts(t, 4)
	env := []string{
		"DATABASE_URL=" + pgtest.URL(t),
		"API_PORT=" + ports[0],
		"PROCESSOR_PORT=" + ports[1],
		"WEBHOOK_RECEIVER_PORT=" + ports[2],
		"EXAMPLE_MODEL_PORT=" + ports[3],
		"LOCALDEV_API_KEY=" + testAPIKey,
		"POLL_INTERVAL=200ms",
	}
	p := startAsyncdev(t, buildAsyncdev(t), "dev", env, func(p *process) bool {
		return strings.Contains(p.stdout.String(), "asyncdev is ready.") &&
			answers("http://127.0.0.1:"+ports[1]+"/readyz")
	})
	return p, client{api: "http://127.0.0.1:" + ports[0], receiver: "http://127.0.0.1:" + ports[2]}
}

// call sends a JSON request with the API key and decodes the JSON answer.
func (d client) call(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, d.api+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Api-Key "+testAPIKey)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s answered %d with %q", method, path, res.StatusCode, raw)
	}
	return res.StatusCode, out
}

// submit submits and returns the request id.
func (d client) submit(t *testing.T, path, body string) string {
	t.Helper()
	code, out := d.call(t, http.MethodPost, path, body)
	id, _ := out["request_id"].(string)
	if code != http.StatusCreated || id == "" {
		t.Fatalf("submit to %s: %d %v", path, code, out)
	}
	return id
}

// finalStatus polls the request's status until it is final and its
// webhook is no longer pending.
func (d client) finalStatus(t *testing.T, id string) map[string]any {
	t.Helper()
	var status map[string]any
	poll(t, "request "+id+" to finish", func() bool {
		_, status = d.call(t, http.MethodGet, "/async_request/"+id, "")
		s, ws := status["status"], status["webhook_status"]
		return s != "QUEUED" && s != "IN_PROGRESS" && ws != "PENDING"
	})
	return status
}

// receivedWebhook is an entry of the receiver's GET /webhooks.
type receivedWebhook struct {
	Headers  map[string]string `json:"headers"`
	Body     string            `json:"body"`
	Verified bool              `json:"verified"`
}

// webhook polls the receiver until it has the webhook of request id.
func (d client) webhook(t *testing.T, id string) (receivedWebhook, map[string]any) {
	t.Helper()
	var found receivedWebhook
	poll(t, "the webhook of "+id, func() bool {
		res, err := http.Get(d.receiver + "/webhooks")
		if err != nil {
			return false
		}
		defer res.Body.Close()
		var list []receivedWebhook
		if err := json.NewDecoder(res.Body).Decode(&list); err != nil {
			t.Fatalf("GET /webhooks: %v", err)
		}
		for _, w := range list {
			if strings.Contains(w.Body, `"request_id":"`+id+`"`) {
				found = w
				return true
			}
		}
		return false
	})
	var body map[string]any
	if err := json.Unmarshal([]byte(found.Body), &body); err != nil {
		t.Fatalf("webhook body %q: %v", found.Body, err)
	}
	return found, body
}

// TestDev runs the real `asyncdev dev` binary against a test database and
// drives it over HTTP, as a person following the README would.
func TestDev(t *testing.T) {
	t.Parallel()
	p, d := startDev(t)

	t.Run("Requests", func(t *testing.T) {
		tests := []struct {
			name, path, body string
			// wantOutput is the webhook's data.output.
			wantOutput any
			wantKey    string // model_id or chain_id
			wantErrors int
			attempts   float64
		}{
			{
				name:       "Model",
				path:       "/models/example/production/async_predict",
				body:       `{"model_input": "hello", "webhook_endpoint": "WEBHOOK"}`,
				wantOutput: "HELLO", wantKey: "model_id", attempts: 1,
			},
			{
				name:       "Chain",
				path:       "/chains/example-chain/production/async_run_remote",
				body:       `{"model_input": "chain", "webhook_endpoint": "WEBHOOK"}`,
				wantOutput: "CHAIN", wantKey: "chain_id", attempts: 1,
			},
			{
				name: "Retries",
				path: "/models/example/development/async_predict",
				body: `{"model_input": {"fail_attempts": 2}, "webhook_endpoint": "WEBHOOK",
				        "inference_retry_config": {"max_attempts": 3, "initial_delay_ms": 10, "max_delay_ms": 10}}`,
				wantOutput: map[string]any{"fail_attempts": 2.0}, wantKey: "model_id", wantErrors: 2, attempts: 3,
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				id := d.submit(t, tt.path, strings.Replace(tt.body, "WEBHOOK", d.receiver+"/webhook", 1))
				status := d.finalStatus(t, id)
				if status["status"] != "SUCCEEDED" || status["webhook_status"] != "SUCCEEDED" {
					t.Fatalf("status %v", status)
				}
				errs, _ := status["errors"].([]any)
				if len(errs) != tt.wantErrors || status["attempts"] != tt.attempts {
					t.Errorf("errors %v, attempts %v: want %d errors, %v attempts", errs, status["attempts"], tt.wantErrors, tt.attempts)
				}
				for _, e := range errs {
					if code := e.(map[string]any)["code"]; code != "MODEL_UNAVAILABLE" {
						t.Errorf("error code %v, want MODEL_UNAVAILABLE", code)
					}
				}

				hook, body := d.webhook(t, id)
				if !hook.Verified {
					t.Errorf("webhook not verified: %+v", hook)
				}
				if _, ok := body[tt.wantKey]; !ok {
					t.Errorf("webhook body has no %s: %s", tt.wantKey, hook.Body)
				}
				data, _ := body["data"].(map[string]any)
				if fmt.Sprint(data["output"]) != fmt.Sprint(tt.wantOutput) {
					t.Errorf("webhook data.output %v, want %v", data["output"], tt.wantOutput)
				}
				if tp, _ := data["traceparent"].(string); !strings.Contains(tp, "-"+id+"-") {
					t.Errorf("the model saw traceparent %q, want trace id %s", tp, id)
				}
				if hookErrs, _ := body["errors"].([]any); len(hookErrs) != tt.wantErrors {
					t.Errorf("webhook errors %v, want %d", hookErrs, tt.wantErrors)
				}
			})
		}
	})

	t.Run("PastedCommands", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("no curl")
		}
		banner := p.stdout.String()
		keep := commandAfter(t, banner, "# Submit and keep the request id")
		status := commandAfter(t, banner, "# Status:")
		queue := commandAfter(t, banner, "# Queue status:")
		script := keep + "\n" + status + "\necho\n" + queue + "\n"
		out, err := exec.Command("sh", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("pasted commands: %v\n%s", err, out)
		}
		lines := strings.SplitN(string(out), "\n", 2)
		id := strings.TrimSpace(lines[0])
		if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id) {
			t.Fatalf("the submit command printed %q, want a request id", out)
		}
		if !strings.Contains(lines[1], `"request_id":"`+id+`"`) || !strings.Contains(lines[1], `"num_queued_requests"`) {
			t.Errorf("status and queue status commands printed %q", lines[1])
		}
	})

	t.Run("SIGTERM", func(t *testing.T) { p.stop(t) })
}

// TestPieces runs the pieces alone, as make run-server, make
// run-processor and make run-local-webhook do, against one seeded
// database, and sends a request through all three.
func TestPieces(t *testing.T) {
	t.Parallel()
	url, secret := seededDatabase(t)

	bin := buildAsyncdev(t)
	ports := freePorts(t, 4)
	c := client{api: "http://127.0.0.1:" + ports[0], receiver: "http://127.0.0.1:" + ports[2]}
	// make dev alone forces these on; the production processes take them as set.
	local := []string{"DATABASE_URL=" + url, "WEBHOOK_ALLOW_HTTP=true", "WEBHOOK_ALLOW_PRIVATE=true"}
	server := startAsyncdev(t, bin, "server", append(local, "API_PORT="+ports[0], "API_ADMIN_PORT="+ports[3]), func(*process) bool {
		return answers(c.api+"/models/example/production/async_queue_status", "Authorization", "Api-Key "+testAPIKey)
	})
	processor := startAsyncdev(t, bin, "processor", append(local, "PROCESSOR_PORT="+ports[1]), func(*process) bool {
		return answers("http://127.0.0.1:" + ports[1] + "/readyz")
	})
	receiver := startAsyncdev(t, bin, "webhook", []string{"WEBHOOK_RECEIVER_PORT=" + ports[2], "LOCALDEV_WEBHOOK_SECRET=" + secret}, func(*process) bool {
		return answers(c.receiver + "/webhooks")
	})

	id := c.submit(t, "/models/example/production/async_predict",
		`{"model_input": "pieces", "webhook_endpoint": "`+c.receiver+`/webhook"}`)
	if status := c.finalStatus(t, id); status["status"] != "SUCCEEDED" || status["webhook_status"] != "SUCCEEDED" {
		t.Fatalf("status %v", status)
	}
	hook, body := c.webhook(t, id)
	if !hook.Verified {
		t.Errorf("webhook not verified with LOCALDEV_WEBHOOK_SECRET: %+v", hook)
	}
	if data, _ := body["data"].(map[string]any); data["output"] != "PIECES" {
		t.Errorf("webhook data %v, want output PIECES", body["data"])
	}

	// SIGTERM while the model works: the request finishes in the
	// processor's grace, and its webhook goes out before the process exits.
	late := c.submit(t, "/models/example/production/async_predict",
		`{"model_input": {"sleep_ms": 1500}, "webhook_endpoint": "`+c.receiver+`/webhook"}`)
	poll(t, "request "+late+" to start", func() bool {
		_, status := c.call(t, http.MethodGet, "/async_request/"+late, "")
		return status["status"] == "IN_PROGRESS"
	})
	processor.stop(t)
	if _, status := c.call(t, http.MethodGet, "/async_request/"+late, ""); status["status"] != "SUCCEEDED" || status["webhook_status"] != "SUCCEEDED" {
		t.Errorf("after the processor stopped: status %v, want SUCCEEDED / SUCCEEDED", status)
	}
	if hook, _ := c.webhook(t, late); !hook.Verified {
		t.Errorf("webhook of the request finished in the grace: %+v", hook)
	}
	for _, p := range []*process{server, receiver} {
		p.stop(t)
	}
}

// TestCommands checks what the harness refuses before it starts anything.
func TestCommands(t *testing.T) {
	t.Parallel()
	bin := buildAsyncdev(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	busyPort := strconv.Itoa(busy.Addr().(*net.TCPAddr).Port)

	tests := []struct {
		name     string
		args     []string
		env      []string
		wantCode int
		wantErr  string
	}{
		{"NoCommand", nil, nil, 2, "usage: asyncdev"},
		{"UnknownCommand", []string{"deploy"}, nil, 2, "usage: asyncdev"},
		{"BadSecret", []string{"webhook"}, []string{"LOCALDEV_WEBHOOK_SECRET=nope"}, 1, "LOCALDEV_WEBHOOK_SECRET"},
		{"TwoSecretsInDev", []string{"dev"}, []string{"LOCALDEV_WEBHOOK_SECRET=whsec_AAAA,whsec_BBBB"}, 1, "LOCALDEV_WEBHOOK_SECRET"},
		{"BadPort", []string{"webhook"}, []string{"WEBHOOK_RECEIVER_PORT=70000"}, 1, "WEBHOOK_RECEIVER_PORT"},
		{"PortInUse", []string{"webhook"}, []string{"WEBHOOK_RECEIVER_PORT=" + busyPort}, 1, "WEBHOOK_RECEIVER_PORT"},
		{"ServerWithoutDatabase", []string{"server"}, nil, 1, "DATABASE_URL"},
		{"BadLogFormat", []string{"processor"}, []string{"DATABASE_URL=postgres://x/y", "LOG_FORMAT=xml"}, 1, "LOG_FORMAT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tt.args...)
			cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, tt.env...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != tt.wantCode {
				t.Fatalf("exit %v, want status %d; stderr %s", err, tt.wantCode, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr %q does not name %s", stderr.String(), tt.wantErr)
			}
			if tt.wantCode == 1 && strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 {
				t.Errorf("stderr is not one line: %q", stderr.String())
			}
		})
	}
}

// commandAfter returns the line after heading in the banner.
func commandAfter(t *testing.T, banner, heading string) string {
	t.Helper()
	_, rest, ok := strings.Cut(banner, heading)
	if !ok {
		t.Fatalf("banner has no %q:\n%s", heading, banner)
	}
	lines := strings.SplitN(rest, "\n", 3)
	if len(lines) < 2 {
		t.Fatalf("nothing after %q", heading)
	}
	return lines[1]
}

// poll calls cond until it is true, failing the test after waitFor.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freePorts returns n loopback ports free a moment ago.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var ports []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	return ports
}

// seededDatabase returns the URL of a database of t's own, seeded as make dev
// seeds (testAPIKey, a new webhook secret, returned) with the example
// deployments served by an example model that lives as long as t.
func seededDatabase(t *testing.T) (url, secret string) {
	t.Helper()
	ctx := context.Background()
	url = pgtest.URL(t)
	pg, err := postgres.Open(ctx, url, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	model := httptest.NewServer(examplemodel.New(examplemodel.Options{Logger: slog.New(slog.DiscardHandler)}))
	t.Cleanup(model.Close)
	secret, err = webhook.GenerateSecret()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := localdev.Seed(ctx, pg, localdev.SeedOptions{APIKey: testAPIKey, WebhookSecret: secret, ModelURL: model.URL}); err != nil {
		t.Fatal(err)
	}
	return url, secret
}
