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
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	return req
}

func TestCORS(t *testing.T) {
	preflight := func(sc *instance, origin string) response {
		return do(t, withHeaders(t, http.MethodOptions, sc.srv.URL+"/replicache/push", "",
			"Origin", origin, "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "content-type, authorization, x-replicache-requestid"))
	}
	t.Run("configured origins", func(t *testing.T) {
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
		}
		req = withHeaders(t, http.MethodPost, sc.srv.URL+"/replicache/pull", `{"pullVersion":1,"clientGroupID":"g","cookie":null}`,
			"Origin", "https://evil.example.com", "Authorization", "Bearer alice")
		if r := do(t, req); r.header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("pull from a foreign origin carries ACAO %q", r.header.Get("Access-Control-Allow-Origin"))
		}
	})
	t.Run("unset: no CORS at all", func(t *testing.T) {
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
