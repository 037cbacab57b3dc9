package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/shared/requestid"
)

// WakeListen calls wake for every notification on channel, and once after
// each (re)connection, since notifications sent while disconnected are
// lost. It holds a connection of its own, outside the pool, reconnects with
// backoff when it breaks (reporting the error to onError, which may be nil),
// and returns when ctx is done. Wake-ups only shorten latency: callers poll
// as well, so nothing depends on this connection.
func (db *DB) WakeListen(ctx context.Context, channel string, wake func(), onError func(error)) {
	db.listen(ctx, channel, func(string) { wake() }, wake, onError)
}

// FinishedListen calls finished with the ids of every notification on
// FinishedChannel, and connected after each (re)connection, since
// notifications sent while disconnected are lost and a caller must look
// again at what it waits for. Like WakeListen, it holds one connection of
// its own and reconnects with backoff. Malformed ids in a payload are
// skipped.
func (db *DB) FinishedListen(ctx context.Context, finished func([]requestid.ID), connected func(), onError func(error)) {
	db.listen(ctx, FinishedChannel, func(payload string) {
		if ids := parseFinishedPayload(payload); len(ids) > 0 {
			finished(ids)
		}
	}, connected, onError)
}

// listen LISTENs on channel on a connection of its own until ctx is done,
// calling notified with each payload and connected after each
// (re)connection; a broken connection is reported to onError (which may be
// nil) and opened again with backoff.
func (db *DB) listen(ctx context.Context, channel string, notified func(payload string), connected func(), onError func(error)) {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 10 * time.Second
	backoff := minBackoff
	for ctx.Err() == nil {
		err := db.listenOnce(ctx, channel, notified, func() {
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

func (db *DB) listenOnce(ctx context.Context, channel string, notified func(string), connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, db.Pool.Config().ConnConfig)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", channel, err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen on %s: %w", channel, err)
	}
	connected()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", channel, err)
		}
		notified(n.Payload)
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
