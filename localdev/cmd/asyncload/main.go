// Command asyncload is `make loadtest`: it drives a running service
// through its public API (package loadtest) and prints what it measured.
// Every flag has an environment variable, so `make loadtest` takes them
// either way:
//
//	LOADTEST_URL=http://localhost:9001 LOADTEST_API_KEY=ak_... \
//	LOADTEST_WEBHOOK_SECRET=whsec_... make loadtest
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/openasync/asyncrequest/localdev/loadtest"
)

func main() {
	env := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	envInt := func(name string, def int) int {
		v, err := strconv.Atoi(env(name, strconv.Itoa(def)))
		if err != nil {
			fmt.Fprintf(os.Stderr, "asyncload: %s is not an integer\n", name)
			os.Exit(2)
		}
		return v
	}
	var o loadtest.Options
	flag.StringVar(&o.URL, "url", env("LOADTEST_URL", "http://localhost:9001"), "the API's base URL (LOADTEST_URL)")
	flag.StringVar(&o.Path, "path", env("LOADTEST_PATH", loadtest.PathDefault), "the submit route (LOADTEST_PATH)")
	flag.StringVar(&o.Key, "key", env("LOADTEST_API_KEY", ""), "the API key (LOADTEST_API_KEY)")
	flag.StringVar(&o.Secret, "secret", env("LOADTEST_WEBHOOK_SECRET", ""),
		"the organization's webhook secret, to verify webhooks; unset, only submits are measured (LOADTEST_WEBHOOK_SECRET)")
	flag.StringVar(&o.Listen, "listen", env("LOADTEST_LISTEN", "127.0.0.1:9006"), "the webhook receiver's address (LOADTEST_LISTEN)")
	flag.StringVar(&o.WebhookURL, "webhook-url", env("LOADTEST_WEBHOOK_URL", ""),
		"the receiver's URL as the service reaches it; default http://{listen}/webhook (LOADTEST_WEBHOOK_URL)")
	flag.IntVar(&o.Concurrency, "concurrency", envInt("LOADTEST_CONCURRENCY", loadtest.ConcurrencyDefault), "submits in flight (LOADTEST_CONCURRENCY)")
	flag.IntVar(&o.Count, "count", envInt("LOADTEST_COUNT", loadtest.CountDefault), "requests to submit (LOADTEST_COUNT)")
	flag.StringVar(&o.Input, "input", env("LOADTEST_INPUT", loadtest.InputDefault), "each request's model_input, JSON (LOADTEST_INPUT)")
	flag.DurationVar(&o.Wait, "wait", loadtest.WaitDefault, "give up on webhooks after this long without one")
	flag.Parse()
	if o.Concurrency < 1 || o.Count < 1 {
		fmt.Fprintln(os.Stderr, "asyncload: -concurrency and -count must be at least 1")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("asyncload: %d requests to %s%s at concurrency %d\n", o.Count, o.URL, o.Path, o.Concurrency)
	start := time.Now()
	res, err := loadtest.Run(ctx, o)
	if err != nil && res.Submitted == 0 {
		fmt.Fprintln(os.Stderr, "asyncload:", err)
		os.Exit(1)
	}
	res.Print(os.Stdout)
	fmt.Printf("total       %v\n", time.Since(start).Round(time.Millisecond))
	if res.Refused > 0 || res.Unverified > 0 || (o.Secret != "" && res.Completed < res.Submitted) {
		os.Exit(1)
	}
}
