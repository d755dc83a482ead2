package proxy

import (
	"net/http"
	"strings"
	"testing"
)

func withHeaders(t testing.TB, method, url, body string, kv ...string) *http.Request {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json") // as the Replicache client sends
	}
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	return req
}

func TestCORS(t *testing.T) {
	t.Parallel()
	preflight := func(sc *instance, origin string) response {
		return do(t, withHeaders(t, http.MethodOptions, sc.srv.URL+"/replicache/push", "",
			"Origin", origin, "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "content-type, authorization, x-replicache-requestid"))
	}
	t.Run("configured origins", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, map[string]string{"SIDECAR_CORS_ORIGINS": "https://app.example.com, http://localhost:5173"})
		sc := h.start()
		r := preflight(sc, "https://app.example.com")
		if r.status != 204 || r.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
			r.header.Get("Access-Control-Allow-Credentials") != "true" || !strings.Contains(r.header.Get("Access-Control-Allow-Methods"), "POST") ||
			!strings.Contains(r.header.Get("Access-Control-Allow-Headers"), "authorization") {
			t.Errorf("allowed preflight = %d %v", r.status, r.header)
		}
		r = preflight(sc, "https://evil.example.com")
		if r.status != 403 || r.header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("foreign preflight = %d, ACAO %q", r.status, r.header.Get("Access-Control-Allow-Origin"))
		}
		req := withHeaders(t, http.MethodPost, sc.srv.URL+"/replicache/pull", `{"pullVersion":1,"clientGroupID":"g","cookie":null}`,
			"Origin", "http://localhost:5173", "Authorization", "Bearer alice")
		if r := do(t, req); r.status != 200 || r.header.Get("Access-Control-Allow-Origin") != "http://localhost:5173" || r.header.Get("Access-Control-Allow-Credentials") != "true" {
			t.Errorf("pull from an allowed origin = %d %v", r.status, r.header)
		} else if exposed := r.header.Get("Access-Control-Expose-Headers"); !strings.Contains(exposed, "X-Trace-ID") ||
			!strings.Contains(exposed, "X-Request-ID") || !strings.Contains(exposed, "Retry-After") || r.header.Get("X-Trace-ID") == "" {
			// A page can read the trace of a failed push or pull.
			t.Errorf("pull from an allowed origin exposes %q (X-Trace-ID %q)", exposed, r.header.Get("X-Trace-ID"))
		}
		req = withHeaders(t, http.MethodPost, sc.srv.URL+"/replicache/pull", `{"pullVersion":1,"clientGroupID":"g","cookie":null}`,
			"Origin", "https://evil.example.com", "Authorization", "Bearer alice")
		if r := do(t, req); r.header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("pull from a foreign origin carries ACAO %q", r.header.Get("Access-Control-Allow-Origin"))
		}
	})
	t.Run("unset: no CORS at all", func(t *testing.T) {
		t.Parallel()
		sc := newHarness(t, nil).start()
		r := preflight(sc, "https://app.example.com")
		if r.status != http.StatusMethodNotAllowed {
			t.Errorf("preflight without CORS configured = %d", r.status)
		}
		for k := range r.header {
			if strings.HasPrefix(k, "Access-Control-") {
				t.Errorf("CORS header %s sent without SIDECAR_CORS_ORIGINS", k)
			}
		}
	})
}

// TestCrossSiteWritesRefused: a push sent cross-site as text/plain or as a
// form (no preflight needed, the victim's cookie attached) is refused with
// 415 before any upstream call; with SIDECAR_CORS_ORIGINS set, a push or
// pull from an origin not listed, or marked cross-site by the browser, is
// refused with 403. The listed origin, and requests with no Origin (the
// Replicache client in Node, server-to-server), still work.
func TestCrossSiteWritesRefused(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_FORWARD_HEADERS": "Authorization,Cookie", "SIDECAR_CORS_ORIGINS": "https://app.example.com"})
	sc := h.start()
	body := mustJSON(t, pushBody("g", create("c", 1, "a")))
	calls := h.up.MutationCalls()
	for _, tc := range []struct {
		name   string
		kv     []string
		status int
	}{
		{"text/plain, the classic CSRF form", []string{"Content-Type", "text/plain"}, 415},
		{"form-encoded", []string{"Content-Type", "application/x-www-form-urlencoded"}, 415},
		{"no content type", []string{"Content-Type", ""}, 415},
		{"an origin not listed", []string{"Origin", "https://evil.example"}, 403},
		{"marked cross-site by the browser", []string{"Sec-Fetch-Site", "cross-site"}, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kv := append([]string{"Authorization", "Bearer alice", "Cookie", "session=victim"}, tc.kv...)
			r := do(t, withHeaders(t, http.MethodPost, sc.srv.URL+"/replicache/push", body, kv...))
			if r.status != tc.status || r.json["error"] == nil {
				t.Errorf("push = %d %s; want %d with a JSON error", r.status, r.raw, tc.status)
			}
		})
	}
	if n := h.up.MutationCalls() - calls; n != 0 {
		t.Errorf("%d upstream calls for refused cross-site pushes", n)
	}
	for _, kv := range [][]string{
		{"Origin", "https://app.example.com", "Sec-Fetch-Site", "same-site"},
		{}, // no Origin at all
	} {
		kv = append([]string{"Authorization", "Bearer alice"}, kv...)
		if r := do(t, withHeaders(t, http.MethodPost, sc.srv.URL+"/replicache/pull", mustJSON(t, pullBody("g", nil)), kv...)); r.status != 200 {
			t.Errorf("pull with %v = %d %s", kv, r.status, r.raw)
		}
	}
}
