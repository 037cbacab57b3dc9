// Package throwaway starts a Postgres server that is removed when it stops:
// the dev harness (make dev) and the tests (pgtest) run on one when no
// database is configured. It is a Postgres container where Docker runs,
// else a temporary initdb cluster from the local PostgreSQL binaries.
package throwaway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
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
	// ContainerTimeoutDefault bounds starting Postgres in Docker before
	// Start falls back to the local binaries.
	ContainerTimeoutDefault = 90 * time.Second
	// StartTimeoutDefault bounds initdb and the server's start.
	StartTimeoutDefault = time.Minute
	// DirPrefix begins the name of every initdb cluster's temporary
	// directory; StartInitdb removes those whose owner has died.
	DirPrefix = "asyncdev-postgres-"
)

// ErrNoPostgres means neither Docker nor local Postgres binaries could run
// a throwaway server.
var ErrNoPostgres = errors.New("no throwaway Postgres: Docker is not running and no initdb binary was found (start Docker or install PostgreSQL: Debian apt-get install postgresql)")

// Server is a throwaway Postgres server. Stop it to remove it.
type Server struct {
	// URL is the connection string of the server's postgres database, as
	// the superuser postgres; DatabaseURL names another database.
	URL string
	// Kind is "container" or "initdb".
	Kind string
	// Dir is the temporary directory of an initdb server, removed by Stop.
	Dir  string
	stop func() error
}

// Stop stops the server and removes everything it stored.
func (s *Server) Stop() error { return s.stop() }

// DatabaseURL is URL with database name in place of postgres.
func (s *Server) DatabaseURL(name string) string {
	u, err := url.Parse(s.URL)
	if err != nil {
		panic(err) // built by this package
	}
	u.Path = "/" + name
	return u.String()
}

// Start starts a throwaway server: in Docker with testcontainers when
// Docker runs, else with the local initdb and postgres binaries
// (StartInitdb).
func Start(ctx context.Context, log *slog.Logger) (*Server, error) {
	s, err := StartContainer(ctx, log)
	if err == nil {
		return s, nil
	}
	log.Info("no Postgres container; trying local binaries", "reason", err)
	return StartInitdb(ctx, log)
}

// StartContainer starts Postgres 15 in Docker, within
// ContainerTimeoutDefault. testcontainers panics in some versions when no
// Docker engine is found; that becomes an error.
func StartContainer(ctx context.Context, log *slog.Logger) (s *Server, err error) {
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
	connString, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = c.Terminate(context.Background())
		return nil, err
	}
	return &Server{URL: connString, Kind: "container", stop: func() error { return c.Terminate(context.Background()) }}, nil
}

// slogPrintf sends testcontainers' log lines to log at debug level.
type slogPrintf struct{ log *slog.Logger }

func (l slogPrintf) Printf(format string, v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "testcontainers")
}

// StartInitdb creates a cluster with the local initdb in a new temporary
// directory and runs postgres on it, on a free loopback port, with fsync
// off (nothing in it is worth keeping). As root, which initdb and postgres
// refuse, both run as the "postgres" user, owner of the directory. The
// server gets SIGINT (fast shutdown) if its starter dies without stopping
// it, and the next StartInitdb removes the directory such a starter left;
// Stop stops the server and removes the directory.
func StartInitdb(ctx context.Context, log *slog.Logger) (*Server, error) {
	bin, err := findPostgresBin()
	if err != nil {
		return nil, err
	}
	removeOrphans(os.TempDir(), log)
	dir, err := os.MkdirTemp("", DirPrefix)
	if err != nil {
		return nil, fmt.Errorf("throwaway postgres: %w", err)
	}
	cleanup := func() error { return os.RemoveAll(dir) }
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, errors.Join(fmt.Errorf("throwaway postgres: %w", err), cleanup())
	}
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

	connString := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	if err := waitForServer(ctx, connString, exited); err != nil {
		logs, _ := os.ReadFile(logFile.Name())
		return nil, errors.Join(fmt.Errorf("%w\n%s", err, logs), stop())
	}
	return &Server{URL: connString, Kind: "initdb", Dir: dir, stop: stop}, nil
}

// ownerFile, in a cluster's directory, holds the process id of the process
// that started it.
const ownerFile = "owner.pid"

// removeOrphans removes the cluster directories under tmp whose starter is
// no longer running (killed before it could stop its server, whose
// postgres then stopped on SIGINT). A directory without an owner file yet
// is being created, unless it is older than StartTimeoutDefault.
func removeOrphans(tmp string, log *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(tmp, DirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			if fi, err := os.Stat(dir); err != nil || time.Since(fi.ModTime()) < StartTimeoutDefault {
				continue
			}
		} else if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && alive(pid) {
			continue
		}
		if postmasterRunning(dir) {
			continue
		}
		if err := os.RemoveAll(dir); err == nil {
			log.Info("removed a throwaway Postgres cluster left by a dead process", "dir", dir)
		}
	}
}

// alive reports whether process pid exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// postmasterRunning reports whether the cluster in dir has a live server
// (its postmaster.pid names a running process).
func postmasterRunning(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	return err == nil && alive(pid)
}

// waitForServer waits until the server accepts connections to connString.
func waitForServer(ctx context.Context, connString string, exited <-chan error) error {
	connString += "&connect_timeout=2"
	for {
		conn, err := pgx.Connect(ctx, connString)
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case err := <-exited:
			return fmt.Errorf("postgres exited: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("postgres did not start: %w", err)
		case <-time.After(50 * time.Millisecond):
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
