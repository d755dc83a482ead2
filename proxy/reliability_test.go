package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestOutageNeverAbandonsEdits (reliability, defect 2; security round 3,
// the 429 row): with the give-up valve set tight (3 answers over 300 ms),
// an API that answers every write with an outage's status for well past
// the valve's limits loses no edit: once it recovers, the queued edit is
// applied, and nothing was recorded as rejected. Before: the valve counted
// every answered retryable status and abandoned the edit. The same holds
// for a 500 that every user's writes get (the API's own database is down):
// seen across users, it is not the mutation's own failure.
func TestOutageNeverAbandonsEdits(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		status int
		users  []string // who keeps pushing during the outage
	}{
		{"503 to every write (maintenance mode)", http.StatusServiceUnavailable, []string{"alice"}},
		{"429 to every write (a rate limit per address)", http.StatusTooManyRequests, []string{"alice"}},
		{"500 to every user's writes", http.StatusInternalServerError, []string{"alice", "bob"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, map[string]string{
				"SIDECAR_GIVE_UP_ATTEMPTS": "3", "SIDECAR_GIVE_UP_AFTER": "300ms",
				"SIDECAR_BREAKER_FAILURES": "0", // every answer reaches the valve
			})
			var outage atomic.Bool
			outage.Store(true)
			h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodPost && outage.Load() {
					w.WriteHeader(tc.status)
					return true
				}
				return false
			})
			sc := h.start()
			pushes := 0
			for end := time.Now().Add(time.Second); time.Now().Before(end); pushes++ {
				for _, u := range tc.users {
					if r := sc.push(t, u, "g-"+u, create("c-"+u, 1, "edit-"+u)); r.status != http.StatusServiceUnavailable {
						t.Fatalf("push during the outage = %d %s; want 503, the edit kept", r.status, r.raw)
					}
				}
				time.Sleep(50 * time.Millisecond)
			}
			outage.Store(false)
			for _, u := range tc.users {
				r := sc.push(t, u, "g-"+u, create("c-"+u, 1, "edit-"+u))
				if r.status != 200 || r.json["applied"] != 1.0 {
					t.Errorf("%s's push after the outage (%d tries over 1 s) = %d %s; want the edit applied", u, pushes, r.status, r.raw)
				}
			}
			var rejected int
			q := "SELECT count(*) FROM " + pgx.Identifier{h.schema}.Sanitize() + ".mutation_rejections"
			if err := sc.pool.QueryRow(context.Background(), q).Scan(&rejected); err != nil || rejected != 0 {
				t.Errorf("%d rejection records (%v); an outage must abandon nothing", rejected, err)
			}
		})
	}
}

// restartableAPI is an API whose listener can be stopped and started again
// on the same address, as a restarting process is: while it is down,
// connections are refused. It serves a few small view sources, each in a
// few milliseconds as real APIs do, and an identity endpoint.
type restartableAPI struct {
	t    *testing.T
	addr string
	mu   sync.Mutex
	srv  *http.Server
}

func newRestartableAPI(t *testing.T) *restartableAPI {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &restartableAPI{t: t, addr: ln.Addr().String()}
	a.serve(ln)
	t.Cleanup(a.stop)
	return a
}

func (a *restartableAPI) serve(ln net.Listener) {
	mux := http.NewServeMux()
	for _, p := range []string{"/a", "/b", "/c"} {
		mux.HandleFunc("GET "+p, func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(5 * time.Millisecond) // as a real API (json-server) takes
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `[{"id":"1"},{"id":"2"}]`)
		})
	}
	mux.HandleFunc("GET /me", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"id":"alice"}`)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: time.Second}
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// stop closes the listener and every connection: calls are refused.
func (a *restartableAPI) stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	_ = a.srv.Close()
}

// start listens again on the same address.
func (a *restartableAPI) start() {
	var ln net.Listener
	var err error
	for range 50 { // the port may take a moment to be free again
		if ln, err = net.Listen("tcp", a.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		a.t.Fatalf("restarting the API on %s: %v", a.addr, err)
	}
	a.serve(ln)
}

// TestPullsRecoverFromAnAPIRestart (reliability, defect 1): the API stops
// for 1.5 s while a client pulls back to back, and starts again; the first
// pull answered 200 comes within about a second (one open period of the
// view breaker), single-tenant and with an auth call, with two and three
// view sources. Before: with several sources the breaker's one half-open
// trial was cancelled by its sibling sources, refused as too many trials,
// and pulls stayed refused for 9 to 40 s.
func TestPullsRecoverFromAnAPIRestart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		sources []string
		auth    bool
	}{
		{"single-tenant, two sources", []string{"/a", "/b"}, false},
		{"single-tenant, three sources", []string{"/a", "/b", "/c"}, false},
		{"with an auth call, two sources", []string{"/a", "/b"}, true},
		{"with an auth call, three sources", []string{"/a", "/b", "/c"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := newRestartableAPI(t)
			var srcs []string
			for _, p := range tc.sources {
				srcs = append(srcs, fmt.Sprintf(`{"path": %q, "key": "%s/{id}"}`, p, strings.TrimPrefix(p, "/")))
			}
			mappingFile := filepath.Join(t.TempDir(), "mapping.json")
			if err := os.WriteFile(mappingFile, []byte(`{"clientView": [`+strings.Join(srcs, ",")+`]}`), 0o600); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{"SIDECAR_UPSTREAM_URL": "http://" + api.addr, "SIDECAR_MAPPING_FILE": mappingFile, "SIDECAR_AUTH_PATH": ""}
			if tc.auth {
				env["SIDECAR_AUTH_PATH"] = "/me"
			}
			sc := newHarness(t, env).start()
			pull := func() int { r, _ := sc.pull(t, "alice", "g", nil); return r.status }
			if s := pull(); s != 200 {
				t.Fatalf("pull before the restart = %d", s)
			}
			api.stop()
			for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
				if s := pull(); s == 200 {
					t.Fatal("a pull answered 200 while the API was down")
				}
				time.Sleep(20 * time.Millisecond)
			}
			api.start()
			back := time.Now()
			for pull() != 200 {
				if time.Since(back) > 10*time.Second {
					t.Fatal("pulls still refused 10 s after the API came back")
				}
				time.Sleep(20 * time.Millisecond)
			}
			took := time.Since(back)
			t.Logf("first pull answered 200 %s after the API was back", took.Round(time.Millisecond))
			// The longest open period is 1 s (SIDECAR_BREAKER_OPEN_TIMEOUT);
			// the rest is room for a loaded machine.
			if took > 2*time.Second {
				t.Errorf("the first pull answered 200 only %s after the API was back; want within about a second", took)
			}
		})
	}
}
