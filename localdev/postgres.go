package localdev

import (
	"context"
	"log/slog"

	"github.com/openasync/asyncrequest/shared/postgres/throwaway"
)

// ThrowawayDatabase is the database dev uses on a throwaway server; the
// migrations create it (db.Migrate with create).
const ThrowawayDatabase = "asyncdev"

// StartPostgres starts the throwaway server of dev: a container where
// Docker runs, else an initdb cluster, the same as the tests get
// (throwaway.Start).
func StartPostgres(ctx context.Context, log *slog.Logger) (*throwaway.Server, error) {
	return throwaway.Start(ctx, log)
}
