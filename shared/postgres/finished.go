package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/shared/requestid"
)

// FinishedListen calls finished with the ids of every notification on
// FinishedChannel, and connected after each (re)connection, since
// notifications sent while disconnected are lost and a caller must look
// again at what it waits for. It holds one connection of its own, outside
// the pool, reconnects with backoff when it breaks (reporting the error to
// onError, which may be nil), and returns when ctx is done. Malformed ids
// in a payload are skipped.
func (db *DB) FinishedListen(ctx context.Context, finished func([]requestid.ID), connected func(), onError func(error)) {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 10 * time.Second
	backoff := minBackoff
	for ctx.Err() == nil {
		err := db.finishedListenOnce(ctx, finished, func() {
			backoff = minBackoff
			connected()
		})
		if ctx.Err() != nil {
			return
		}
		if onError != nil {
			onError(err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (db *DB) finishedListenOnce(ctx context.Context, finished func([]requestid.ID), connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, db.Pool.Config().ConnConfig)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", FinishedChannel, err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{FinishedChannel}.Sanitize()); err != nil {
		return fmt.Errorf("listen on %s: %w", FinishedChannel, err)
	}
	connected()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", FinishedChannel, err)
		}
		if ids := parseFinishedPayload(n.Payload); len(ids) > 0 {
			finished(ids)
		}
	}
}

// parseFinishedPayload reads the comma-separated ids of a FinishedChannel
// payload.
func parseFinishedPayload(payload string) []requestid.ID {
	var ids []requestid.ID
	for s := range strings.SplitSeq(payload, ",") {
		if id, err := requestid.Parse(strings.TrimSpace(s)); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}
