// Command demo runs the product end to end on one machine: the demo legacy
// service (todo-api, serving the demo web app) and replicache-sidecar in
// front of it, with the example mapping. It needs SIDECAR_DATABASE_URL; run
// it as `make demo`, which starts a throwaway Postgres around it. Ctrl-C
// stops both processes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	bin := flag.String("bin", "bin", "directory holding the todo-api and replicache-sidecar binaries")
	static := flag.String("static", "web/dist", "the built demo web app")
	mapping := flag.String("mapping", "deploy/examples/todo/mapping.json", "mapping file")
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 8080, "sidecar public port (the URL to open)")
	adminPort := flag.Int("admin-port", 9090, "sidecar admin port")
	apiPort := flag.Int("api-port", 3000, "todo-api port")
	flag.Parse()
	db := os.Getenv("SIDECAR_DATABASE_URL")
	if db == "" {
		return errors.New("SIDECAR_DATABASE_URL is not set (`make demo` starts a throwaway Postgres)")
	}
	if _, err := os.Stat(filepath.Join(*static, "index.html")); err != nil {
		return fmt.Errorf("the web app is not built (%w): run `make demo`", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	apiAddr := fmt.Sprintf("%s:%d", *host, *apiPort)
	api := command(filepath.Join(*bin, "todo-api"), "-addr", apiAddr, "-static", *static)
	sidecar := command(filepath.Join(*bin, "replicache-sidecar"))
	sidecar.Env = append(os.Environ(),
		"SIDECAR_UPSTREAM_URL=http://"+apiAddr,
		"SIDECAR_MAPPING_FILE="+*mapping,
		fmt.Sprintf("SIDECAR_LISTEN_ADDR=%s:%d", *host, *port),
		fmt.Sprintf("SIDECAR_ADMIN_ADDR=%s:%d", *host, *adminPort),
		"SIDECAR_AUTH_PATH=/api/me",
		// The page's poke stream (EventSource) carries its token in a cookie.
		"SIDECAR_FORWARD_HEADERS=Authorization,Cookie",
		"SIDECAR_SHUTDOWN_TIMEOUT=5s",
	)
	var started []*proc
	defer func() {
		for i := len(started) - 1; i >= 0; i-- {
			started[i].stop()
		}
	}()
	exited := make(chan error, 2)
	for _, c := range []struct {
		cmd   *exec.Cmd
		ready string
	}{
		{api, "http://" + apiAddr + "/healthz"},
		{sidecar, fmt.Sprintf("http://%s:%d/readyz", *host, *adminPort)},
	} {
		p, err := start(c.cmd, exited)
		if err != nil {
			return fmt.Errorf("starting %s: %w", c.cmd.Path, err)
		}
		started = append(started, p)
		if err := waitHealthy(ctx, c.ready); err != nil {
			return fmt.Errorf("%s did not become ready: %w", filepath.Base(c.cmd.Path), err)
		}
	}
	fmt.Printf(`
replicache-sidecar demo is running.
  open     http://%[1]s:%[2]d/?user=alice  (a second user: http://%[1]s:%[2]d/?user=bob)
  metrics  curl -s http://%[1]s:%[3]d/metrics | grep ^replicache_sidecar
  check    the mapping against the demo API, as alice, before any client syncs:
           SIDECAR_UPSTREAM_URL=http://%[4]s SIDECAR_MAPPING_FILE=%[5]s SIDECAR_AUTH_PATH=/api/me \
             %[6]s check --header 'Authorization: Bearer alice' --example createTodo='{"id":"t1","title":"try"}'
Ctrl-C stops everything and removes the throwaway database.

`, *host, *port, *adminPort, apiAddr, *mapping, filepath.Join(*bin, "replicache-sidecar"))
	select {
	case <-ctx.Done():
		fmt.Println("\nstopping…")
		return nil
	case err := <-exited:
		return fmt.Errorf("a demo process exited: %w", err)
	}
}

func command(path string, args ...string) *exec.Cmd {
	c := exec.Command(path, args...)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	// Own process group: Ctrl-C reaches the children only through us, in
	// order (sidecar first, so it drains against a live upstream).
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return c
}

// proc is a started child process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// start starts c and reports its exit on exited.
func start(c *exec.Cmd, exited chan<- error) (*proc, error) {
	if err := c.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: c, done: make(chan struct{})}
	go func() {
		err := c.Wait()
		close(p.done)
		exited <- fmt.Errorf("%s: %w", filepath.Base(c.Path), err)
	}()
	return p, nil
}

// stop asks the process to drain and exit, and kills it after 10s.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func waitHealthy(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
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
			return fmt.Errorf("%s not healthy after 30s (last error: %w)", url, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
