package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// MaintainerLockKey is the session advisory lock whose holder is the one
// process running the sweeps (see shared/maintainer).
const MaintainerLockKey int64 = 0x61737963_6d61696e // "asycmain"

// Leadership is a session advisory lock held on a connection of its own,
// outside the pool: the lock lasts as long as that connection, and the
// server releases it when the connection dies.
type Leadership struct {
	conn *pgx.Conn
	key  int64
}

// LeadershipTry takes the advisory lock key on a new connection if no other
// session holds it. It returns nil, nil when another session does.
func (db *DB) LeadershipTry(ctx context.Context, key int64) (*Leadership, error) {
	conn, err := pgx.ConnectConfig(ctx, db.Pool.Config().ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("try leadership: %w", err)
	}
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil || !got {
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return nil, fmt.Errorf("try leadership: %w", err)
		}
		return nil, nil
	}
	return &Leadership{conn: conn, key: key}, nil
}

// Check reports an error when the lock's connection no longer answers: the
// lock may be gone, and the holder must stop acting as the leader.
func (l *Leadership) Check(ctx context.Context) error {
	if err := l.conn.Ping(ctx); err != nil {
		return fmt.Errorf("leadership lost: %w", err)
	}
	return nil
}

// Release gives the lock up and closes its connection.
func (l *Leadership) Release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_, _ = l.conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, l.key)
	l.conn.Close(ctx)
}

// RequestNextDeadline is how long until the earliest queue deadline of a
// QUEUED request, measured by the database's clock (the one the expiry
// sweep compares with); false when nothing is queued. It reads the first
// entry of async_requests_queued_deadline_idx.
func (db *DB) RequestNextDeadline(ctx context.Context) (time.Duration, bool, error) {
	var wait *time.Duration
	err := db.Pool.QueryRow(ctx, `
		SELECT greatest(min(deadline_at) - now(), interval '0') FROM async_requests WHERE state = 'QUEUED'`).Scan(&wait)
	if err != nil {
		return 0, false, fmt.Errorf("next queue deadline: %w", err)
	}
	if wait == nil {
		return 0, false, nil
	}
	return *wait, true, nil
}

// RequestNextDue is how long until the earliest due time after after of a
// QUEUED request that a claim could take (its deployment not paused, due
// before its deadline), by the database's clock (negative when that time
// has come); false when none is waiting. Pass the time a claim started:
// requests due by then were the claim's to take, and those it left wait
// for a free slot, which a completion's wake-up announces, not a timer;
// those due since are found here, however close the race. It runs under
// the claim's planner settings (claimPlanSettings). Each deployment's
// part of async_requests_queued_idx is probed once per priority, so the
// cost follows the number of deployments, never the queue.
func (db *DB) RequestNextDue(ctx context.Context, after time.Time) (time.Duration, bool, error) {
	waits, err := queryWith(ctx, db.Pool, `SELECT `+claimPlanSettings, pgx.RowTo[*time.Duration], `
		SELECT min(q.due_at) - now() FROM deployments d
		CROSS JOIN generate_series(0, 2) AS p(priority)
		CROSS JOIN LATERAL (
			SELECT r.due_at FROM async_requests r
			WHERE r.deployment_id = d.id AND r.state = 'QUEUED' AND r.priority = p.priority
				AND r.due_at > $1 AND r.due_at < r.deadline_at
			ORDER BY r.due_at
			LIMIT 1
		) q
		WHERE NOT d.paused`, after)
	if err != nil {
		return 0, false, fmt.Errorf("next due time: %w", err)
	}
	if len(waits) != 1 || waits[0] == nil {
		return 0, false, nil
	}
	return *waits[0], true, nil
}
