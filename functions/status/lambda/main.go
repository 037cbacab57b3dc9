// Command lambda is the status function: behind API Gateway it reads and
// cancels requests, serves results and queue status, and redelivers
// webhooks; it also serves the management API (/v1) and the console
// (/console/). Built as bootstrap for provided.al2023 (make
// build-StatusFunction).
package main

import (
	"context"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/openasync/asyncrequest/functions/console"
	"github.com/openasync/asyncrequest/functions/manage"
	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/shared/bootstrap"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/lambdahttp"
	service "github.com/openasync/asyncrequest/shared/manage"
)

func main() {
	p := bootstrap.MustStart(context.Background(), "async-status")
	cache := httpapi.NewAuthCache()
	h := console.Mount(status.New(status.Options{
		DB:        p.DB,
		API:       p.Config.API,
		Logger:    p.Logger,
		Metrics:   p.Metrics,
		AuthCache: cache,
		Handlers:  manage.Handlers(manage.Options{DB: p.DB, API: p.Config.API, Logger: p.Logger, AuthCache: cache}),
	}),
		console.New(console.Options{Service: &service.Service{DB: p.DB, Logger: p.Logger, KeyRevoked: cache.Evict}, Logger: p.Logger}))
	lambda.StartWithOptions(bootstrap.Flushed(p, lambdahttp.Handler(h, httpapi.ResponseTooLarge(p.Logger))), lambda.WithEnableSIGTERM(p.Close))
}
