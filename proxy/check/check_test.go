package check_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/proxy"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/check"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// TestCheckWriteSendsTheServersCall: --write sends the call the server
// would: only SIDECAR_FORWARD_HEADERS (in the trusted-header mode the user
// id header is not among them by default), and a key of the server's own
// form (64 hex digits), not one a client will ever use.
func TestCheckWriteSendsTheServersCall(t *testing.T) {
	t.Parallel()
	up := proxytest.NewLegacyAPI(t)
	mapping := filepath.Join(t.TempDir(), "mapping.json")
	if err := os.WriteFile(mapping, []byte(`{"mutators": {"createTodo": {"method": "POST", "path": "/api/todos"}},
		"clientView": [{"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"}}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"SIDECAR_UPSTREAM_URL": up.Server.URL, "SIDECAR_DATABASE_URL": proxytest.DatabaseURL(t),
		"SIDECAR_MAPPING_FILE": mapping, "SIDECAR_DB_SCHEMA": proxytest.NewSchema(t), "SIDECAR_USER_ID_HEADER": "X-User-Id",
	}
	cfg, err := proxy.LoadConfig(env)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := store.NewPool(context.Background(), cfg.PoolOptions())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	sc := proxy.New(proxy.Options{Config: cfg, Pool: pool, Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()})
	if err := sc.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sc.Handler())
	t.Cleanup(srv.Close)

	var mu sync.Mutex
	var calls []http.Header
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && r.URL.Path == "/api/todos" {
			mu.Lock()
			calls = append(calls, r.Header.Clone())
			mu.Unlock()
		}
		return false
	})
	push := `{"pushVersion":1,"clientGroupID":"g","mutations":[{"id":1,"clientID":"c1","name":"createTodo","args":{"id":"a","title":"a"}}]}`
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/replicache/push", bytes.NewReader([]byte(push)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	req.Header.Set("X-User-Id", "alice") // from a trusted proxy (loopback)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("push = %d %s", resp.StatusCode, body)
	}
	rep, err := check.Run(context.Background(), cfg, check.Options{
		Header: http.Header{"Authorization": {"Bearer alice"}}, User: "alice", Write: true,
		Examples: []check.Example{{Mutator: "createTodo", Args: json.RawMessage(`{"id":"b","title":"b"}`)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 2 {
		t.Fatalf("%d mutation calls seen, want 2 (server's, check's); report %+v", len(calls), rep)
	}
	server, checked := calls[0], calls[1]
	if server.Get("X-User-Id") != checked.Get("X-User-Id") {
		t.Errorf("X-User-Id: the server sends %q, the check sends %q", server.Get("X-User-Id"), checked.Get("X-User-Id"))
	}
	hexKey := regexp.MustCompile(`^[0-9a-f]{64}$`)
	if k := cfg.IdempotencyHeader; hexKey.MatchString(server.Get(k)) != hexKey.MatchString(checked.Get(k)) {
		t.Errorf("%s: the server sends %q, the check sends %q", k, server.Get(k), checked.Get(k))
	}
}
