package manage

import (
	"context"
	"errors"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
)

// CompletionsByMinute returns the actor's requests that finished since
// then, per deployment and minute: counts by final state and end-to-end
// latency percentiles (the console's charts).
func (s *Service) CompletionsByMinute(ctx context.Context, a Actor, since time.Time) ([]postgres.CompletionMinute, error) {
	return s.DB.RequestCompletionsByMinute(ctx, a.OrganizationID, since)
}

// RequestRedeliver sends the webhook of one of the actor's final requests
// again from its stored output, as POST /async_request/{id}/webhook does.
// A request with no webhook, not final, or whose output is gone is a 409
// saying so.
func (s *Service) RequestRedeliver(ctx context.Context, a Actor, id string) error {
	if err := mustManage(a); err != nil {
		return err
	}
	rid, err := parseID(id)
	if err != nil {
		return err
	}
	err = s.DB.RequestWebhookRedeliver(ctx, postgres.RequestWebhookRedeliverParams{OrganizationID: a.OrganizationID, ID: rid})
	switch {
	case errors.Is(err, postgres.ErrNotFound):
		return ErrNoRequest
	case errors.Is(err, postgres.ErrRedeliverNoWebhook), errors.Is(err, postgres.ErrRedeliverNotFinal),
		errors.Is(err, postgres.ErrRedeliverOutputGone):
		return conflict("NOT_REDELIVERABLE", "%v", err)
	case err != nil:
		return err
	}
	s.logAction(ctx, a, "request.redeliver", 1, "request_id", rid.String())
	return nil
}
