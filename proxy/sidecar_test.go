package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestAdminEndpoints(t *testing.T) {
	h := newHarness(t, nil)
	inst := h.startUnmigrated()
	admin := httptest.NewServer(inst.sc.AdminHandler(inst.reg))
	defer admin.Close()
	get := func(path string) response { return do(t, mustRequest(t, http.MethodGet, admin.URL+path)) }

	if r := get("/healthz"); r.status != 200 {
		t.Errorf("/healthz = %d", r.status)
	}
	// Before migrations: alive, not ready, and pushes are refused cleanly.
	if r := get("/readyz"); r.status != 503 || !strings.Contains(r.str("reason"), "not migrated") {
		t.Errorf("/readyz before migration = %d %s, want 503", r.status, r.raw)
	}
	if r := inst.push(t, "alice", "g", create("c", 1, "a")); r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Errorf("push before migration = %d %s, want 503 with Retry-After", r.status, r.raw)
	}
	if err := inst.sc.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := get("/readyz"); r.status != 200 {
		t.Errorf("/readyz after migration = %d %s", r.status, r.raw)
	}
	inst.push(t, "alice", "g", create("c", 1, "a"), mut{"c", 2, "bogus", nil})
	r := get("/metrics")
	for _, want := range []string{
		`replicache_sidecar_mutations_total{mutator="createTodo",outcome="applied"} 1`,
		`replicache_sidecar_mutations_total{mutator="unmapped",outcome="rejected"} 1`,
		`replicache_sidecar_mutations_total{mutator="deleteTodo",outcome="transient"} 0`,
		`replicache_sidecar_requests_total{code="200",endpoint="push"}`,
		`replicache_sidecar_request_duration_seconds_bucket{endpoint="pull"`,
	} {
		if !strings.Contains(string(r.raw), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(string(r.raw), `mutator="bogus"`) {
		t.Error("/metrics has a label value from an unmapped mutator name")
	}
	// Draining: not ready, new pushes refused.
	inst.sc.Drain()
	if r := get("/readyz"); r.status != 503 || !strings.Contains(r.str("reason"), "shutting down") {
		t.Errorf("/readyz while draining = %d %s", r.status, r.raw)
	}
	if r := inst.push(t, "alice", "g", create("c", 3, "b")); r.status != 503 || r.str("error") != "ShuttingDown" {
		t.Errorf("push while draining = %d %s", r.status, r.raw)
	}
}

func TestPassThrough(t *testing.T) {
	h := newHarness(t, nil)
	sc := h.start()
	req, _ := http.NewRequest(http.MethodPut, sc.srv.URL+"/legacy/echo?x=1&y=%2F", strings.NewReader("raw body"))
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("Authorization", "Bearer alice")
	r := do(t, req)
	if r.status != http.StatusTeapot {
		t.Fatalf("pass-through status = %d %s, want the upstream's 418", r.status, r.raw)
	}
	hdr, _ := r.json["headers"].(map[string]any)
	for k, want := range map[string]any{"method": "PUT", "path": "/legacy/echo", "query": "x=1&y=%2F", "body": "raw body"} {
		if r.json[k] != want {
			t.Errorf("upstream saw %s = %v, want %v", k, r.json[k], want)
		}
	}
	for k, want := range map[string]string{"X-Custom": "kept", "Authorization": "Bearer alice", "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http"} {
		if hdr[k] != want {
			t.Errorf("upstream saw header %s = %v, want %s", k, hdr[k], want)
		}
	}
	if hdr["X-Forwarded-Host"] != strings.TrimPrefix(sc.srv.URL, "http://") {
		t.Errorf("X-Forwarded-Host = %v", hdr["X-Forwarded-Host"])
	}
	// Not push or pull: even a GET of a sub-path goes through.
	if r := do(t, mustRequest(t, http.MethodGet, sc.srv.URL+"/replicache/push/x")); r.status != http.StatusUnauthorized {
		t.Errorf("GET /replicache/push/x = %d, want the upstream's answer (401)", r.status)
	}
}

func TestPassThroughStreamsAndFailsCleanly(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: second\n\n")
	}))
	defer up.Close()
	h := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": up.URL})
	sc := h.start()
	resp, err := http.Get(sc.srv.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		got <- line
	}()
	select {
	case line := <-got:
		if line != "data: first\n" {
			t.Errorf("first line = %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first event did not arrive before the upstream finished: not streamed")
	}
	close(release)
	_, _ = io.Copy(io.Discard, resp.Body)

	up.Close()
	r := do(t, mustRequest(t, http.MethodGet, sc.srv.URL+"/anything"))
	if r.status != http.StatusBadGateway || r.str("error") != "BadGateway" {
		t.Errorf("pass-through to a dead upstream = %d %s, want 502 JSON", r.status, r.raw)
	}
}

func TestIdentity(t *testing.T) {
	t.Run("single tenant", func(t *testing.T) {
		h := newHarness(t, map[string]string{"SIDECAR_AUTH_PATH": ""})
		sc := h.start()
		// The legacy API still wants a bearer token; the sidecar does not care who.
		if r := sc.push(t, "alice", "g", create("c", 1, "a")); r.status != 200 {
			t.Fatalf("push = %d %s", r.status, r.raw)
		}
		if r, p := sc.pull(t, "bob", "g", nil); r.status != 200 || p.LastMutationIDChanges["c"] != 1 {
			t.Fatalf("pull by another token in single-tenant mode = %d %s", r.status, r.raw)
		}
	})
	t.Run("trusted header", func(t *testing.T) {
		h := newHarness(t, map[string]string{"SIDECAR_AUTH_PATH": "", "SIDECAR_USER_ID_HEADER": "X-User-Id"})
		sc := h.start()
		send := func(user string) response {
			req, _ := http.NewRequest(http.MethodPost, sc.srv.URL+"/replicache/pull", strings.NewReader(`{"pullVersion":1,"clientGroupID":"g","cookie":null}`))
			req.Header.Set("Authorization", "Bearer alice")
			if user != "" {
				req.Header.Set("X-User-Id", user)
			}
			return do(t, req)
		}
		if r := send(""); r.status != 401 || !strings.Contains(r.str("message"), "X-User-Id") {
			t.Errorf("no header = %d %s, want 401 naming the header", r.status, r.raw)
		}
		if r := send("u1"); r.status != 200 {
			t.Errorf("u1 = %d %s", r.status, r.raw)
		}
		if r := send("u2"); r.status != 403 {
			t.Errorf("u2 on u1's group = %d %s, want 403", r.status, r.raw)
		}
	})
	t.Run("auth field: a dotted path to a number", func(t *testing.T) {
		h := newHarness(t, map[string]string{"SIDECAR_AUTH_PATH": "/whoami", "SIDECAR_AUTH_USER_FIELD": "user.id"})
		h.up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
			if r.URL.Path != "/whoami" {
				return false
			}
			if r.Header.Get("Authorization") == "Bearer alice" {
				_, _ = io.WriteString(w, `{"user":{"id":42}}`)
			} else {
				_, _ = io.WriteString(w, `{"user":{"id":7}}`)
			}
			return true
		})
		sc := h.start()
		if r := sc.push(t, "alice", "g", create("c", 1, "a")); r.status != 200 {
			t.Fatalf("push = %d %s", r.status, r.raw)
		}
		var owner string
		_ = sc.pool.QueryRow(context.Background(), "SELECT user_id FROM "+pgx.Identifier{h.schema}.Sanitize()+".client_groups WHERE id = 'g'").Scan(&owner)
		if owner != "42" {
			t.Errorf("group owner = %q, want 42 (user.id of the auth answer)", owner)
		}
		if r, _ := sc.pull(t, "bob", "g", nil); r.status != 403 {
			t.Errorf("another user (7) pulling 42's group = %d, want 403", r.status)
		}
	})
	t.Run("auth path", func(t *testing.T) {
		h := newHarness(t, nil)
		sc := h.start()
		if r := sc.post(t, "/replicache/pull", "", pullBody("g", nil)); r.status != 401 {
			t.Errorf("no credentials = %d %s, want 401", r.status, r.raw)
		}
		h.up.setFault(func(r *http.Request) int {
			if r.URL.Path == "/api/me" {
				return 500
			}
			return 0
		})
		if r, _ := sc.pull(t, "alice", "g", nil); r.status != 502 || !strings.Contains(r.str("message"), "/api/me answered 500") {
			t.Errorf("broken auth endpoint = %d %s, want 502", r.status, r.raw)
		}
	})
}

// TestLogsCarryContextNotCredentials: logs name the request, client group,
// mutator and outcome, and never contain credentials, even at debug level.
func TestLogsCarryContextNotCredentials(t *testing.T) {
	const token, cookie = "Bearer alice-SECRET-token", "session=COOKIE-SECRET"
	h := newHarness(t, map[string]string{"SIDECAR_AUTH_PATH": "", "SIDECAR_FORWARD_HEADERS": "Authorization,Cookie"})
	h.up.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		r.Header.Set("Authorization", "Bearer alice") // the legacy API knows alice by her real token
		return false
	})
	sc := h.start()
	send := func(path, body string) {
		req := withHeaders(t, http.MethodPost, sc.srv.URL+path, body, "Authorization", token, "Cookie", cookie, "X-Replicache-RequestID", "req-42")
		do(t, req)
	}
	send("/replicache/push", `{"pushVersion":1,"clientGroupID":"g-log","mutations":[{"id":1,"clientID":"c","name":"createTodo","args":{"id":"a","title":"x"}},{"id":2,"clientID":"c","name":"createTodo","args":{"id":"b"}}]}`)
	send("/replicache/pull", `{"pullVersion":1,"clientGroupID":"g-log","cookie":null}`)
	send("/replicache/push", `{"pushVersion":1,"clientGroupID":"g-log","mutations":[{"id":9,"clientID":"c","name":"createTodo","args":{}}]}`)
	h.up.srv.Close()
	do(t, withHeaders(t, http.MethodGet, sc.srv.URL+"/page", "", "Authorization", token, "Cookie", cookie))
	logs := h.logs.String()
	for _, secret := range []string{"SECRET"} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain a credential:\n%s", logs)
		}
	}
	for _, want := range []string{`"request_id":"req-42"`, `"client_group":"g-log"`, `"mutator":"createTodo"`, `"outcome":"rejected"`, `"outcome":"applied"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
}
