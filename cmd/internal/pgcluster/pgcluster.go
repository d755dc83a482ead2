// Package pgcluster runs throwaway Postgres clusters for tests and demos:
// initdb into a temporary directory, a server on a free loopback port, and
// stop/start/removal on demand. As root, Postgres runs as the "postgres"
// user (it refuses to run as root). Durability is traded for speed (fsync
// off): never use it for data that matters.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is one throwaway Postgres. Its methods are not safe for
// concurrent use.
type Cluster struct {
	dir     string
	bin     string
	port    int
	cred    *syscall.Credential
	proc    *exec.Cmd
	stopped chan struct{} // closed when the server process has exited
	exitErr error         // why it exited; read after stopped is closed
	logFile *os.File
}

// New creates and starts a cluster.
func New() (*Cluster, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "devpg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{dir: dir, bin: bin}
	if err := c.init(); err != nil {
		_ = os.RemoveAll(dir) // best effort, as in Close
		return nil, err
	}
	if err := c.Start(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) init() error {
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running as root needs a postgres user to run Postgres as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(c.dir, uid, gid); err != nil {
			return err
		}
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	initdb := exec.Command(filepath.Join(c.bin, "initdb"), "-D", c.dataDir(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	c.port = port
	c.logFile, err = os.Create(filepath.Join(c.dir, "postgres.log"))
	return err
}

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }

// URL is the connection string of the cluster's "postgres" database.
func (c *Cluster) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

// Start starts the server (again, after Stop) on the cluster's port and
// waits until it answers queries.
func (c *Cluster) Start() error {
	if c.proc != nil {
		return errors.New("already running")
	}
	pg := exec.Command(filepath.Join(c.bin, "postgres"), "-D", c.dataDir(), "-k", c.dir, "-p", strconv.Itoa(c.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "log_min_messages=warning")
	// Own process group: a Ctrl-C meant for the command using the database
	// must not stop the database under it before it has drained.
	pg.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true}
	pg.Stdout, pg.Stderr = c.logFile, c.logFile
	if err := pg.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	stopped := make(chan struct{})
	c.proc, c.stopped = pg, stopped
	go func() {
		c.exitErr = pg.Wait()
		close(stopped)
	}()
	if err := c.waitReady(30 * time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(c.dir, "postgres.log"))
		c.Stop()
		return fmt.Errorf("%w\n%s", err, log)
	}
	return nil
}

// Stop shuts the server down (fast shutdown: open sessions are
// disconnected), keeping its data for a later Start.
func (c *Cluster) Stop() {
	if c.proc == nil {
		return
	}
	_ = c.proc.Process.Signal(syscall.SIGINT)
	select {
	case <-c.stopped: // after SIGINT the exit status says nothing
	case <-time.After(15 * time.Second):
		_ = c.proc.Process.Kill()
		<-c.stopped
	}
	c.proc = nil
}

// Close stops the server and deletes every file of the cluster.
func (c *Cluster) Close() {
	c.Stop()
	if c.logFile != nil {
		_ = c.logFile.Close() // a log of a throwaway cluster
	}
	_ = os.RemoveAll(c.dir) // best effort: a leftover temp dir harms nothing
}

func (c *Cluster) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		select {
		case <-c.stopped:
			return fmt.Errorf("postgres exited during start: %w", c.exitErr)
		case <-ctx.Done():
			return errors.New("postgres did not start in time")
		case <-time.After(50 * time.Millisecond):
		}
		if ping(ctx, c.URL()) {
			return nil
		}
	}
}

func ping(ctx context.Context, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return false
	}
	defer func() { _ = conn.Close(ctx) }()
	return conn.Ping(ctx) == nil
}

// binDir finds the Postgres server binaries: $PG_BIN, else the newest
// /usr/lib/postgresql/*/bin, else the directory of initdb on PATH.
func binDir() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(d string) int { v, _ := strconv.Atoi(filepath.Base(filepath.Dir(d))); return v }
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no Postgres server binaries found: install postgresql (Debian: apt-get install postgresql) or set PG_BIN")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }() // the port is free again for Postgres
	return l.Addr().(*net.TCPAddr).Port, nil
}
