package functions_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/lambdahttp"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// TestResultThroughLambda serves /result as the status function does on AWS
// Lambda (the handler behind lambdahttp.Handler, with the API's replacement
// for oversized answers), against the database: an output too large for a
// Lambda answer gets the API's RESPONSE_TOO_LARGE error instead of a failed
// invocation, and one that fits goes through whole.
func TestResultThroughLambda(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	tenant := pgtest.SeedTenant(t, db, "acme", []postgres.Model{{ID: "m1", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "m1-a", ModelID: "m1", Environments: []string{"production"}}})
	h := lambdahttp.Handler(status.New(status.Options{DB: db}), httpapi.ResponseTooLarge(nil))

	for _, tt := range []struct {
		name   string
		size   int // bytes of the output's string
		status int
	}{
		{"Fits", 4 << 20, http.StatusOK},
		{"TooLarge", 7 << 20, http.StatusBadGateway},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := requestid.New()
			if _, err := db.RequestInsert(ctx, postgres.RequestInsertParams{
				ID: id, OrganizationID: tenant.ID, ModelID: "m1", DeploymentID: "m1-a",
				MaxTimeInQueue: time.Hour, MaxAttempts: 1, Input: []byte(`{}`),
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Pool.Exec(ctx, fmt.Sprintf(`UPDATE async_requests SET state = 'SUCCEEDED', input = NULL,
				output = convert_to('"' || repeat('x', %d) || '"', 'UTF8') WHERE id = $1`, tt.size), id); err != nil {
				t.Fatal(err)
			}
			var event events.APIGatewayV2HTTPRequest
			event.RawPath = "/async_request/" + id.String() + "/result"
			event.Headers = map[string]string{"host": "model-m1.example.com", "authorization": "Api-Key " + tenant.Key}
			event.RequestContext.HTTP.Method = http.MethodGet
			resp, err := h(ctx, event)
			if err != nil || resp.StatusCode != tt.status {
				t.Fatalf("%d (%d body bytes), %v; want %d", resp.StatusCode, len(resp.Body), err, tt.status)
			}
			if tt.status == http.StatusOK {
				if len(resp.Body) < tt.size {
					t.Errorf("body of %d bytes, want the %d-byte output in it", len(resp.Body), tt.size)
				}
				return
			}
			header := http.Header{}
			for k, v := range resp.Headers {
				header.Set(k, v)
			}
			if e := apitest.DecodeError(t, resp.StatusCode, header, []byte(resp.Body)); e.Code != "RESPONSE_TOO_LARGE" || !strings.Contains(e.Error, "webhook") {
				t.Errorf("body %s", resp.Body)
			}
		})
	}
}
