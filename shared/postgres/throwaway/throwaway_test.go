package throwaway

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/db"
)

// TestStartInitdb starts a server with the local binaries, as dev and the
// tests do when Docker is not running, migrates a database on it and
// removes it. It fails, rather than skips, without the binaries.
func TestStartInitdb(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := StartInitdb(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = s.Stop()
		}
	})
	if s.Kind != "initdb" || s.Dir == "" {
		t.Fatalf("server %+v", s)
	}
	url := s.DatabaseURL("asyncdev")
	if err := db.Migrate(ctx, url, true, nil); err != nil {
		t.Fatalf("migrate a new database on the server: %v", err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	var tables int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_name IN ('async_requests', 'organizations')`).Scan(&tables)
	conn.Close(ctx)
	if err != nil || tables != 2 {
		t.Fatalf("migrated tables: %d, %v", tables, err)
	}

	stopped = true
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Stop, %s: %v; want it removed", s.Dir, err)
	}
	if conn, err := pgx.Connect(ctx, s.URL); err == nil {
		conn.Close(ctx)
		t.Error("the server still answers after Stop")
	}
}

// TestRemoveOrphans removes the directory of a dead starter and keeps those
// of live ones and those still being created.
func TestRemoveOrphans(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	dirs := map[string]string{"dead": strconv.Itoa(dead.Process.Pid), "live": strconv.Itoa(os.Getpid()), "new": ""}
	for name, pid := range dirs {
		dir := filepath.Join(tmp, DirPrefix+name)
		if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
			t.Fatal(err)
		}
		if pid != "" {
			if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(pid), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	removeOrphans(tmp, slog.New(slog.DiscardHandler))
	for name, want := range map[string]bool{"dead": false, "live": true, "new": true} {
		_, err := os.Stat(filepath.Join(tmp, DirPrefix+name))
		if got := err == nil; got != want {
			t.Errorf("%s: exists %v, want %v", name, got, want)
		}
	}
}
