// Command lambda is the submit function: behind API Gateway it accepts
// POST .../async_predict and .../async_run_remote and queues the request.
// Built as bootstrap for provided.al2023 (make build-SubmitFunction).
package main

import (
	"context"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/openasync/asyncrequest/functions/submit"
	"github.com/openasync/asyncrequest/shared/bootstrap"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/lambdahttp"
)

func main() {
	p := bootstrap.MustStart(context.Background(), "async-submit")
	h := submit.New(submit.Options{
		DB:      p.DB,
		API:     p.Config.API,
		Webhook: p.Config.Webhook,
		Logger:  p.Logger,
		Metrics: p.Metrics,
	})
	lambda.StartWithOptions(bootstrap.Flushed(p, lambdahttp.Handler(h, httpapi.ResponseTooLarge(p.Logger))), lambda.WithEnableSIGTERM(p.Close))
}
