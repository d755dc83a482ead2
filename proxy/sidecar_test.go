package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAdminEndpoints(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	inst := h.startUnmigrated()
	admin := httptest.NewServer(inst.sc.AdminHandler(inst.reg))
	defer admin.Close()
	get := func(path string) response { return do(t, mustRequest(t, http.MethodGet, admin.URL+path)) }

	if r := get("/healthz"); r.status != 200 {
		t.Errorf("/healthz = %d", r.status)
	}
	// Before migrations: alive and ready (the pass-through serves without
	// the database: reliability, defect 3), the database's state in the
	// body, and pushes are refused cleanly.
	if r := get("/readyz"); r.status != 200 || !strings.Contains(r.str("database"), "not migrated") {
		t.Errorf("/readyz before migration = %d %s, want 200 naming the database's state", r.status, r.raw)
	}
	if r := inst.push(t, "alice", "g", create("c", 1, "a")); r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Errorf("push before migration = %d %s, want 503 with Retry-After", r.status, r.raw)
	}
	if err := inst.sc.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := get("/readyz"); r.status != 200 || r.str("database") != "up" {
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

// TestLogsCarryContextNotCredentials: logs name the request, client group,
// mutator and outcome, and never contain credentials, even at debug level.
func TestLogsCarryContextNotCredentials(t *testing.T) {
	t.Parallel()
	const token, cookie = "Bearer alice-SECRET-token", "session=COOKIE-SECRET"
	h := newHarness(t, map[string]string{"SIDECAR_AUTH_PATH": "", "SIDECAR_FORWARD_HEADERS": "Authorization,Cookie"})
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
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
	h.up.Server.Close()
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

// TestErrorBodiesTellNothingInternal: what a (possibly anonymous) client
// reads names the problem, a stable code and its request id, never the
// upstream's address or Go's error text; a bad upstream URL's password is
// never echoed.
func TestErrorBodiesTellNothingInternal(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_AUTH_PATH": "", "SIDECAR_BREAKER_FAILURES": "0"})
	sc := h.start()
	h.up.Server.Close() // the upstream is gone: connection refused
	host := strings.TrimPrefix(h.up.Server.URL, "http://")
	for _, r := range []response{
		sc.push(t, "alice", "g", create("c", 1, "a")),
		sc.post(t, "/replicache/pull", "Bearer alice", pullBody("g", nil)),
	} {
		if r.status < 500 || r.str("error") == "" || r.str("requestID") != "test-req" {
			t.Errorf("answer = %d %s; want a 5xx with a code and the request id", r.status, r.raw)
		}
		for _, leak := range []string{host, "127.0.0.1", "dial tcp", "http://", "connect:"} {
			if strings.Contains(string(r.raw), leak) {
				t.Errorf("the answer leaks %q: %s", leak, r.raw)
			}
		}
	}
	if !strings.Contains(h.logs.String(), "connect") {
		t.Error("the log lost the details the client no longer sees")
	}
	_, err := LoadConfig(map[string]string{"SIDECAR_UPSTREAM_URL": "ftp://admin:hunter2@api.internal/v1",
		"SIDECAR_DATABASE_URL": "postgres://x/y", "SIDECAR_MAPPING_FILE": writeFile(t, testMapping)})
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "SIDECAR_UPSTREAM_URL") {
		t.Errorf("bad upstream URL: %v; want it named without the password", err)
	}
}

// TestAdminPprof: Go's profiles are served on the admin listener only when
// SIDECAR_PPROF says so.
func TestAdminPprof(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{false, true} {
		h := newHarness(t, map[string]string{"SIDECAR_PPROF": map[bool]string{false: "false", true: "true"}[on]})
		inst := h.start()
		admin := httptest.NewServer(inst.sc.AdminHandler(inst.reg))
		r := do(t, mustRequest(t, http.MethodGet, admin.URL+"/debug/pprof/goroutine?debug=1"))
		admin.Close()
		switch {
		case on && (r.status != 200 || !strings.Contains(string(r.raw), "goroutine profile")):
			t.Errorf("with SIDECAR_PPROF=true: /debug/pprof/goroutine = %d %.100s", r.status, r.raw)
		case !on && r.status != 404:
			t.Errorf("without SIDECAR_PPROF: /debug/pprof/goroutine = %d, want 404", r.status)
		}
	}
}
