package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestPokeSubscriberMemory: what an idle poke stream costs the sidecar,
// measured on the built binary (no race detector): resident memory before
// and after opening n streams, per stream. n is 200 in `make test`, 2000
// with MEMORY_TEST=full (`make bench`).
func TestPokeSubscriberMemory(t *testing.T) {
	n := 200
	if os.Getenv("MEMORY_TEST") == "full" {
		n = 2000
	}
	bin := plainBinary(t)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"todos":[]}`))
	}))
	t.Cleanup(api.Close)
	dbURL := proxytest.DatabaseURL(t)
	schema := fmt.Sprintf("pokemem_%d", time.Now().UnixNano())
	t.Cleanup(func() { proxytest.DropSchema(t, dbURL, schema) })
	mapping := filepath.Join(t.TempDir(), "m.json")
	_ = os.WriteFile(mapping, []byte(`{"clientView":[{"path":"/api/todos","items":"todos","key":"todo/{id}"}]}`), 0o600)
	p := spawnBinary(t, bin, map[string]string{
		"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_DATABASE_URL": dbURL, "SIDECAR_MAPPING_FILE": mapping,
		"SIDECAR_DB_SCHEMA": schema, "SIDECAR_USER_ID_HEADER": "X-User", "SIDECAR_LOG_LEVEL": "warn",
	})
	p.waitReady()
	before := residentSet(t, p)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	for i := range n {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.public+"/replicache/poke", nil)
		req.Header.Set("X-User", fmt.Sprint("user", i%50))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("stream %d: %d", i, resp.StatusCode)
		}
		defer func() { _ = resp.Body.Close() }()
		go func() { _, _ = io.Copy(io.Discard, resp.Body) }()
	}
	deadline := time.Now().Add(20 * time.Second)
	for subscribers(t, p) < n {
		if time.Now().After(deadline) {
			t.Fatalf("poke_subscribers did not reach %d", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	after := residentSet(t, p)
	per := float64(after-before) / float64(n)
	t.Logf("%d idle poke streams: resident set %.1f → %.1f MiB, %.1f KiB per stream", n, float64(before)/(1<<20), float64(after)/(1<<20), per/1024)
	if per > 64<<10 {
		t.Errorf("an idle poke stream costs %.0f bytes; want under 64 KiB", per)
	}
}

// residentSet is the process's resident memory now (VmRSS).
func residentSet(t *testing.T, p *sidecarProc) int64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("no VmRSS in /proc/<pid>/status")
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// subscribers reads replicache_sidecar_poke_subscribers from the admin
// listener.
func subscribers(t *testing.T, p *sidecarProc) int {
	t.Helper()
	resp, err := http.Get(p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^replicache_sidecar_poke_subscribers (\d+)`).FindSubmatch(body)
	if m == nil {
		return 0
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}
