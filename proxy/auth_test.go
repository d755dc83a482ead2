package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/identity"
)

func TestIdentity(t *testing.T) {
	t.Parallel()
	t.Run("single tenant", func(t *testing.T) {
		t.Parallel()
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
		t.Parallel()
		h := newHarness(t, map[string]string{"SIDECAR_AUTH_PATH": "", "SIDECAR_USER_ID_HEADER": "X-User-Id"})
		sc := h.start()
		send := func(user string) response {
			req, _ := http.NewRequest(http.MethodPost, sc.srv.URL+"/replicache/pull", strings.NewReader(`{"pullVersion":1,"clientGroupID":"g","cookie":null}`))
			req.Header.Set("Content-Type", "application/json")
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
		t.Parallel()
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
		t.Parallel()
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
		// An auth endpoint answering 5xx is an outage, to retry (issue 16
		// §8; this answered 502 before).
		if r, _ := sc.pull(t, "alice", "g", nil); r.status != 503 || r.header.Get("Retry-After") == "" || !strings.Contains(r.str("message"), "/api/me answered 500") {
			t.Errorf("broken auth endpoint = %d %s, want 503 with Retry-After", r.status, r.raw)
		}
	})
}

// TestTrustedProxies: the identity header is believed only on connections
// from SIDECAR_TRUSTED_PROXIES. From another address (127.0.0.2, made
// untrusted by the setting) a push or pull carrying it gets 401 naming the
// header, even though the auth path could identify the caller, and
// pass-through removes it before the legacy API sees it. IPv4 and IPv6
// loopback are trusted by default.
func TestTrustedProxies(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_USER_ID_HEADER": "X-User-Id"}) // and SIDECAR_AUTH_PATH=/api/me
	sc := h.start()
	v6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("IPv6 loopback: %v", err)
	}
	v6srv := &http.Server{Handler: sc.sc.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = v6srv.Serve(v6) }()
	t.Cleanup(func() { _ = v6srv.Close() })

	from := func(local string) *http.Client {
		d := &net.Dialer{Timeout: 5 * time.Second}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	}
	send := func(c *http.Client, base, path, user, body string) response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer alice")
		if user != "" {
			req.Header.Set("X-User-Id", user)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer func() { _ = resp.Body.Close() }()
		raw, _ := io.ReadAll(resp.Body)
		r := response{status: resp.StatusCode, header: resp.Header, raw: raw}
		_ = json.Unmarshal(raw, &r.json)
		return r
	}
	pull := `{"pullVersion":1,"clientGroupID":"g-%s","cookie":null}`
	v6base := "http://" + v6.Addr().String()
	for _, tc := range []struct {
		name, local, base string
	}{
		{"IPv4 loopback", "127.0.0.1", sc.srv.URL},
		{"IPv6 loopback", "", v6base},
	} {
		t.Run("trusted "+tc.name, func(t *testing.T) {
			c := from(tc.local)
			if r := send(c, tc.base, "/replicache/pull", "gateway-user", fmt.Sprintf(pull, tc.name)); r.status != 200 {
				t.Errorf("pull with the header from %s = %d %s", tc.name, r.status, r.raw)
			}
			if r := send(c, tc.base, "/legacy/echo", "gateway-user", ""); r.json["headers"].(map[string]any)["X-User-Id"] != "gateway-user" {
				t.Errorf("pass-through from a trusted proxy lost the header: %s", r.raw)
			}
		})
	}
	t.Run("untrusted address", func(t *testing.T) {
		c := from("127.0.0.2")
		for _, path := range []string{"/replicache/pull", "/replicache/push"} {
			body := fmt.Sprintf(pull, "x")
			if path == "/replicache/push" {
				body = `{"pushVersion":1,"clientGroupID":"g-x","mutations":[{"id":1,"clientID":"c-x","name":"createTodo","args":{"id":"x","title":"x"}}]}`
			}
			r := send(c, sc.srv.URL, path, "mallory-as-bob", body)
			if r.status != 401 || !strings.Contains(r.str("message"), "X-User-Id") || !strings.Contains(r.str("message"), "SIDECAR_TRUSTED_PROXIES") {
				t.Errorf("%s with the header from 127.0.0.2 = %d %s; want 401 naming the header", path, r.status, r.raw)
			}
			// Without the header the same caller is identified by the API.
			if r := send(c, sc.srv.URL, path, "", body); r.status != 200 {
				t.Errorf("%s without the header from 127.0.0.2 = %d %s", path, r.status, r.raw)
			}
		}
		r := send(c, sc.srv.URL, "/legacy/echo", "mallory-as-bob", "")
		if r.status != http.StatusTeapot {
			t.Fatalf("pass-through = %d %s", r.status, r.raw)
		}
		if v, ok := r.json["headers"].(map[string]any)["X-User-Id"]; ok {
			t.Errorf("pass-through from an untrusted address forwarded X-User-Id=%v", v)
		}
	})
	t.Run("narrowed list", func(t *testing.T) {
		h2 := newHarness(t, map[string]string{"SIDECAR_USER_ID_HEADER": "X-User-Id", "SIDECAR_TRUSTED_PROXIES": "10.0.0.0/8"})
		sc2 := h2.start()
		if r := send(from("127.0.0.1"), sc2.srv.URL, "/replicache/pull", "u", fmt.Sprintf(pull, "n")); r.status != 401 {
			t.Errorf("loopback outside SIDECAR_TRUSTED_PROXIES = %d %s, want 401", r.status, r.raw)
		}
	})
}

// TestTrustedPeersContains: addresses are compared unmapped and without
// their zone, whichever way the list or the peer spells them.
func TestTrustedPeersContains(t *testing.T) {
	cfg, err := LoadConfig(map[string]string{"SIDECAR_UPSTREAM_URL": "http://x", "SIDECAR_DATABASE_URL": "postgres://x/y",
		"SIDECAR_MAPPING_FILE": writeFile(t, testMapping), "SIDECAR_TRUSTED_PROXIES": "fe80::/10,::ffff:10.0.0.0/104,192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	peers := identity.New(identity.Options{TrustedProxies: cfg.TrustedNets, Base: &url.URL{}})
	for addr, want := range map[string]bool{
		"[fe80::1%eth0]:1234": true,  // link-local with its zone
		"10.1.2.3:5":          true,  // IPv4 in a range written IPv4-mapped
		"[::ffff:10.1.2.3]:5": true,  // IPv4-mapped peer
		"192.0.2.7:80":        true,  // a single address
		"192.0.2.8:80":        false, // its neighbour
		"[2001:db8::1]:443":   false,
		"11.0.0.1:5":          false,
		"not an address":      false,
	} {
		if got := peers.Trusted(addr); got != want {
			t.Errorf("Trusted(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestAuthEndpointAnswers: an auth endpoint that is down is an outage (503
// with Retry-After), one that does not fit (404, 405, a redirect) is a
// configuration error naming method and path; POST-only endpoints and user
// ids inside arrays fit with SIDECAR_AUTH_METHOD and an indexed field.
func TestAuthEndpointAnswers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		env    map[string]string
		answer func(w http.ResponseWriter, r *http.Request)
		status int
		code   string
		msg    string
	}{
		{"5xx is an outage", nil, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) },
			503, "UpstreamUnavailable", "answered 503"},
		{"404 is a configuration error", nil, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) },
			502, "ConfigurationError", "GET /whoami answered 404"},
		{"405 too", map[string]string{"SIDECAR_AUTH_METHOD": "post"}, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(405) },
			502, "ConfigurationError", "POST /whoami answered 405"},
		{"a redirect is a mapping error naming its target", nil, func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/whoami/", http.StatusMovedPermanently)
		}, 503, "MappingError", `mapping error: auth endpoint GET /whoami answered 301 (Location: "/whoami/")`},
		{"POST-only endpoint, id inside an array", map[string]string{"SIDECAR_AUTH_METHOD": "POST", "SIDECAR_AUTH_USER_FIELD": "items.0.id"},
			func(w http.ResponseWriter, r *http.Request) {
				// (the fake API has read the body already; its length tells)
				if r.Method != http.MethodPost || r.ContentLength != 2 || r.Header.Get("Content-Type") != "application/json" {
					w.WriteHeader(http.StatusMethodNotAllowed)
					return
				}
				_, _ = io.WriteString(w, `{"items":[{"id":"u7"}]}`)
			}, 200, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"SIDECAR_AUTH_PATH": "/whoami"}
			for k, v := range tc.env {
				env[k] = v
			}
			h := newHarness(t, env)
			h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != "/whoami" {
					return false
				}
				tc.answer(w, r)
				return true
			})
			sc := h.start()
			for _, path := range []string{"/replicache/push", "/replicache/pull"} {
				body := mustJSON(t, pullBody("g", nil))
				if path == "/replicache/push" {
					body = mustJSON(t, pushBody("g", create("c", 1, "a")))
				}
				r := sc.post(t, path, "Bearer alice", body)
				if r.status != tc.status || (tc.code != "" && r.str("error") != tc.code) || !strings.Contains(r.str("message"), tc.msg) {
					t.Errorf("%s = %d %s; want %d %s naming %q", path, r.status, r.raw, tc.status, tc.code, tc.msg)
				}
				if tc.status == 503 && r.header.Get("Retry-After") == "" {
					t.Errorf("%s: 503 without Retry-After", path)
				}
			}
			if tc.status == 200 {
				var owner string
				q := "SELECT user_id FROM " + pgx.Identifier{h.schema}.Sanitize() + ".client_groups WHERE id = 'g'"
				if err := sc.pool.QueryRow(context.Background(), q).Scan(&owner); err != nil || owner != "u7" {
					t.Errorf("group owner = %q (%v), want u7", owner, err)
				}
			}
		})
	}
}
