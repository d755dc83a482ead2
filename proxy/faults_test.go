package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
)

func breakerHarness(t testing.TB) (*harness, *instance) {
	h := newHarness(t, map[string]string{
		"SIDECAR_BREAKER_FAILURES":     "3",
		"SIDECAR_BREAKER_OPEN_TIMEOUT": "400ms",
		"SIDECAR_USER_ID_HEADER":       "X-User", // no auth call: only mutations reach the upstream
		"SIDECAR_AUTH_PATH":            "",
	})
	return h, h.start()
}

func pushAs(t testing.TB, inst *instance, group string, muts ...mut) response {
	req, _ := http.NewRequest(http.MethodPost, inst.srv.URL+"/replicache/push", strings.NewReader(mustJSON(t, pushBody(group, muts...))))
	req.Header.Set("X-User", "alice")
	req.Header.Set("Authorization", "Bearer alice")
	return do(t, req)
}

func TestCircuitBreaker(t *testing.T) {
	h, sc := breakerHarness(t)
	if r := pushAs(t, sc, "g2", create("c2", 1, "done")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	h.up.setFault(func(r *http.Request) int { return http.StatusBadGateway })

	// Three failing calls open the breaker.
	for i := 0; i < 3; i++ {
		if r := pushAs(t, sc, "g", create("c", 1, "a")); r.status != 503 {
			t.Fatalf("push %d = %d %s", i, r.status, r.raw)
		}
	}
	if v := gaugeValue(t, sc, "replicache_sidecar_circuit_breaker_open"); v != 1 {
		t.Fatalf("circuit_breaker_open = %v, want 1", v)
	}
	calls := h.up.mutationCalls()
	start := time.Now()
	r := pushAs(t, sc, "g", create("c", 1, "a"))
	failFast := time.Since(start)
	if r.status != 503 || r.header.Get("Retry-After") != "1" || !strings.Contains(r.str("cause"), "circuit breaker open") {
		t.Fatalf("push with the breaker open = %d %s (Retry-After %q)", r.status, r.raw, r.header.Get("Retry-After"))
	}
	if n := h.up.mutationCalls() - calls; n != 0 {
		t.Errorf("the open breaker let %d calls through", n)
	}
	if l := h.lmid(t, sc.pool, "c"); l != 0 {
		t.Errorf("lastMutationID = %d while the breaker is open; nothing may advance", l)
	}
	if v := testutil.ToFloat64(sc.sc.metrics.mutations.WithLabelValues("createTodo", "transient")); v != 4 {
		t.Errorf("transient createTodo outcomes = %v, want 4 (3 failures and 1 refused by the breaker)", v)
	}
	// A client re-sending what was already applied is still acknowledged.
	if r := pushAs(t, sc, "g2", create("c2", 1, "done")); r.status != 200 || r.json["duplicate"] != 1.0 {
		t.Errorf("re-push of an applied mutation with the breaker open = %d %s, want 200", r.status, r.raw)
	}
	pull := do(t, withHeaders(t, http.MethodPost, sc.srv.URL+"/replicache/pull", `{"pullVersion":1,"clientGroupID":"g","cookie":null}`, "X-User", "alice"))
	if pull.status != 503 || pull.header.Get("Retry-After") == "" {
		t.Errorf("pull with the breaker open = %d %s", pull.status, pull.raw)
	}
	pass := do(t, mustRequest(t, http.MethodGet, sc.srv.URL+"/legacy/echo"))
	if pass.status != 503 || pass.str("error") != "UpstreamUnavailable" {
		t.Errorf("pass-through with the breaker open = %d %s", pass.status, pass.raw)
	}
	t.Logf("fail-fast answer with the breaker open: %v", failFast)

	// The upstream recovers; after the open timeout a probe closes it.
	h.up.setFault(nil)
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := pushAs(t, sc, "g", create("c", 1, "a"))
		if r.status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the breaker did not recover: %d %s", r.status, r.raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v := gaugeValue(t, sc, "replicache_sidecar_circuit_breaker_open"); v != 0 {
		t.Errorf("circuit_breaker_open = %v after recovery, want 0", v)
	}
	if l := h.lmid(t, sc.pool, "c"); l != 1 {
		t.Errorf("lastMutationID = %d after recovery, want 1", l)
	}
}

func TestClientCancellationsDoNotTripTheBreaker(t *testing.T) {
	h, sc := breakerHarness(t)
	h.up.setDelay(300 * time.Millisecond) // every view fetch is slow
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		req := withHeaders(t, http.MethodPost, sc.srv.URL+"/replicache/pull", `{"pullVersion":1,"clientGroupID":"g","cookie":null}`, "X-User", "alice")
		if resp, err := http.DefaultClient.Do(req.WithContext(ctx)); err == nil {
			t.Fatalf("pull %d answered %d before the client gave up (breaker tripped by cancellations?)", i, resp.StatusCode)
		}
		cancel()
	}
	time.Sleep(400 * time.Millisecond) // let the cancelled fetches finish
	if v := gaugeValue(t, sc, "replicache_sidecar_circuit_breaker_open"); v != 0 {
		t.Fatalf("5 client cancellations opened the breaker")
	}
	h.up.setDelay(0)
	if r := pushAs(t, sc, "g", create("c", 1, "a")); r.status != 200 {
		t.Errorf("push after cancellations = %d %s", r.status, r.raw)
	}
}

// BenchmarkBreakerOpenPush measures how fast a push and a pull are refused
// while the breaker is open, next to a push that the upstream accepts.
func BenchmarkBreakerOpenPush(b *testing.B) {
	h, sc := breakerHarness(b)
	h.up.setFault(func(r *http.Request) int { return http.StatusBadGateway })
	for i := 0; i < 3; i++ {
		pushAs(b, sc, "open", create("c1", 1, "a"))
	}
	var open, openPull, closed time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if r := pushAs(b, sc, "open", create("c1", 1, "a")); r.status != 503 {
			b.Fatalf("open breaker push = %d", r.status)
		}
		t1 := time.Now()
		pull := withHeaders(b, http.MethodPost, sc.srv.URL+"/replicache/pull", `{"pullVersion":1,"clientGroupID":"open","cookie":null}`, "X-User", "alice")
		if r := do(b, pull); r.status != 503 {
			b.Fatalf("open breaker pull = %d", r.status)
		}
		open += t1.Sub(t0)
		openPull += time.Since(t1)
	}
	b.StopTimer()
	h.up.setFault(nil)
	time.Sleep(500 * time.Millisecond)
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if r := pushAs(b, sc, "ok", create("c2", int64(i+1), "x"+itoa(int64(i)))); r.status != 200 {
			b.Fatalf("push = %d %s", r.status, r.raw)
		}
		closed += time.Since(t0)
	}
	b.ReportMetric(float64(open.Nanoseconds())/float64(b.N), "open-ns/op")
	b.ReportMetric(float64(openPull.Nanoseconds())/float64(b.N), "open-pull-ns/op")
	b.ReportMetric(float64(closed.Nanoseconds())/float64(b.N), "applied-ns/op")
}

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

// TestMetricsExposition checks the series the operations docs promise and
// lints the exposition the way `promtool check metrics` does.
func TestMetricsExposition(t *testing.T) {
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

// gaugeValue reads an unlabelled gauge from the instance's registry.
func gaugeValue(t testing.TB, inst *instance, name string) float64 {
	t.Helper()
	for _, mf := range mustGather(t, inst) {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
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

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
