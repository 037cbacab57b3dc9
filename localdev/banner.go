package localdev

import (
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
)

// banner is what dev prints once it is ready.
type banner struct {
	ports    [4]int // API, processor, receiver, model
	apiKey   string
	secret   string
	keyNote  string
	database string
	signIn   string // a one-time console sign-in token
}

// printBanner writes the addresses, the credentials and curl commands that
// work when pasted as they are (in sh, bash or zsh).
func printBanner(w io.Writer, b banner) {
	api := "http://localhost:" + strconv.Itoa(b.ports[0])
	hook := "http://localhost:" + strconv.Itoa(b.ports[2])
	auth := "-H 'Authorization: Api-Key " + b.apiKey + "'"
	submit := func(path, input string) string {
		body := `{"model_input": ` + input + `, "webhook_endpoint": "` + hook + `/webhook"}`
		return "curl -sS -X POST " + api + path + " " + auth + " -H 'Content-Type: application/json' -d '" + body + "'"
	}
	keep := `REQUEST_ID=$(` + submit("/models/"+ModelID+"/production/async_predict", `"hello"`) +
		` | sed -n 's/.*"request_id": *"\([0-9a-f]*\)".*/\1/p'); echo "$REQUEST_ID"`

	var sb strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&sb, format+"\n", args...) }
	line("")
	line("asyncdev is ready.")
	line("")
	line("  API               %s", api)
	line("  console           %s/console/signin?token=%s  (signs in once, within an hour; or paste the API key at %s/console/)", api, b.signIn, api)
	line("  processor         http://localhost:%d/readyz  /healthz  /metrics", b.ports[1])
	line("  webhook receiver  %s/webhook  (received: %s/webhooks)", hook, hook)
	line("  example model     http://localhost:%d/predict  /run_remote", b.ports[3])
	line("  database          %s", b.database)
	line("  API key           %s  (%s)", b.apiKey, b.keyNote)
	line("  webhook secret    %s", b.secret)
	line("")
	line("# Submit to the model %q (answers {\"request_id\": ...}):", ModelID)
	line("%s", submit("/models/"+ModelID+"/production/async_predict", `"hello"`))
	line("")
	line("# Submit and keep the request id in REQUEST_ID for the commands below:")
	line("%s", keep)
	line("")
	line("# Status:")
	line("curl -sS %s/async_request/$REQUEST_ID %s", api, auth)
	line("")
	line("# Cancel (cancels a QUEUED request; otherwise answers \"canceled\": false and why):")
	line("curl -sS -X DELETE %s/async_request/$REQUEST_ID %s", api, auth)
	line("")
	line("# Queue status:")
	line("curl -sS %s/models/%s/production/async_queue_status %s", api, ModelID, auth)
	line("")
	line("# Submit to the chain %q:", ChainID)
	line("%s", submit("/chains/"+ChainID+"/production/async_run_remote", `{"prompt": "hi"}`))
	line("")
	line("# Steer the example model: fail the first 2 attempts, then succeed (see the errors in the status):")
	line("%s", submit("/models/"+ModelID+"/production/async_predict", `{"fail_attempts": 2}`))
	line("")
	line("# Webhooks received, newest first:")
	line("curl -sS %s/webhooks", hook)
	line("")
	line("Ctrl-C stops everything.")
	_, _ = io.WriteString(w, sb.String())
}

// redact hides the password of a connection string.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable database URL)"
	}
	return u.Redacted()
}
