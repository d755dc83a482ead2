// Command devpg runs a command with a throwaway Postgres: it creates a
// cluster in a temporary directory, starts it on a free loopback port, runs
// the command with DATABASE_URL and SIDECAR_DATABASE_URL pointing at it, then
// stops the cluster and deletes its files. When either variable is already
// set, it only copies it to the other and runs the command.
//
// Usage: devpg [-q] -- command [args...]
//
// As root it runs Postgres as the "postgres" user (Postgres refuses root).
// The cluster trades durability for speed (fsync off): it is for tests and
// demos only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"
)

func main() {
	quiet := flag.Bool("q", false, "print nothing but errors")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: devpg [-q] -- command [args...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	code, err := run(flag.Args(), *quiet)
	if err != nil {
		fmt.Fprintln(os.Stderr, "devpg:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func run(args []string, quiet bool) (int, error) {
	if url := firstNonEmpty(os.Getenv("SIDECAR_DATABASE_URL"), os.Getenv("DATABASE_URL")); url != "" {
		return runCommand(args, url)
	}
	logf := func(format string, a ...any) {
		if !quiet {
			fmt.Fprintf(os.Stderr, "devpg: "+format+"\n", a...)
		}
	}
	bin, err := pgBinDir()
	if err != nil {
		return 1, err
	}
	dir, err := os.MkdirTemp("", "devpg-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(dir)
	cred, err := credential(dir)
	if err != nil {
		return 1, err
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return 1, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return 1, err
	}
	pg := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", dir, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "log_min_messages=warning")
	// Own process group: a Ctrl-C for the command must not stop the
	// database under it before it has drained.
	pg.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	logFile, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return 1, err
	}
	defer logFile.Close()
	pg.Stdout, pg.Stderr = logFile, logFile
	if err := pg.Start(); err != nil {
		return 1, fmt.Errorf("starting postgres: %w", err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- pg.Wait() }()
	defer func() {
		_ = pg.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-stopped:
		case <-time.After(15 * time.Second):
			_ = pg.Process.Kill()
			<-stopped
		}
	}()
	if err := waitReady(port, stopped, 30*time.Second); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
		return 1, fmt.Errorf("%w\n%s", err, log)
	}
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	logf("throwaway Postgres at %s (removed on exit)", url)
	return runCommand(args, url)
}

// runCommand runs args with the database URL in the environment, passing
// SIGINT and SIGTERM on, and returns its exit code.
func runCommand(args []string, url string) (int, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "DATABASE_URL="+url, "SIDECAR_DATABASE_URL="+url)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return 127, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case err := <-done:
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return exit.ExitCode(), nil
			}
			return 0, err
		}
	}
}

// credential returns the identity to run Postgres as: the current user, or
// "postgres" when running as root (then dir is handed to that user).
func credential(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a postgres user to run Postgres as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// pgBinDir finds the Postgres server binaries: $PG_BIN, else the newest
// /usr/lib/postgresql/*/bin, else the directory of initdb on PATH.
func pgBinDir() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
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
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady waits until Postgres accepts TCP connections and has finished
// starting (a connection is refused while it recovers).
func waitReady(port int, stopped <-chan error, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		select {
		case err := <-stopped:
			return fmt.Errorf("postgres exited during start: %v", err)
		case <-ctx.Done():
			return errors.New("postgres did not start in time")
		case <-time.After(50 * time.Millisecond):
		}
		if pingPostgres(ctx, port) {
			return nil
		}
	}
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
