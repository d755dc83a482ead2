package proxy

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
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
	h.up.SetFault(func(r *http.Request) int { return http.StatusBadGateway })

	// Three failing calls open the breaker.
	for i := 0; i < 3; i++ {
		if r := pushAs(t, sc, "g", create("c", 1, "a")); r.status != 503 {
			t.Fatalf("push %d = %d %s", i, r.status, r.raw)
		}
	}
	if v := gaugeValue(t, sc, "replicache_sidecar_circuit_breaker_open"); v != 1 {
		t.Fatalf("circuit_breaker_open = %v, want 1", v)
	}
	calls := h.up.MutationCalls()
	start := time.Now()
	r := pushAs(t, sc, "g", create("c", 1, "a"))
	failFast := time.Since(start)
	if r.status != 503 || r.header.Get("Retry-After") != "1" || !strings.Contains(r.str("cause"), "circuit breaker open") {
		t.Fatalf("push with the breaker open = %d %s (Retry-After %q)", r.status, r.raw, r.header.Get("Retry-After"))
	}
	if n := h.up.MutationCalls() - calls; n != 0 {
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
	h.up.SetFault(nil)
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
	h.up.SetDelay(300 * time.Millisecond) // every view fetch is slow
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		req := withHeaders(t, http.MethodPost, sc.srv.URL+"/replicache/pull", `{"pullVersion":1,"clientGroupID":"g","cookie":null}`, "X-User", "alice")
		if resp, err := http.DefaultClient.Do(req.WithContext(ctx)); err == nil {
			_ = resp.Body.Close()
			t.Fatalf("pull %d answered %d before the client gave up (breaker tripped by cancellations?)", i, resp.StatusCode)
		}
		cancel()
	}
	proxytest.WaitFor(t, "the cancelled pulls to finish", func() bool { return requestsAnswered(t, sc, "pull") == 5 })
	if v := gaugeValue(t, sc, "replicache_sidecar_circuit_breaker_open"); v != 0 {
		t.Fatalf("5 client cancellations opened the breaker")
	}
	h.up.SetDelay(0)
	if r := pushAs(t, sc, "g", create("c", 1, "a")); r.status != 200 {
		t.Errorf("push after cancellations = %d %s", r.status, r.raw)
	}
}

// BenchmarkBreakerOpenPush measures how fast a push and a pull are refused
// while the breaker is open, next to a push that the upstream accepts.
func BenchmarkBreakerOpenPush(b *testing.B) {
	h, sc := breakerHarness(b)
	h.up.SetFault(func(r *http.Request) int { return http.StatusBadGateway })
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
	h.up.SetFault(nil)
	proxytest.WaitFor(b, "the breaker's open timeout", func() bool { return !sc.sc.upstream.Suspended() })
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
