// Command examplemodel serves the dev harness's example model alone
// (make run-example-model), on EXAMPLE_MODEL_PORT (default 9004) of
// LOCALDEV_LISTEN_HOST (default 127.0.0.1), as a deployment's model when
// trying the service against your own database. Ctrl-C or SIGTERM stops it.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/openasync/asyncrequest/localdev/examplemodel"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("service", "example-model")
	addr := net.JoinHostPort(cmp.Or(os.Getenv("LOCALDEV_LISTEN_HOST"), "127.0.0.1"), cmp.Or(os.Getenv("EXAMPLE_MODEL_PORT"), "9004"))
	srv := &http.Server{Addr: addr, Handler: examplemodel.New(examplemodel.Options{Logger: log}), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("example model listening", "url", "http://"+addr, "routes", "POST /predict, POST /run_remote")
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "examplemodel:", err)
		os.Exit(1)
	}
}
