package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

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
