package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// CompletionMinute is one minute of one deployment's finished requests:
// how many reached each final state, and the end-to-end latency (submit
// to final state) percentiles of all of them.
type CompletionMinute struct {
	DeploymentID string
	Minute       time.Time
	// ByState counts the minute's requests by the state they finished in
	// (as they are now: a SUCCEEDED request whose webhook then failed
	// counts as WEBHOOK_FAILED).
	ByState       map[RequestState]int64
	P50, P95, P99 time.Duration
}

// RequestCompletionsByMinute returns the organization's requests that
// finished at or after since, per deployment and minute, oldest first. It
// is an index-only scan of async_requests_finished_idx, which covers the
// columns it reads: the window's rows only, however many older finished
// rows the table holds. The percentiles sort each minute's rows, in memory
// (completionsSettings).
func (db *DB) RequestCompletionsByMinute(ctx context.Context, organizationID int64, since time.Time) ([]CompletionMinute, error) {
	out, err := queryWith(ctx, db.Pool, completionsSettings, scanCompletionMinute, `
		SELECT deployment_id, date_trunc('minute', finished_at) AS minute,
			count(*) FILTER (WHERE state = 'SUCCEEDED'), count(*) FILTER (WHERE state = 'WEBHOOK_FAILED'),
			count(*) FILTER (WHERE state = 'FAILED'), count(*) FILTER (WHERE state = 'EXPIRED'),
			count(*) FILTER (WHERE state = 'CANCELED'),
			percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
		FROM async_requests
		WHERE organization_id = $1 AND finished_at >= $2
		GROUP BY 1, 2
		ORDER BY 2, 1`, organizationID, since)
	if err != nil {
		return nil, fmt.Errorf("count completions: %w", err)
	}
	return out, nil
}

// completionsSettings give the chart query room to sort an hour of
// completions (tens of thousands of rows) without spilling to disk, and
// no JIT: compiling the aggregates costs more (about a second on a busy
// machine) than running them.
const completionsSettings = `SELECT set_config('work_mem', '32MB', true), set_config('jit', 'off', true)`

// completionStates are the final states in the order the query counts them.
var completionStates = []RequestState{StateSucceeded, StateWebhookFailed, StateFailed, StateExpired, StateCanceled}

func scanCompletionMinute(row pgx.CollectableRow) (CompletionMinute, error) {
	m := CompletionMinute{ByState: map[RequestState]int64{}}
	counts := make([]int64, len(completionStates))
	var pct []float64
	dest := []any{&m.DeploymentID, &m.Minute}
	for i := range counts {
		dest = append(dest, &counts[i])
	}
	if err := row.Scan(append(dest, &pct)...); err != nil {
		return CompletionMinute{}, err
	}
	for i, st := range completionStates {
		if counts[i] > 0 {
			m.ByState[st] = counts[i]
		}
	}
	if len(pct) == 3 {
		m.P50, m.P95, m.P99 = seconds(pct[0]), seconds(pct[1]), seconds(pct[2])
	}
	return m, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
