package httpapi_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
)

// TestWriteErrorClientGone checks that a query canceled because the
// client went away is logged as that, not as a database outage, while a
// canceled query of a client still there still is one.
func TestWriteErrorClientGone(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name       string
		clientGone bool
		want, not  string
	}{
		{"ClientGone", true, "client went away", "database unavailable"},
		{"ClientThere", false, "database unavailable", "client went away"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs apitest.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			ctx, cancel := context.WithCancel(context.Background())
			if tt.clientGone {
				cancel()
			} else {
				defer cancel()
			}
			r := httptest.NewRequest("GET", "/async_request/x", nil).WithContext(ctx)
			httpapi.WriteError(httptest.NewRecorder(), r, log, fmt.Errorf("request get: %w", context.Canceled))
			if !strings.Contains(logs.String(), tt.want) || strings.Contains(logs.String(), tt.not) {
				t.Errorf("logged %q; want %q, not %q", logs.String(), tt.want, tt.not)
			}
		})
	}
}
