package pgtest_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestNeedsDatabase is a test that needs a database; TestNoDatabase runs it
// where none can be had.
func TestNeedsDatabase(t *testing.T) {
	pg := pgtest.New(t)
	var one int
	if err := pg.Pool.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}
}

// TestNoDatabase runs TestNeedsDatabase in a child process with no
// TEST_DATABASE_URL, no Docker and no usable temporary directory, so that
// no server can be had: the test fails, naming the reason and the opt-out,
// and with TEST_DATABASE_SKIP=1 it skips.
func TestNoDatabase(t *testing.T) {
	t.Parallel()
	run := func(t *testing.T, extra ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run", "^TestNeedsDatabase$", "-test.v", "-test.count=1")
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "TEST_DATABASE_") && !strings.HasPrefix(kv, "TMPDIR=") && !strings.HasPrefix(kv, "DOCKER_HOST=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, append([]string{"TMPDIR=/nonexistent/pgtest", "DOCKER_HOST=unix:///nonexistent/docker.sock"}, extra...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	t.Run("Fails", func(t *testing.T) {
		t.Parallel()
		out, err := run(t)
		if err == nil || !strings.Contains(out, "--- FAIL: TestNeedsDatabase") {
			t.Fatalf("want TestNeedsDatabase to fail; err %v, output:\n%s", err, out)
		}
		if !strings.Contains(out, "no throwaway Postgres could start") || !strings.Contains(out, pgtest.SkipVariable+"=1") {
			t.Errorf("the failure does not say why and how to skip:\n%s", out)
		}
	})
	t.Run("SkipsWhenAsked", func(t *testing.T) {
		t.Parallel()
		out, err := run(t, pgtest.SkipVariable+"=1")
		if err != nil || !strings.Contains(out, "--- SKIP: TestNeedsDatabase") {
			t.Fatalf("want TestNeedsDatabase skipped; err %v, output:\n%s", err, out)
		}
	})
}
