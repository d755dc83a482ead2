package proxy

import (
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
)

// TestMetricsExposition checks the series the operations docs promise and
// lints the exposition the way `promtool check metrics` does.
func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	sc.push(t, "alice", "g", create("c", 1, "a"), mut{"c", 2, "nope", nil})
	sc.pull(t, "alice", "g", nil)
	do(t, mustRequest(t, http.MethodGet, sc.srv.URL+"/legacy/echo"))
	problems, err := promlint.NewWithMetricFamilies(mustGather(t, sc)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	names := map[string]bool{}
	for _, mf := range mustGather(t, sc) {
		names[mf.GetName()] = true
	}
	for _, want := range []string{
		"replicache_sidecar_requests_total", "replicache_sidecar_request_duration_seconds",
		"replicache_sidecar_mutations_total", "replicache_sidecar_upstream_request_duration_seconds",
		"replicache_sidecar_upstream_errors_total", "replicache_sidecar_circuit_breaker_open",
		"replicache_sidecar_pull_patch_entries", "replicache_sidecar_pull_patch_bytes",
		"replicache_sidecar_db_pool_acquired_connections",
	} {
		if !names[want] {
			t.Errorf("missing series %s", want)
		}
	}
	if n := seriesCount(t, sc, "replicache_sidecar_upstream_request_duration_seconds"); n < 4 {
		t.Errorf("upstream_request_duration_seconds has %d series; want mutation, view, auth and proxy calls", n)
	}
}

func mustGather(t testing.TB, inst *instance) []*dto.MetricFamily {
	t.Helper()
	mfs, err := inst.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// seriesCount counts the series of one metric in the instance's registry.
func seriesCount(t testing.TB, inst *instance, name string) int {
	t.Helper()
	n, err := testutil.GatherAndCount(inst.reg, name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// requestsAnswered sums replicache_sidecar_requests_total of one endpoint:
// how many of its handlers have returned.
func requestsAnswered(t testing.TB, inst *instance, endpoint string) float64 {
	t.Helper()
	var n float64
	for _, mf := range mustGather(t, inst) {
		if mf.GetName() != "replicache_sidecar_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "endpoint" && l.GetValue() == endpoint {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}
