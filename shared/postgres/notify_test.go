package postgres_test

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// listen returns a connection listening on channels.
func listen(t *testing.T, db *postgres.DB, channels ...string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.ConnectConfig(ctx, db.Pool.Config().ConnConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	for _, c := range channels {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{c}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
	return conn
}

// next waits for conn's next notification.
func next(t *testing.T, conn *pgx.Conn) (channel, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := conn.WaitForNotification(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return n.Channel, n.Payload
}

// TestNotifyFinished: the ids of a batch's finished requests, and only
// those, reach FinishedChannel in payloads under 8,000 bytes, and the
// completion statement itself notifies nobody: its wake-ups are the
// separate Notify after its commit.
func TestNotifyFinished(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, submit := processSetup(t)
	if _, err := db.Pool.Exec(ctx, `UPDATE deployments SET max_concurrency = 10`); err != nil {
		t.Fatal(err)
	}
	conn := listen(t, db, postgres.FinishedChannel, postgres.WakeChannel, postgres.WebhookWakeChannel)
	ok, failed, retried := submit(func(p *postgres.RequestInsertParams) { p.WebhookEndpoint = "https://receiver.example/hook" }), submit(), submit()
	expired := submit(func(p *postgres.RequestInsertParams) { p.MaxTimeInQueue = 0 })
	if _, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p", Limit: 10, LeaseDuration: time.Minute}); err != nil {
		t.Fatal(err)
	}
	// Drain the submits' wake-ups, up to a marker.
	if _, err := db.Pool.Exec(ctx, `SELECT pg_notify($1, 'submitted')`, postgres.FinishedChannel); err != nil {
		t.Fatal(err)
	}
	for {
		if _, p := next(t, conn); p == "submitted" {
			break
		}
	}
	rec, err := db.RequestCompleteBatch(ctx, "p", []postgres.AttemptOutcome{
		{ID: ok, State: postgres.StateSucceeded, Output: []byte(`1`)},
		{ID: failed, State: postgres.StateFailed, Error: &postgres.AttemptError{Code: postgres.CodeModelInvalidInput, Message: "no"}},
		{ID: retried, State: postgres.StateQueued, Error: &postgres.AttemptError{Code: postgres.CodeModelUnavailable, Message: "503"}},
	})
	if err != nil || len(rec) != 3 {
		t.Fatalf("complete: %v, %d", err, len(rec))
	}
	// A marker sent after the completion committed must come first:
	// notifications arrive in commit order.
	if _, err := db.Pool.Exec(ctx, `SELECT pg_notify($1, 'marker')`, postgres.FinishedChannel); err != nil {
		t.Fatal(err)
	}
	if c, p := next(t, conn); c != postgres.FinishedChannel || p != "marker" {
		t.Fatalf("first notification %s %q, want the marker: the completion statement notified", c, p)
	}
	n := postgres.NoticeOf(rec)
	if !n.Processors || !n.Deliverers || !slices.Equal(n.Finished, []requestid.ID{ok, failed}) {
		t.Fatalf("notice %+v: want processors, deliverers and the two finished requests", n)
	}
	if err := db.Notify(ctx, n); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for range 3 {
		c, p := next(t, conn)
		got[c] = p
	}
	if p, ok := got[postgres.WakeChannel]; !ok || p != "" {
		t.Errorf("processors' wake-up: %q, %v", p, ok)
	}
	if _, ok := got[postgres.WebhookWakeChannel]; !ok {
		t.Error("no deliverers' wake-up")
	}
	if want := ok.String() + "," + failed.String(); got[postgres.FinishedChannel] != want {
		t.Errorf("finished payload %q, want %q", got[postgres.FinishedChannel], want)
	}

	e, err := db.RequestExpireBatch(ctx, 100)
	if err != nil || len(e) != 1 {
		t.Fatalf("expire: %v, %d", err, len(e))
	}
	if err := db.NotifyFinished(ctx, []requestid.ID{e[0].ID}); err != nil {
		t.Fatal(err)
	}
	if c, p := next(t, conn); c != postgres.FinishedChannel || p != expired.String() {
		t.Errorf("after expiry: %s %q, want %s", c, p, expired)
	}
}

// TestNotifyFinishedPayloads: many ids are split over payloads Postgres
// accepts, each id once, in order.
func TestNotifyFinishedPayloads(t *testing.T) {
	t.Parallel()
	db, _ := processSetup(t)
	conn := listen(t, db, postgres.FinishedChannel)
	ids := make([]requestid.ID, 1000)
	for i := range ids {
		ids[i] = requestid.New()
	}
	if err := db.NotifyFinished(context.Background(), ids); err != nil {
		t.Fatal(err)
	}
	hex := regexp.MustCompile(`^[0-9a-f]{32}$`)
	var got []string
	for len(got) < len(ids) {
		_, p := next(t, conn)
		if len(p) >= 7900 {
			t.Errorf("payload of %d bytes", len(p))
		}
		for _, id := range strings.Split(p, ",") {
			if !hex.MatchString(id) {
				t.Fatalf("id %q is not 32 lowercase hex characters", id)
			}
			got = append(got, id)
		}
	}
	for i, id := range ids {
		if got[i] != id.String() {
			t.Fatalf("id %d: %s, want %s", i, got[i], id)
		}
	}
}
