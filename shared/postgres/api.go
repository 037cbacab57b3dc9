package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/shared/requestid"
)

// Refusals of RequestWebhookRedeliver.
var (
	// ErrRedeliverNoWebhook: the request was submitted without a
	// webhook_endpoint.
	ErrRedeliverNoWebhook = errors.New("request has no webhook endpoint")
	// ErrRedeliverNotFinal: the request is QUEUED or IN_PROGRESS (its webhook
	// will be sent when it finishes), or CANCELED (it never has one).
	ErrRedeliverNotFinal = errors.New("request has no webhook to redeliver in its state")
	// ErrRedeliverOutputGone: the request SUCCEEDED but its output is no
	// longer retained, so the webhook cannot be rebuilt.
	ErrRedeliverOutputGone = errors.New("request output is no longer retained")
)

// RequestWebhookRedeliverParams names the request whose webhook to send
// again. When ModelID is set the request must belong to that model (or
// chain, with IsChain), else ErrNotFound.
type RequestWebhookRedeliverParams struct {
	OrganizationID int64
	ID             requestid.ID
	ModelID        string
	IsChain        bool
}

// RequestWebhookRedeliver queues the webhook of a SUCCEEDED, FAILED, EXPIRED
// or WEBHOOK_FAILED request to be sent again from its stored output, and
// wakes the deliverers, in one transaction. The webhook-id stays the
// request id, so receivers that deduplicate see the same message.
//
// The request's webhook_status becomes PENDING; a WEBHOOK_FAILED request
// goes back to SUCCEEDED, to become WEBHOOK_FAILED again only if this
// delivery fails too. Its output is kept (output_expires_at cleared) until
// the deliverer finishes, and its row at least StatusRetention from now.
// When a delivery of the request is already pending or under way, nothing
// is added: redelivering twice sends one webhook.
func (db *DB) RequestWebhookRedeliver(ctx context.Context, p RequestWebhookRedeliverParams) error {
	queued := false
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		var (
			modelID     string
			isChain     bool
			state       RequestState
			hasEndpoint bool
			hasOutput   bool
		)
		err := tx.QueryRow(ctx, `
			SELECT model_id, is_chain, state, webhook_endpoint IS NOT NULL, output IS NOT NULL
			FROM async_requests WHERE id = $1 AND organization_id = $2
			FOR UPDATE`, p.ID, p.OrganizationID).Scan(&modelID, &isChain, &state, &hasEndpoint, &hasOutput)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && p.ModelID != "" && (modelID != p.ModelID || isChain != p.IsChain)) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		switch {
		case !hasEndpoint:
			return ErrRedeliverNoWebhook
		case state != StateSucceeded && state != StateFailed && state != StateExpired && state != StateWebhookFailed:
			return ErrRedeliverNotFinal
		case (state == StateSucceeded || state == StateWebhookFailed) && !hasOutput:
			return ErrRedeliverOutputGone
		}
		var pending bool
		if err := tx.QueryRow(ctx, `
			SELECT EXISTS (SELECT 1 FROM webhook_deliveries
			               WHERE request_id = $1 AND state IN ('PENDING', 'IN_PROGRESS'))`, p.ID).Scan(&pending); err != nil {
			return err
		}
		if pending {
			return nil
		}
		if _, err := tx.Exec(ctx, `
			UPDATE async_requests
			SET webhook_state = 'PENDING',
				state = CASE WHEN state = 'WEBHOOK_FAILED' THEN 'SUCCEEDED' ELSE state END,
				status_at = CASE WHEN state = 'WEBHOOK_FAILED' THEN now() ELSE status_at END,
				output_expires_at = NULL,
				purge_at = greatest(purge_at, now() + make_interval(secs => $2))
			WHERE id = $1`, p.ID, db.StatusRetention.Seconds()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO webhook_deliveries (request_id, state, due_at) VALUES ($1, 'PENDING', now())`, p.ID); err != nil {
			return err
		}
		queued = true
		return nil
	})
	switch {
	case err == nil:
		if queued {
			_ = db.Notify(ctx, Notice{Deliverers: true}) // after the commit; a lost wake-up costs a poll
		}
		return nil
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrRedeliverNoWebhook),
		errors.Is(err, ErrRedeliverNotFinal), errors.Is(err, ErrRedeliverOutputGone):
		return err
	}
	return fmt.Errorf("redeliver webhook: %w", err)
}
