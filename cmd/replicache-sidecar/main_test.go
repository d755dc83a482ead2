package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/poke"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

func TestRunRefusesBadConfigWithEveryProblem(t *testing.T) {
	err := run(context.Background(), map[string]string{"SIDECAR_UPSTREAM_TIMEOUT": "x"}, io.Discard, net.Listen)
	if err == nil {
		t.Fatal("run started without configuration")
	}
	for _, want := range []string{"SIDECAR_UPSTREAM_URL", "SIDECAR_DATABASE_URL", "SIDECAR_MAPPING_FILE", "SIDECAR_UPSTREAM_TIMEOUT"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %s:\n%v", want, err)
		}
	}
}

// logSink collects the JSON log lines run writes.
type logSink struct {
	mu    sync.Mutex
	lines []map[string]any
	buf   []byte
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = append(s.buf, p...)
	for {
		i := strings.IndexByte(string(s.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		var m map[string]any
		_ = json.Unmarshal(s.buf[:i], &m)
		s.lines = append(s.lines, m)
		s.buf = s.buf[i+1:]
	}
}

func (s *logSink) find(msg string) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines {
		if l["msg"] == msg {
			return l
		}
	}
	return nil
}

// TestRunServesAndDrains starts the whole binary's run loop, syncs through
// it, and shuts it down while a slow push is in flight: the push finishes
// and is recorded before run returns.
func TestRunServesAndDrains(t *testing.T) {
	dbURL := proxytest.DatabaseURL(t)
	var slowSeen sync.WaitGroup
	slowSeen.Add(1)
	var applied sync.Map
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			var args struct{ N int } // which mutation: keys are opaque
			_ = json.NewDecoder(r.Body).Decode(&args)
			if args.N == 2 {
				slowSeen.Done()
				time.Sleep(500 * time.Millisecond)
			}
			applied.Store(fmt.Sprint("c:", args.N), true)
			w.WriteHeader(http.StatusCreated)
			return
		}
		_, _ = io.WriteString(w, `[]`)
	}))
	defer up.Close()
	mapping := filepath.Join(t.TempDir(), "m.json")
	_ = os.WriteFile(mapping, []byte(`{"mutators":{"m":{"method":"POST","path":"/m"}},"clientView":[{"path":"/items","key":"i/{id}"}]}`), 0o600)
	schema := "run_test_" + strings.ReplaceAll(time.Now().Format("150405.000000"), ".", "")
	env := map[string]string{
		"SIDECAR_UPSTREAM_URL": up.URL, "SIDECAR_DATABASE_URL": dbURL, "SIDECAR_MAPPING_FILE": mapping,
		"SIDECAR_LISTEN_ADDR": "127.0.0.1:0", "SIDECAR_ADMIN_ADDR": "127.0.0.1:0", "SIDECAR_DB_SCHEMA": schema,
		"SIDECAR_SHUTDOWN_TIMEOUT": "5s", "SIDECAR_DRAIN_DELAY": "300ms",
	}
	// Another replica, as far as pokes go: a listener on the schema's
	// channel, counting announcements.
	lc, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lc.Close(context.Background()) }()
	if _, err := lc.Exec(context.Background(), "LISTEN "+pgx.Identifier{poke.Channel(schema)}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	var announced atomic.Int32
	lctx, stopListening := context.WithCancel(context.Background())
	listened := make(chan struct{})
	defer func() { stopListening(); <-listened }()
	go func() {
		defer close(listened)
		for {
			if _, err := lc.WaitForNotification(lctx); err != nil {
				return
			}
			announced.Add(1)
		}
	}()

	logs := &logSink{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, env, logs, net.Listen) }()

	var public, admin string
	proxytest.WaitFor(t, "the listening log line", func() bool {
		l := logs.find("listening")
		if l == nil {
			return false
		}
		public, admin = "http://"+l["public"].(string), "http://"+l["admin"].(string)
		return true
	})
	proxytest.WaitFor(t, "readiness, with the database up", func() bool {
		resp, err := http.Get(admin + "/readyz")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode == 200 && strings.Contains(string(b), `"database":"up"`)
	})
	t.Cleanup(func() { proxytest.DropSchema(t, dbURL, schema) })

	push := func(ids ...int) (*http.Response, error) {
		var ms []string
		for _, id := range ids {
			ms = append(ms, `{"id":`+itoa(id)+`,"clientID":"c","name":"m","args":{"n":`+itoa(id)+`}}`)
		}
		return http.Post(public+"/replicache/push", "application/json",
			strings.NewReader(`{"pushVersion":1,"clientGroupID":"g","mutations":[`+strings.Join(ms, ",")+`]}`))
	}
	resp, err := push(1)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("push: %v %v", err, resp)
	}
	_ = resp.Body.Close()
	proxytest.WaitFor(t, "the push's poke announced", func() bool { return announced.Load() == 1 })

	// A slow push is in flight when the signal arrives.
	inflight := make(chan int, 1)
	go func() {
		resp, err := push(2)
		if err != nil {
			inflight <- -1
			return
		}
		_ = resp.Body.Close()
		inflight <- resp.StatusCode
	}()
	slowSeen.Wait()
	cancel()
	proxytest.WaitFor(t, "readiness to turn false", func() bool {
		resp, err := http.Get(admin + "/readyz")
		if err != nil {
			return true // already closed
		}
		_ = resp.Body.Close()
		return resp.StatusCode == 503
	})
	// While draining, new pushes are refused with 503 (the client retries
	// elsewhere) until the listener closes.
	if resp, err := push(3); err == nil {
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("a new push while draining = %d, want 503", resp.StatusCode)
		}
		_ = resp.Body.Close()
	}
	if code := <-inflight; code != 200 {
		t.Errorf("in-flight push answered %d during shutdown, want 200", code)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after shutdown")
	}
	if _, ok := applied.Load("c:2"); !ok {
		t.Error("the in-flight mutation never reached the upstream")
	}
	// Its poke still reached the other replicas.
	proxytest.WaitFor(t, "the in-flight push's poke announced", func() bool { return announced.Load() == 2 })
	if logs.find("stopped") == nil {
		t.Error("no 'stopped' log line")
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// failingListener accepts connections until failed is closed, then fails
// Accept the way a broken socket does (not a temporary error).
type failingListener struct {
	net.Listener
	failed chan struct{}
}

func (l *failingListener) Accept() (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := l.Listener.Accept()
		got <- result{c, err}
	}()
	select {
	case r := <-got:
		return r.c, r.err
	case <-l.failed:
		return nil, errors.New("accept: socket is broken")
	}
}

// TestRunFailsWhenAServerStops: a server whose Serve returns while the
// process is running makes run drain, join both servers and return an
// error naming it, so the process exits non-zero; before, it exited 0.
func TestRunFailsWhenAServerStops(t *testing.T) {
	mapping := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(mapping, []byte(`{"mutators":{"m":{"method":"POST","path":"/m"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"SIDECAR_UPSTREAM_URL": "http://127.0.0.1:9", "SIDECAR_MAPPING_FILE": mapping,
		// Never reached: the database is not needed to serve or to fail.
		"SIDECAR_DATABASE_URL": "postgres://sidecar@127.0.0.1:9/none?connect_timeout=1",
		"SIDECAR_LISTEN_ADDR":  "127.0.0.1:0", "SIDECAR_ADMIN_ADDR": "localhost:0", "SIDECAR_DRAIN_DELAY": "0s",
	}
	broken := make(chan struct{})
	listen := func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err != nil || addr != env["SIDECAR_ADMIN_ADDR"] {
			return ln, err
		}
		return &failingListener{Listener: ln, failed: broken}, nil
	}
	logs := &logSink{}
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), env, logs, listen) }()
	proxytest.WaitFor(t, "the listening log line", func() bool { return logs.find("listening") != nil })
	close(broken)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "admin server stopped") || !strings.Contains(err.Error(), "socket is broken") {
			t.Fatalf("run = %v; want an error naming the admin server and its cause", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run kept going after its admin server stopped")
	}
}

// TestStartWarnsWhenEveryCallerIsOneUser: with neither SIDECAR_AUTH_PATH
// nor SIDECAR_USER_ID_HEADER the sidecar cannot tell users apart; it says
// so at start, at warn level, naming both settings, and says nothing of
// the kind when either is set.
func TestStartWarnsWhenEveryCallerIsOneUser(t *testing.T) {
	mapping := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(mapping, []byte(`{"mutators":{"m":{"method":"POST","path":"/m"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	const warning = "every caller is one user"
	for _, tc := range []struct {
		name string
		env  map[string]string
		warn bool
	}{
		{"neither setting", nil, true},
		{"SIDECAR_AUTH_PATH", map[string]string{"SIDECAR_AUTH_PATH": "/api/me"}, false},
		{"SIDECAR_USER_ID_HEADER", map[string]string{"SIDECAR_USER_ID_HEADER": "X-User"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{
				"SIDECAR_UPSTREAM_URL": "http://127.0.0.1:9", "SIDECAR_MAPPING_FILE": mapping,
				// Never reached: serving starts without the database.
				"SIDECAR_DATABASE_URL": "postgres://sidecar@127.0.0.1:9/none?connect_timeout=1",
				"SIDECAR_LISTEN_ADDR":  "127.0.0.1:0", "SIDECAR_ADMIN_ADDR": "127.0.0.1:0", "SIDECAR_DRAIN_DELAY": "0s",
			}
			for k, v := range tc.env {
				env[k] = v
			}
			logs := &logSink{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- run(ctx, env, logs, net.Listen) }()
			// The warning comes before the listening line.
			proxytest.WaitFor(t, "the listening log line", func() bool { return logs.find("listening") != nil })
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run = %v after a clean stop", err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("run did not return")
			}
			var found map[string]any
			logs.mu.Lock()
			for _, l := range logs.lines {
				if msg, _ := l["msg"].(string); strings.HasPrefix(msg, warning) {
					found = l
				}
			}
			logs.mu.Unlock()
			switch {
			case tc.warn && found == nil:
				t.Error("no warning that every caller is one user")
			case tc.warn:
				msg := found["msg"].(string)
				if found["level"] != "WARN" || !strings.Contains(msg, "SIDECAR_AUTH_PATH") || !strings.Contains(msg, "SIDECAR_USER_ID_HEADER") {
					t.Errorf("warning %v: want level WARN naming both settings", found)
				}
			case found != nil:
				t.Errorf("warned %q although %v is set", found["msg"], tc.env)
			}
		})
	}
}
