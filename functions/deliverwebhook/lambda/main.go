// Command lambda is the deliver-webhook function: on each scheduled event
// it sends due webhooks and records each delivery for TICK_BUDGET, then
// answers with a summary of the tick. Built as bootstrap for
// provided.al2023 (make build-DeliverWebhookFunction).
package main

import (
	"context"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"

	"github.com/openasync/asyncrequest/functions/deliverwebhook"
	"github.com/openasync/asyncrequest/shared/bootstrap"
)

func main() {
	p := bootstrap.MustStart(context.Background(), "async-deliver-webhook")
	d := deliverwebhook.New(deliverwebhook.Options{
		DB:      p.DB,
		Config:  p.Config.Webhook,
		Logger:  p.Logger,
		Metrics: p.Metrics,
	})
	tick := bootstrap.Tick[events.CloudWatchEvent](p, d.Tick)
	lambda.StartWithOptions(tick, lambda.WithEnableSIGTERM(p.Close))
}
