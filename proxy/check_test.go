package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// TestCheckWriteSendsTheServersCall: --write sends the call the server
// would: only SIDECAR_FORWARD_HEADERS (in the trusted-header mode the user
// id header is not among them by default), and a key of the server's own
// form (64 hex digits), not one a client will ever use.
func TestCheckWriteSendsTheServersCall(t *testing.T) {
	h := newHarness(t, map[string]string{"SIDECAR_USER_ID_HEADER": "X-User-Id"})
	sc := h.start()
	var mu sync.Mutex
	var calls []http.Header
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && r.URL.Path == "/api/todos" {
			mu.Lock()
			calls = append(calls, r.Header.Clone())
			mu.Unlock()
		}
		return false
	})
	req, _ := http.NewRequest(http.MethodPost, sc.srv.URL+"/replicache/push", strings.NewReader(mustJSON(t, pushBody("g", create("c1", 1, "a")))))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	req.Header.Set("X-User-Id", "alice") // from a trusted proxy (loopback)
	if r := do(t, req); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	cfg, err := LoadConfig(h.env)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Check(context.Background(), cfg, CheckOptions{
		Header: http.Header{"Authorization": {"Bearer alice"}}, User: "alice", Write: true,
		Examples: map[string]json.RawMessage{"createTodo": json.RawMessage(`{"id":"b","title":"b"}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 2 {
		t.Fatalf("%d mutation calls seen, want 2 (server's, check's); report %+v", len(calls), rep)
	}
	server, check := calls[0], calls[1]
	if server.Get("X-User-Id") != check.Get("X-User-Id") {
		t.Errorf("X-User-Id: the server sends %q, the check sends %q", server.Get("X-User-Id"), check.Get("X-User-Id"))
	}
	hexKey := regexp.MustCompile(`^[0-9a-f]{64}$`)
	if k := cfg.IdempotencyHeader; hexKey.MatchString(server.Get(k)) != hexKey.MatchString(check.Get(k)) {
		t.Errorf("%s: the server sends %q, the check sends %q", k, server.Get(k), check.Get(k))
	}
}
