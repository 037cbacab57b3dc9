// Command lambda is the status function: behind API Gateway it reads and
// cancels requests, serves results and queue status, and redelivers
// webhooks, and serves the console. Built as bootstrap for provided.al2023 (make
// build-StatusFunction).
package main

import (
	"context"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/openasync/asyncrequest/functions/console"
	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/shared/bootstrap"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/lambdahttp"
	"github.com/openasync/asyncrequest/shared/manage"
)

func main() {
	p := bootstrap.MustStart(context.Background(), "async-status")
	h := status.New(status.Options{
		DB:      p.DB,
		API:     p.Config.API,
		Logger:  p.Logger,
		Metrics: p.Metrics,
	})
	// The console (/console/...) is served here too.
	h = console.Mount(h, console.New(console.Options{Service: &manage.Service{DB: p.DB, Logger: p.Logger}, Logger: p.Logger}))
	lambda.StartWithOptions(bootstrap.Flushed(p, lambdahttp.Handler(h, httpapi.ResponseTooLarge(p.Logger))), lambda.WithEnableSIGTERM(p.Close))
}
