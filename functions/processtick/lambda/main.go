// Command lambda is the process-tick function: on each scheduled event it
// claims due requests, calls their models and records the outcomes for
// TICK_BUDGET, then answers with a summary of the tick. Built as bootstrap
// for provided.al2023 (make build-ProcessTickFunction).
package main

import (
	"context"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"

	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/shared/bootstrap"
)

func main() {
	p := bootstrap.MustStart(context.Background(), "async-process-tick")
	proc := processtick.New(processtick.Options{
		DB:      p.DB,
		Config:  p.Config.Processor,
		Logger:  p.Logger,
		Metrics: p.Metrics,
	})
	tick := bootstrap.Tick[events.CloudWatchEvent](p, proc.Tick)
	lambda.StartWithOptions(tick, lambda.WithEnableSIGTERM(p.Close))
}
