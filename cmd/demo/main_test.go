package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// syncBuffer is an io.Writer the test reads while run writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freePorts returns n distinct ports nothing listens on now.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = ln.Close() }() // held until all are chosen: distinct
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// staticDir is a built web app, as far as the demo checks.
func staticDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("<!doctype html><title>demo</title>"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestBusyPortFailsAtOnce: a port another program holds (before: the demo
// waited 30 s and blamed /healthz, or took another program's health answer
// for its own) ends the demo before anything starts, naming the port, what
// it is for, and the Make variable and flag that choose another. The bin
// directory is empty: starting anything would fail differently.
func TestBusyPortFailsAtOnce(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = busy.Close() }) // subtests run after this function returns
	held := busy.Addr().(*net.TCPAddr).Port
	fp := freePorts(t, 3)
	free, free1, free2 := fp[0], fp[1], fp[2]
	for _, tc := range []struct {
		name  string
		ports []string
		want  []string
	}{
		// The demo API's port: the one users meet (3000 is a common one).
		{"api port busy", []string{"-port", fmt.Sprint(free), "-admin-port", fmt.Sprint(free1), "-api-port", fmt.Sprint(held)},
			[]string{fmt.Sprintf("port %d (the demo API) is in use", held), "make demo API_PORT=", "-api-port"}},
		// The page's port.
		{"page port busy", []string{"-port", fmt.Sprint(held), "-admin-port", fmt.Sprint(free1), "-api-port", fmt.Sprint(free)},
			[]string{fmt.Sprintf("port %d (the page and the sidecar) is in use", held), "make demo PORT="}},
		// One port given twice is refused before anything listens.
		{"same port twice", []string{"-port", fmt.Sprint(free), "-admin-port", fmt.Sprint(free), "-api-port", fmt.Sprint(free1)},
			[]string{fmt.Sprintf("port %d is given for both", free), "ADMIN_PORT"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"-bin", t.TempDir(), "-static", staticDir(t), "-host", "127.0.0.1"}, tc.ports...)
			var out, logs syncBuffer
			err := run(context.Background(), args, []string{"SIDECAR_DATABASE_URL=postgres://unused"}, strings.NewReader(""), &out, &logs)
			if err == nil {
				t.Fatal("the demo started with a busy port")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "starting") || strings.Contains(err.Error(), "healthz") {
				t.Errorf("error %q: the demo tried to start a process", err)
			}
			// make demo asks first, before it starts a database: the same
			// answer, with nothing else needed.
			err = run(context.Background(), append([]string{"-check-ports"}, tc.ports...), nil, strings.NewReader(""), &out, &logs)
			if err == nil || !strings.Contains(err.Error(), tc.want[0]) {
				t.Errorf("-check-ports = %v, want an error saying %q", err, tc.want[0])
			}
		})
	}
	// Free ports: -check-ports says nothing and starts nothing.
	if err := run(context.Background(), []string{"-check-ports", "-port", fmt.Sprint(free), "-admin-port", fmt.Sprint(free1), "-api-port", fmt.Sprint(free2)},
		nil, strings.NewReader(""), io.Discard, io.Discard); err != nil {
		t.Errorf("-check-ports with free ports = %v", err)
	}
}

// buildBinaries builds todo-api and replicache-sidecar into a directory.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, c := range []string{"todo-api", "replicache-sidecar"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../"+c).CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", c, err, out)
		}
	}
	return dir
}

// TestDemoSurvivesTheAPIStopping: the README's "stop the API and keep
// editing". Enter stops the API; the sidecar keeps serving (pushes answer
// 503 and the mutation waits); Enter starts it again with its data, and
// the waiting mutation goes through. The API killed from elsewhere is
// reported and the demo goes on (before: the demo ended with
// "todo-api: %!w(<nil>)", taking the sidecar with it). Ctrl-C ends it
// cleanly.
func TestDemoSurvivesTheAPIStopping(t *testing.T) {
	db := proxytest.DatabaseURL(t)
	bin := buildBinaries(t)
	schema := "demo_test_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Cleanup(func() { proxytest.DropSchema(t, db, schema) })
	fp := freePorts(t, 3)
	port, admin, apiPort := fp[0], fp[1], fp[2]
	args := []string{"-bin", bin, "-static", staticDir(t), "-mapping", "../../deploy/examples/todo/mapping.json",
		"-port", fmt.Sprint(port), "-admin-port", fmt.Sprint(admin), "-api-port", fmt.Sprint(apiPort)}
	env := append(os.Environ(), "SIDECAR_DATABASE_URL="+db, "SIDECAR_DB_SCHEMA="+schema)
	inR, inW := io.Pipe()
	defer func() { _ = inW.Close() }()
	var out, logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, env, inR, &out, &logs) }()
	waitOut := func(what string) {
		t.Helper()
		deadline := time.Now().Add(40 * time.Second)
		for !strings.Contains(out.String(), what) {
			select {
			case err := <-done:
				t.Fatalf("the demo ended (%v) before saying %q\nout:\n%s\nlogs:\n%s", err, what, out.String(), logs.String())
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("the demo never said %q\nout:\n%s\nlogs:\n%s", what, out.String(), logs.String())
			}
		}
	}
	enter := func() {
		t.Helper()
		if _, err := io.WriteString(inW, "\n"); err != nil {
			t.Fatal(err)
		}
	}
	public := fmt.Sprintf("http://127.0.0.1:%d", port)
	n := int64(0)
	push := func(id string) int {
		t.Helper()
		n++
		body := fmt.Sprintf(`{"pushVersion":1,"profileID":"p","clientGroupID":"g","schemaVersion":"","mutations":[{"id":%d,"clientID":"c","name":"createTodo","args":{"id":%q,"title":%q},"timestamp":0}]}`, n, id, id)
		req, _ := http.NewRequest(http.MethodPost, public+"/replicache/push", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer alice")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("push %s: %v", id, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			n-- // not consumed: the client sends it again
		}
		return resp.StatusCode
	}
	todos := func() string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, public+"/api/todos", nil)
		req.Header.Set("Authorization", "Bearer alice")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	sidecarReady := func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", admin))
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}

	waitOut("demo is running")
	if code := push("before"); code != http.StatusOK {
		t.Fatalf("push with the API up = %d", code)
	}

	enter()
	waitOut("The API is stopped")
	if code := push("while-away"); code != http.StatusServiceUnavailable {
		t.Errorf("push with the API stopped = %d, want 503 (the mutation waits)", code)
	}
	if !sidecarReady() {
		t.Error("the sidecar is not ready while the API is stopped")
	}

	enter()
	waitOut("The API is back")
	proxytest.WaitFor(t, "the waiting mutation to go through", func() bool { return push("while-away") == http.StatusOK })
	if got := todos(); !strings.Contains(got, `"before"`) || !strings.Contains(got, `"while-away"`) {
		t.Errorf("after the restart the API holds %s; want both todos (its data kept)", got)
	}

	// Killed from another terminal: reported, and the demo goes on.
	m := regexp.MustCompile(`The API is back \(todo-api, pid (\d+)\)`).FindStringSubmatch(out.String())
	pid, _ := strconv.Atoi(m[1])
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitOut("todo-api exited (status 0). The sidecar keeps serving")
	if !sidecarReady() {
		t.Error("the sidecar is not ready after the API was killed")
	}
	enter()
	proxytest.WaitFor(t, "the API started a second time", func() bool { return strings.Count(out.String(), "The API is back") == 2 })
	if code := push("after"); code != http.StatusOK {
		t.Errorf("push after the second start = %d", code)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after Ctrl-C = %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the demo did not stop")
	}
	if strings.Contains(out.String()+logs.String(), "%!") {
		t.Errorf("a formatting error in the demo's output:\n%s", out.String())
	}
}
