// Command asyncdev is the dev harness: `asyncdev dev` runs everything
// locally with no setup (make dev), and `asyncdev server`, `asyncdev
// processor` and `asyncdev webhook` run the pieces alone (make run-server,
// make run-processor, make run-local-webhook). Ctrl-C or SIGTERM stops it
// cleanly; a second one stops it at once.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/openasync/asyncrequest/localdev"
)

func main() {
	if len(os.Args) != 2 || localdev.Commands[os.Args[1]] == "" {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, the next one gets the default action again.
	context.AfterFunc(ctx, stop)
	err := localdev.Run(ctx, os.Args[1], os.Stdout)
	if err != nil && !(errors.Is(err, context.Canceled) && ctx.Err() != nil) {
		fmt.Fprintf(os.Stderr, "asyncdev %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: asyncdev <command>")
	names := make([]string, 0, len(localdev.Commands))
	for name := range localdev.Commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", name, localdev.Commands[name])
	}
}
