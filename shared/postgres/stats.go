package postgres

import (
	"context"
	"fmt"
	"time"
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
// reads async_requests_finished_idx: the rows of the window only, however
// many older finished rows the table holds.
func (db *DB) RequestCompletionsByMinute(ctx context.Context, organizationID int64, since time.Time) ([]CompletionMinute, error) {
	rows, err := db.Pool.Query(ctx, `
		SELECT deployment_id, date_trunc('minute', finished_at) AS minute, state, count(*),
			percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
		FROM async_requests
		WHERE organization_id = $1 AND finished_at >= $2
		GROUP BY GROUPING SETS ((deployment_id, minute, state), (deployment_id, minute))
		ORDER BY minute, deployment_id, state NULLS FIRST`, organizationID, since)
	if err != nil {
		return nil, fmt.Errorf("count completions: %w", err)
	}
	defer rows.Close()
	var out []CompletionMinute
	for rows.Next() {
		var (
			dep    string
			minute time.Time
			state  *RequestState
			n      int64
			pct    []float64
		)
		if err := rows.Scan(&dep, &minute, &state, &n, &pct); err != nil {
			return nil, fmt.Errorf("count completions: %w", err)
		}
		if state == nil {
			// The (deployment, minute) total comes first: it starts the minute.
			m := CompletionMinute{DeploymentID: dep, Minute: minute, ByState: map[RequestState]int64{}}
			if len(pct) == 3 {
				m.P50, m.P95, m.P99 = seconds(pct[0]), seconds(pct[1]), seconds(pct[2])
			}
			out = append(out, m)
			continue
		}
		if len(out) > 0 {
			out[len(out)-1].ByState[*state] = n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count completions: %w", err)
	}
	return out, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
