package main

import (
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
)

// TestPromtoolCheckMetrics runs `promtool check metrics` on the real
// binary's exposition after some traffic. `make test` installs promtool
// (Debian's prometheus package) and sets REQUIRE_PROMTOOL=1, so CI never
// skips this; a bare `go test` without promtool skips it and says why.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := prometheusTool(t, "promtool")
	sc := runningSidecar(t)             // 5 mutations applied
	pushOnce(sc.public, "g", "c", 9, 9) // a gap: a 400 in the request counters
	lastMutationIDs(sc.public, "g")
	resp, err := http.Get(sc.public + "/anything")
	if err == nil {
		_ = resp.Body.Close()
	}
	resp, err = http.Get(sc.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	exposition, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	for _, want := range []string{
		`replicache_sidecar_mutations_total{mutator="m",outcome="applied"} 5`,
		`replicache_sidecar_requests_total{code="400",endpoint="push"} 1`,
		`replicache_sidecar_upstream_request_duration_seconds_count{code="201",kind="mutation"} 5`,
		`replicache_sidecar_circuit_breaker_open{kind="mutation"} 0`,
		`replicache_sidecar_db_pool_max_connections`,
		`go_goroutines`, `process_resident_memory_bytes`,
	} {
		if !bytes.Contains(exposition, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
