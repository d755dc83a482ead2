// Command demo runs the product end to end on one machine: the demo legacy
// service (todo-api, serving the demo web app) and replicache-sidecar in
// front of it, with the example mapping. It needs SIDECAR_DATABASE_URL; run
// it as `make demo`, which starts a throwaway Postgres around it.
//
// Enter (a line on stdin) stops the API and starts it again, to watch
// mutations queue while it is away; the API keeps its data across that in a
// temporary state file. The demo ends on Ctrl-C (both processes are
// stopped, the sidecar first), or when the sidecar exits; the API stopping,
// by Enter or otherwise, never ends it.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// readyTimeout bounds how long a started process may take to answer its
// health check. A process that exits meanwhile fails the demo at once.
const readyTimeout = 30 * time.Second

// options are the demo's flags.
type options struct {
	bin, static, mapping, host string
	port, adminPort, apiPort   int
}

// run runs the demo until ctx ends (nil) or the sidecar exits (an error).
// env is the environment the children inherit (SIDECAR_DATABASE_URL from
// it); each line read from input stops or starts the API; what the demo
// says goes to out, the children's logs to logs.
func run(ctx context.Context, args, env []string, input io.Reader, out, logs io.Writer) error {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(logs)
	fs.StringVar(&o.bin, "bin", "bin", "directory holding the todo-api and replicache-sidecar binaries")
	fs.StringVar(&o.static, "static", "web/dist", "the built demo web app")
	fs.StringVar(&o.mapping, "mapping", "deploy/examples/todo/mapping.json", "mapping file")
	fs.StringVar(&o.host, "host", "127.0.0.1", "address to listen on")
	fs.IntVar(&o.port, "port", 8080, "sidecar public port: the URL to open (make demo PORT=…)")
	fs.IntVar(&o.adminPort, "admin-port", 9090, "sidecar admin port: metrics, health (make demo ADMIN_PORT=…)")
	fs.IntVar(&o.apiPort, "api-port", 3000, "todo-api port (make demo API_PORT=…)")
	checkPorts := fs.Bool("check-ports", false, "only check that the ports are free, and exit (make demo does, before it starts a database)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *checkPorts {
		return portsFree(o)
	}
	if lookup(env, "SIDECAR_DATABASE_URL") == "" {
		return errors.New("SIDECAR_DATABASE_URL is not set (`make demo` starts a throwaway Postgres)")
	}
	if _, err := os.Stat(filepath.Join(o.static, "index.html")); err != nil {
		return fmt.Errorf("the web app is not built (%w): run `make demo`", err)
	}
	if err := portsFree(o); err != nil {
		return err
	}
	stateDir, err := os.MkdirTemp("", "replicache-demo-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(stateDir) }()

	apiAddr := net.JoinHostPort(o.host, strconv.Itoa(o.apiPort))
	newAPI := func() *exec.Cmd {
		// The state file keeps the todos across a stop and start of the API.
		return command(logs, env, filepath.Join(o.bin, "todo-api"), "-addr", apiAddr, "-static", o.static,
			"-state", filepath.Join(stateDir, "todos.json"))
	}
	sidecar := command(logs, slices.Concat(env, []string{
		"SIDECAR_UPSTREAM_URL=http://" + apiAddr,
		"SIDECAR_MAPPING_FILE=" + o.mapping,
		"SIDECAR_LISTEN_ADDR=" + net.JoinHostPort(o.host, strconv.Itoa(o.port)),
		"SIDECAR_ADMIN_ADDR=" + net.JoinHostPort(o.host, strconv.Itoa(o.adminPort)),
		"SIDECAR_AUTH_PATH=/api/me",
		// The page's poke stream (EventSource) carries its token in a cookie.
		"SIDECAR_FORWARD_HEADERS=Authorization,Cookie",
		"SIDECAR_SHUTDOWN_TIMEOUT=5s",
	}), filepath.Join(o.bin, "replicache-sidecar"))

	// Read by the loop below; buffered for the reports that come after it
	// ends (the children stopped on the way out).
	exited := make(chan exit, 8)
	api, err := startReady(ctx, newAPI(), "http://"+apiAddr+"/healthz", exited)
	if err != nil {
		return quiet(ctx, err)
	}
	// Stopped in reverse order: the sidecar drains against a live API.
	defer func() { api.stop() }()
	sc, err := startReady(ctx, sidecar, "http://"+net.JoinHostPort(o.host, strconv.Itoa(o.adminPort))+"/readyz", exited)
	if err != nil {
		return quiet(ctx, err)
	}
	defer sc.stop()

	_, _ = fmt.Fprintf(out, `
replicache-sidecar demo is running.
  open     http://%[1]s:%[2]d/?user=alice  (a second user: http://%[1]s:%[2]d/?user=bob)
  offline  press Enter here to stop the API (todo-api, pid %[7]d), and keep editing in the page
           (do not reload it: the API serves it); Enter again starts it, and what you did syncs
  metrics  curl -s http://%[1]s:%[3]d/metrics | grep ^replicache_sidecar
  check    the mapping against the demo API, as alice, before any client syncs:
           SIDECAR_UPSTREAM_URL=http://%[4]s SIDECAR_MAPPING_FILE=%[5]s SIDECAR_AUTH_PATH=/api/me \
             %[6]s check --header 'Authorization: Bearer alice' --example createTodo='{"id":"t1","title":"try"}'
Ctrl-C stops everything and removes the throwaway database.

`, o.host, o.port, o.adminPort, apiAddr, o.mapping, filepath.Join(o.bin, "replicache-sidecar"), api.cmd.Process.Pid)

	lines := make(chan struct{})
	go func() {
		// Ends with the input (EOF: no terminal, nothing to toggle).
		s := bufio.NewScanner(input)
		for s.Scan() {
			select {
			case lines <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			_, _ = fmt.Fprintln(out, "\nstopping…")
			return nil
		case e := <-exited:
			if e.p == sc {
				return fmt.Errorf("replicache-sidecar %s (its log is above); the demo cannot go on without it", describe(e.err))
			}
			if e.p == api && !api.stopping {
				_, _ = fmt.Fprintf(out, "\ntodo-api %s. The sidecar keeps serving the page: keep editing; press Enter to start the API again.\n", describe(e.err))
			}
		case <-lines:
			if api.running() {
				api.stop()
				_, _ = fmt.Fprintln(out, "\nThe API is stopped. Keep editing: your changes wait in the page (in italics). Press Enter to start it again.")
				continue
			}
			next, err := startReady(ctx, newAPI(), "http://"+apiAddr+"/healthz", exited)
			if err != nil {
				// Another program may have taken the port meanwhile: say
				// so, and let the person try again.
				_, _ = fmt.Fprintf(out, "\nStarting the API again failed: %v. Press Enter to try again.\n", err)
				continue
			}
			api = next
			_, _ = fmt.Fprintf(out, "\nThe API is back (todo-api, pid %d): the waiting changes go through at the page's next push (Replicache retries with backoff, so within a minute at most).\n", api.cmd.Process.Pid)
		}
	}
}

// quiet is err, unless ctx ended (Ctrl-C while starting): then nothing
// went wrong.
func quiet(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// lookup returns the value of the variable k in env ("K=V" entries; the
// last one wins, as for a process).
func lookup(env []string, k string) string {
	v := ""
	for _, kv := range env {
		if name, val, ok := strings.Cut(kv, "="); ok && name == k {
			v = val
		}
	}
	return v
}

// portsFree checks that the demo's three ports can be listened on, before
// anything starts: a port another program holds fails the demo at once,
// naming the port and how to choose another (rather than a child process
// failing to listen, or another program answering its health check).
func portsFree(o options) error {
	ports := []struct {
		port       int
		what, flag string
		makeVar    string
	}{
		{o.port, "the page and the sidecar", "-port", "PORT"},
		{o.adminPort, "the sidecar's admin listener", "-admin-port", "ADMIN_PORT"},
		{o.apiPort, "the demo API", "-api-port", "API_PORT"},
	}
	var errs []error
	seen := map[int]string{}
	for _, p := range ports {
		if other, dup := seen[p.port]; dup {
			errs = append(errs, fmt.Errorf("port %d is given for both %s and %s: choose another with make demo %s=… (or %s)", p.port, other, p.what, p.makeVar, p.flag))
			continue
		}
		seen[p.port] = p.what
		ln, err := net.Listen("tcp", net.JoinHostPort(o.host, strconv.Itoa(p.port)))
		if err == nil {
			_ = ln.Close()
			continue
		}
		other := p.port + 1
		if errors.Is(err, syscall.EADDRINUSE) {
			errs = append(errs, fmt.Errorf("port %d (%s) is in use by another program: stop it, or choose another port: make demo %s=%d (bin/demo %s %d)",
				p.port, p.what, p.makeVar, other, p.flag, other))
		} else {
			errs = append(errs, fmt.Errorf("cannot listen on port %d (%s): %w; choose another port: make demo %s=%d (bin/demo %s %d)",
				p.port, p.what, err, p.makeVar, other, p.flag, other))
		}
	}
	return errors.Join(errs...)
}

// command is a child process of the demo, its output on logs.
func command(logs io.Writer, env []string, path string, args ...string) *exec.Cmd {
	c := exec.Command(path, args...)
	c.Stdout, c.Stderr = logs, logs
	c.Env = env
	// Own process group: Ctrl-C reaches the children only through us, in
	// order (sidecar first, so it drains against a live upstream).
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return c
}

// proc is a started child process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	// stopping: the demo asked it to stop, so its exit is no news. Only
	// the demo's own goroutine touches it.
	stopping bool
}

// exit is a child's exit: err is what Wait returned (nil: status 0).
type exit struct {
	p   *proc
	err error
}

// describe says how a process ended.
func describe(err error) string {
	if err == nil {
		return "exited (status 0)"
	}
	return "exited: " + err.Error()
}

// startReady starts c, reports its exit on exited, and waits until url
// answers healthy. A process that exits first, or is not healthy within
// readyTimeout, is an error naming it (and is stopped).
func startReady(ctx context.Context, c *exec.Cmd, url string, exited chan<- exit) (*proc, error) {
	name := filepath.Base(c.Path)
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{cmd: c, done: make(chan struct{})}
	var waitErr error
	go func() {
		waitErr = c.Wait()
		close(p.done)
		exited <- exit{p, waitErr}
	}()
	err := waitHealthy(ctx, url, p.done)
	select {
	case <-p.done:
		// Its exit was reported on exited too; drain that report, as it is
		// this error's news.
		p.stopping = true
		return nil, fmt.Errorf("%s %s before it was ready (its log is above)", name, describe(waitErr))
	default:
	}
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("%s did not become ready: %w", name, err)
	}
	return p, nil
}

// running reports whether the process has not exited.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop asks the process to drain and exit, and kills it after 10s.
func (p *proc) stop() {
	p.stopping = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitHealthy polls url until it answers healthy, done closes (the
// process exited: the caller says so), ctx ends or readyTimeout passes.
func waitHealthy(ctx context.Context, url string, done <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			// The sidecar is ready before its database is; the demo waits
			// until pushes and pulls are served too.
			if resp.StatusCode == http.StatusOK && !strings.Contains(string(b), `"database":"`) || strings.Contains(string(b), `"database":"up"`) {
				return nil
			}
			err = fmt.Errorf("answered %d %s", resp.StatusCode, b)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy after %s (last error: %w)", url, readyTimeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}
