package maintainer_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/shared/maintainer"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/worker"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// run runs m until the returned stop is called (or the test ends).
func run(t *testing.T, m *maintainer.Maintainer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// eventually polls ok until it holds, failing the test after 30 s.
func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// thisLock picks the maintainer lock $1 of the test's own database out of
// pg_locks, which lists every database's.
const thisLock = `AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
	AND ((classid::bigint << 32) | objid::bigint) = $1`

// TestLeadership: of two maintainers on one database, one leads at a time;
// when the leader stops, or its lock's connection dies, the other takes
// over (and the old one, at its next check, steps down).
func TestLeadership(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	newM := func() *maintainer.Maintainer {
		return maintainer.New(maintainer.Options{DB: db, Logger: quiet, Interval: 20 * time.Millisecond})
	}
	a, b := newM(), newM()
	stopA, stopB := run(t, a), run(t, b)

	// Watch both while they run: never two sessions holding the lock, and,
	// but for the moments between a leader's connection dying and its next
	// check, never two maintainers saying they lead.
	watchCtx, stopWatch := context.WithCancel(ctx)
	var both, twoHolders int
	var flagsWatched atomic.Bool
	flagsWatched.Store(true)
	var watched sync.WaitGroup
	watched.Go(func() {
		for watchCtx.Err() == nil {
			if flagsWatched.Load() && a.Leading() && b.Leading() {
				both++
			}
		}
	})
	watched.Go(func() {
		for watchCtx.Err() == nil {
			var n int
			if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted `+thisLock,
				postgres.MaintainerLockKey).Scan(&n); err == nil && n > 1 {
				twoHolders++
			}
		}
	})
	eventually(t, "a leader", func() bool { return a.Leading() || b.Leading() })
	leader, follower, stopLeader := a, b, stopA
	if b.Leading() {
		leader, follower, stopLeader = b, a, stopB
	}
	holders := func() int {
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted `+thisLock,
			postgres.MaintainerLockKey).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := holders(); n != 1 {
		t.Fatalf("%d sessions hold the maintainer lock, want 1", n)
	}
	time.Sleep(200 * time.Millisecond) // the follower tries again, a few times
	if follower.Leading() || !leader.Leading() {
		t.Fatal("leadership moved while the leader ran")
	}

	// The leader's lock connection dies: it steps down at its next check,
	// the other leads.
	flagsWatched.Store(false)
	if _, err := db.Pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' `+thisLock,
		postgres.MaintainerLockKey); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the follower to lead after the leader's connection died", follower.Leading)
	eventually(t, "the leader to step down after its connection died", func() bool { return !leader.Leading() })
	flagsWatched.Store(true)
	// Then the new leader stops: the old one leads again.
	if follower == a {
		stopA()
	} else {
		stopB()
	}
	eventually(t, "the first leader to lead again", leader.Leading)
	stopLeader()
	stopWatch()
	watched.Wait()
	if both > 0 {
		t.Errorf("both maintainers led at once, %d times seen", both)
	}
	if twoHolders > 0 {
		t.Errorf("two sessions held the maintainer lock at once, %d times seen", twoHolders)
	}
	if n := holders(); n != 0 {
		t.Errorf("%d sessions hold the maintainer lock after both stopped", n)
	}
}

// TestSweepOnce: a scheduled sweep runs only when nobody leads.
func TestSweepOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	org := pgtest.SeedTenant(t, db, "acme", []postgres.Model{{ID: "m1", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "d1", ModelID: "m1"}})
	submitLate := func() requestid.ID {
		t.Helper()
		p := postgres.RequestInsertParams{ID: requestid.New(), OrganizationID: org.ID, ModelID: "m1", DeploymentID: "d1",
			MaxAttempts: 1, Input: []byte(`{}`)}
		if _, err := db.RequestInsert(ctx, p); err != nil {
			t.Fatal(err)
		}
		return p.ID
	}
	submitLate()
	leader := maintainer.New(maintainer.Options{DB: db, Logger: quiet, Interval: time.Hour})
	lead, err := db.LeadershipTry(ctx, postgres.MaintainerLockKey)
	if err != nil || lead == nil {
		t.Fatalf("take the lock: %v, %v", lead, err)
	}
	other := maintainer.New(maintainer.Options{DB: db, Logger: quiet})
	if _, swept := other.SweepOnce(ctx); swept {
		t.Fatal("swept while another process leads")
	}
	lead.Release(ctx)
	c, swept := leader.SweepOnce(ctx)
	if !swept || c.Expired != 1 {
		t.Fatalf("sweep once with nobody leading: swept %v, %+v", swept, c)
	}
}

// TestExpiryAtDeadline: the leader sleeps until the earliest queue
// deadline, not its interval, and expires the request when it comes.
func TestExpiryAtDeadline(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.New(t)
	org := pgtest.SeedTenant(t, db, "acme", []postgres.Model{{ID: "m1", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "d1", ModelID: "m1"}})
	id := requestid.New()
	if _, err := db.RequestInsert(ctx, postgres.RequestInsertParams{ID: id, OrganizationID: org.ID, ModelID: "m1",
		DeploymentID: "d1", MaxAttempts: 1, Input: []byte(`{}`), MaxTimeInQueue: time.Minute}); err != nil {
		t.Fatal(err)
	}
	clock := worker.NewManualClock(time.Now())
	m := maintainer.New(maintainer.Options{DB: db, Logger: quiet, Interval: time.Hour, Clock: clock})
	run(t, m)
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var at time.Time
	for at.IsZero() || at.Sub(clock.Now()) > 59*time.Minute { // past the first sweep's timer, if any
		if at = clock.WaitTimer(waitCtx); at.IsZero() {
			t.Fatal("the maintainer never slept")
		}
		if !m.Leading() {
			at = time.Time{}
			time.Sleep(time.Millisecond)
		}
	}
	if d := at.Sub(clock.Now()); d > time.Minute || d < 50*time.Second {
		t.Fatalf("the leader sleeps %v, want until the deadline a minute away", d)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE async_requests SET deadline_at = now() WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	eventually(t, "the request to expire", func() bool {
		var state string
		if err := db.Pool.QueryRow(ctx, `SELECT state FROM async_requests WHERE id = $1`, id).Scan(&state); err != nil {
			t.Fatal(err)
		}
		return state == string(postgres.StateExpired)
	})
}
