package postgres

import (
	"context"
	"fmt"
	"strings"

	"github.com/openasync/asyncrequest/shared/requestid"
)

// FinishedChannel carries the ids of requests that reached a final state
// (SUCCEEDED, FAILED, EXPIRED), for long-polling status reads: each payload
// is up to finishedPayloadMax bytes of 32-hex-character ids separated by
// commas. Like the wake channels, it only shortens waits: a reader that
// missed a notification finds the state on its next read.
const FinishedChannel = "async_request_finished"

// finishedPayloadMax bounds one FinishedChannel payload; Postgres refuses
// payloads of 8,000 bytes or more.
const finishedPayloadMax = 7900

// Notice is what a committed write tells the listeners.
type Notice struct {
	// Processors: a request is due now (a retry without delay, a hand-back).
	Processors bool
	// Deliverers: a webhook delivery was queued.
	Deliverers bool
	// Finished are requests that reached a final state.
	Finished []requestid.ID
}

// NoticeOf is the notice that recorded outcomes call for.
func NoticeOf(recorded []RecordedOutcome) Notice {
	var n Notice
	for _, r := range recorded {
		switch {
		case r.State == StateQueued:
			n.Processors = n.Processors || r.DueNow
		case r.State.Final():
			n.Finished = append(n.Finished, r.ID)
			n.Deliverers = n.Deliverers || r.WebhookState == WebhookPending
		}
	}
	return n
}

// Notify sends n in one statement of its own, to be called after the
// writes it reports have committed. NOTIFY takes a database-wide lock at
// commit and holds it until the commit is flushed: inside a durable write
// it would serialize every such write on that lock. Here the transaction
// writes nothing but the notifications and commits with synchronous_commit
// off, so the lock is never held across a flush (a notification lost in a
// database crash only costs a poll). Empty notices send nothing.
func (db *DB) Notify(ctx context.Context, n Notice) error {
	var channels, payloads []string
	if n.Processors {
		channels, payloads = append(channels, WakeChannel), append(payloads, "")
	}
	if n.Deliverers {
		channels, payloads = append(channels, WebhookWakeChannel), append(payloads, "")
	}
	for _, p := range finishedPayloads(n.Finished) {
		channels, payloads = append(channels, FinishedChannel), append(payloads, p)
	}
	if len(channels) == 0 {
		return nil
	}
	_, err := db.Pool.Exec(ctx, `
		SELECT set_config('synchronous_commit', 'off', true),
			(SELECT count(pg_notify(c, p)) FROM unnest($1::text[], $2::text[]) AS n(c, p))`, channels, payloads)
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

// NotifyFinished tells the listeners of FinishedChannel that ids reached a
// final state; see Notify.
func (db *DB) NotifyFinished(ctx context.Context, ids []requestid.ID) error {
	return db.Notify(ctx, Notice{Finished: ids})
}

// finishedPayloads joins ids with commas into payloads of at most
// finishedPayloadMax bytes each.
func finishedPayloads(ids []requestid.ID) []string {
	var out []string
	var b strings.Builder
	for _, id := range ids {
		s := id.String()
		if b.Len() > 0 && b.Len()+1+len(s) > finishedPayloadMax {
			out = append(out, b.String())
			b.Reset()
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(s)
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}
