package localdev

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

const (
	// ContainerTimeoutDefault bounds starting Postgres in Docker before the
	// harness falls back to the local binaries.
	ContainerTimeoutDefault = 90 * time.Second
	// StartTimeoutDefault bounds initdb and the server's start.
	StartTimeoutDefault = time.Minute
	// ThrowawayDatabase is the database created in a throwaway server.
	ThrowawayDatabase = "asyncdev"
)

// ErrNoPostgres means neither Docker nor local Postgres binaries could run
// a throwaway server.
var ErrNoPostgres = errors.New("no throwaway Postgres: Docker is not running and no initdb binary was found (set DATABASE_URL, start Docker, or install PostgreSQL)")

// Postgres is a throwaway Postgres server. Stop it to remove it.
type Postgres struct {
	// URL is the connection string of ThrowawayDatabase on the server; the
	// database itself is created by the migrations (db.Migrate with create).
	URL string
	// Kind is "container" or "initdb".
	Kind string
	// Dir is the temporary directory of an initdb server, removed by Stop.
	Dir  string
	stop func() error
}

// Stop stops the server and removes everything it stored.
func (p *Postgres) Stop() error { return p.stop() }

// StartPostgres starts a throwaway server: in Docker with testcontainers
// when Docker runs, else with the local initdb and postgres binaries
// (StartInitdb).
func StartPostgres(ctx context.Context, log *slog.Logger) (*Postgres, error) {
	p, err := StartContainer(ctx, log)
	if err == nil {
		return p, nil
	}
	log.Info("no Postgres container; trying local binaries", "reason", err)
	return StartInitdb(ctx, log)
}

// StartContainer starts Postgres 15 in Docker, within
// ContainerTimeoutDefault. testcontainers panics in some versions when no
// Docker engine is found; that becomes an error.
func StartContainer(ctx context.Context, log *slog.Logger) (p *Postgres, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("testcontainers: %v", r)
		}
	}()
	tclog.SetDefault(slogPrintf{log})
	ctx, cancel := context.WithTimeout(ctx, ContainerTimeoutDefault)
	defer cancel()
	c, err := tcpostgres.Run(ctx, "postgres:15-alpine",
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		if c != nil {
			_ = c.Terminate(context.Background())
		}
		return nil, err
	}
	url, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = c.Terminate(context.Background())
		return nil, err
	}
	url = strings.Replace(url, "/postgres?", "/"+ThrowawayDatabase+"?", 1)
	return &Postgres{URL: url, Kind: "container", stop: func() error { return c.Terminate(context.Background()) }}, nil
}

// slogPrintf sends testcontainers' log lines to the harness's logger at
// debug level.
type slogPrintf struct{ log *slog.Logger }

func (l slogPrintf) Printf(format string, v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "testcontainers")
}

// StartInitdb creates a cluster with the local initdb in a new temporary
// directory and runs postgres on it, on a free loopback port, with fsync
// off (nothing in it is worth keeping). As root, which initdb and postgres
// refuse, both run as the "postgres" user, owner of the directory. The
// server gets SIGINT (fast shutdown) if the harness dies without stopping
// it; Stop stops it and removes the directory.
func StartInitdb(ctx context.Context, log *slog.Logger) (*Postgres, error) {
	bin, err := findPostgresBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "asyncdev-postgres-")
	if err != nil {
		return nil, fmt.Errorf("throwaway postgres: %w", err)
	}
	cleanup := func() error { return os.RemoveAll(dir) }
	cred, err := runAs(dir)
	if err != nil {
		return nil, errors.Join(err, cleanup())
	}
	data := filepath.Join(dir, "data")
	logFile, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return nil, errors.Join(err, cleanup())
	}
	defer logFile.Close()
	if cred != nil {
		if err := logFile.Chown(int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, errors.Join(err, cleanup())
		}
	}

	ctx, cancel := context.WithTimeout(ctx, StartTimeoutDefault)
	defer cancel()
	log.Info("creating throwaway Postgres cluster", "dir", dir, "initdb", filepath.Join(bin, "initdb"))
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, errors.Join(fmt.Errorf("initdb: %w\n%s", err, out), cleanup())
	}

	port, err := freePort()
	if err != nil {
		return nil, errors.Join(err, cleanup())
	}
	server := exec.Command(filepath.Join(bin, "postgres"),
		"-D", data, "-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200")
	server.Dir = dir
	server.Stdout, server.Stderr = logFile, logFile
	server.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGINT, Setpgid: true}
	if err := server.Start(); err != nil {
		return nil, errors.Join(fmt.Errorf("start postgres: %w", err), cleanup())
	}
	exited := make(chan error, 1)
	go func() { exited <- server.Wait() }()
	stop := func() error {
		_ = server.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(StartTimeoutDefault):
			_ = server.Process.Kill()
			<-exited
		}
		return cleanup()
	}

	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", port, ThrowawayDatabase)
	if err := waitForServer(ctx, port, exited); err != nil {
		logs, _ := os.ReadFile(logFile.Name())
		return nil, errors.Join(fmt.Errorf("%w\n%s", err, logs), stop())
	}
	return &Postgres{URL: url, Kind: "initdb", Dir: dir, stop: stop}, nil
}

// waitForServer waits until the server on port accepts connections to its
// postgres database.
func waitForServer(ctx context.Context, port int, exited <-chan error) error {
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", port)
	for {
		conn, err := pgx.Connect(ctx, url)
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case err := <-exited:
			return fmt.Errorf("postgres exited: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("postgres did not start: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// findPostgresBin returns the directory holding initdb and postgres: the
// one in PATH, else the newest /usr/lib/postgresql/*/bin (Debian and
// Ubuntu keep them off PATH).
func findPostgresBin() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, dir := range dirs {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	return "", ErrNoPostgres
}

// version reads the major version out of /usr/lib/postgresql/<v>/bin.
func version(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

// runAs returns the credential to run Postgres with: nil normally; as
// root, the "postgres" user's, with dir handed over to it.
func runAs(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("throwaway postgres: running as root, and there is no postgres user to run initdb as: %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		return nil, fmt.Errorf("throwaway postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
