package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

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
		h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
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
		h.up.SetFault(func(r *http.Request) int {
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
