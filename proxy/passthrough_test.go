package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPassThrough(t *testing.T) {
	t.Parallel()
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
	t.Parallel()
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = fmt.Fprint(w, "data: second\n\n")
	}))
	defer up.Close()
	h := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": up.URL})
	sc := h.start()
	resp, err := http.Get(sc.srv.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
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

// TestPassThroughTheAPICanTrust: from a trusted proxy (an ingress on
// loopback) the forwarding headers it set are kept and the peer appended;
// from another address they are replaced by what the connection says and
// X-Real-IP is dropped. The incoming Host goes on by default. Paths are
// cleaned before the deny list and the upstream prefix are applied, and a
// path that would climb out of the prefix answers 400.
func TestPassThroughTheAPICanTrust(t *testing.T) {
	t.Parallel()
	type seen struct {
		path, host string
		header     http.Header
	}
	var mu sync.Mutex
	var last seen
	var calls int
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		last, calls = seen{r.URL.EscapedPath(), r.Host, r.Header.Clone()}, calls+1
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(api.Close)
	h := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.URL + "/v1", "SIDECAR_AUTH_PATH": "",
		"SIDECAR_PASSTHROUGH_DENY": "/internal"})
	sc := h.start()
	from := func(local string) *http.Client {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	}
	get := func(c *http.Client, rawPath string, hdr map[string]string) (int, seen) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, sc.srv.URL+rawPath, nil) // the path goes out as written
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "app.example.com"
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		mu.Lock()
		defer mu.Unlock()
		return resp.StatusCode, last
	}
	ingress := map[string]string{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
		"X-Forwarded-Host": "app.example.com", "Forwarded": "for=203.0.113.7;proto=https", "X-Real-IP": "203.0.113.7"}

	code, s := get(from("127.0.0.1"), "/page", ingress)
	if code != 204 || s.header.Get("X-Forwarded-For") != "203.0.113.7, 127.0.0.1" || s.header.Get("X-Forwarded-Proto") != "https" ||
		s.header.Get("Forwarded") == "" || s.host != "app.example.com" || s.path != "/v1/page" {
		t.Errorf("from the trusted ingress: %d, host %q, path %q, headers %v", code, s.host, s.path, s.header)
	}
	code, s = get(from("127.0.0.2"), "/page", ingress)
	if code != 204 || s.header.Get("X-Forwarded-For") != "127.0.0.2" || s.header.Get("X-Forwarded-Proto") != "http" ||
		s.header.Get("Forwarded") != "" || s.header.Get("X-Real-Ip") != "" {
		t.Errorf("from an untrusted peer: %d, headers %v", code, s.header)
	}
	for raw, want := range map[string]string{
		"/a/../b":          "/v1/b",
		"//double//slash/": "/v1/double/slash/",
		"/a/%2e%2e/b":      "/v1/b",
		"/plain/path":      "/v1/plain/path",
	} {
		if code, s := get(http.DefaultClient, raw, nil); code != 204 || s.path != want {
			t.Errorf("GET %s reached the API as %q (%d), want %q", raw, s.path, code, want)
		}
	}
	mu.Lock()
	before := calls
	mu.Unlock()
	for raw, want := range map[string]int{
		"/../admin":        400,
		"/%2e%2e/admin":    400,
		"/a/..%2f..%2fx":   400,
		"/internal/users":  404,
		"/x/../internal/y": 404,
	} {
		if code, _ := get(http.DefaultClient, raw, nil); code != want {
			t.Errorf("GET %s = %d, want %d", raw, code, want)
		}
	}
	mu.Lock()
	if calls != before {
		t.Errorf("%d refused paths reached the API", calls-before)
	}
	mu.Unlock()

	h2 := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_AUTH_PATH": "", "SIDECAR_PASSTHROUGH_HOST": "upstream"})
	sc = h2.start()
	if _, s := get(http.DefaultClient, "/x", nil); s.host != strings.TrimPrefix(api.URL, "http://") {
		t.Errorf("SIDECAR_PASSTHROUGH_HOST=upstream sent Host %q", s.host)
	}
}
