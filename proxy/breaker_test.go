package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-User", "alice")
	req.Header.Set("Authorization", "Bearer alice")
	return do(t, req)
}

func TestCircuitBreaker(t *testing.T) {
	h, sc := breakerHarness(t)
	if r := pushAs(t, sc, "g2", create("c2", 1, "done")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	// The write path fails; reads keep working.
	h.up.SetFault(func(r *http.Request) int {
		if r.Method == http.MethodPost {
			return http.StatusBadGateway
		}
		return 0
	})

	// Three failing calls open the mutation breaker.
	for i := 0; i < 3; i++ {
		if r := pushAs(t, sc, "g", create("c", 1, "a")); r.status != 503 {
			t.Fatalf("push %d = %d %s", i, r.status, r.raw)
		}
	}
	if v := breakerOpen(t, sc, "mutation"); v != 1 {
		t.Fatalf("circuit_breaker_open{kind=mutation} = %v, want 1", v)
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
	if v := testutil.ToFloat64(sc.sc.core.Metrics.Mutations.WithLabelValues("createTodo", "transient")); v != 4 {
		t.Errorf("transient createTodo outcomes = %v, want 4 (3 failures and 1 refused by the breaker)", v)
	}
	// A client re-sending what was already applied is still acknowledged.
	if r := pushAs(t, sc, "g2", create("c2", 1, "done")); r.status != 200 || r.json["duplicate"] != 1.0 {
		t.Errorf("re-push of an applied mutation with the breaker open = %d %s, want 200", r.status, r.raw)
	}
	// Pulls and pass-through pages make calls of their own kinds, which
	// succeed: the mutation breaker does not stop them.
	pull := do(t, withHeaders(t, http.MethodPost, sc.srv.URL+"/replicache/pull", `{"pullVersion":1,"clientGroupID":"g","cookie":null}`, "X-User", "alice", "Authorization", "Bearer alice"))
	if pull.status != 200 {
		t.Errorf("pull with only the mutation breaker open = %d %s", pull.status, pull.raw)
	}
	pass := do(t, mustRequest(t, http.MethodGet, sc.srv.URL+"/legacy/echo"))
	if pass.status != http.StatusTeapot {
		t.Errorf("pass-through with only the mutation breaker open = %d %s", pass.status, pass.raw)
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
	if v := breakerOpen(t, sc, "mutation"); v != 0 {
		t.Errorf("circuit_breaker_open{kind=mutation} = %v after recovery, want 0", v)
	}
	if l := h.lmid(t, sc.pool, "c"); l != 1 {
		t.Errorf("lastMutationID = %d after recovery, want 1", l)
	}
}

func TestClientCancellationsDoNotTripTheBreaker(t *testing.T) {
	h, sc := breakerHarness(t)
	// Every view fetch is slow: slower than the whole loop, so no pull can
	// ride on an earlier one's read that finished meanwhile (a 401: these
	// pulls carry no credentials).
	h.up.SetDelay(time.Second)
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
	if v := breakerOpen(t, sc, "view"); v != 0 {
		t.Fatalf("5 client cancellations opened the view breaker")
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
	// Open the mutation and the view breakers (3 failures each).
	for i := 0; i < 3; i++ {
		pushAs(b, sc, "open", create("c1", 1, "a"))
		do(b, withHeaders(b, http.MethodPost, sc.srv.URL+"/replicache/pull", `{"pullVersion":1,"clientGroupID":"open","cookie":null}`, "X-User", "alice"))
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
		// Every open period (250 ms at first) ends with a trial call, which
		// gets the failing upstream's own answer: 502 for a pull.
		if r := do(b, pull); r.status != 503 && r.status != 502 {
			b.Fatalf("open breaker pull = %d", r.status)
		}
		open += t1.Sub(t0)
		openPull += time.Since(t1)
	}
	b.StopTimer()
	h.up.SetFault(nil)
	proxytest.WaitFor(b, "the breakers' open timeout", func() bool {
		return !sc.sc.core.Parts.Upstream.Mutation.Suspended() && !sc.sc.core.Parts.Upstream.View.Suspended()
	})
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

// breakerOpen reads replicache_sidecar_circuit_breaker_open{kind}.
func breakerOpen(t testing.TB, inst *instance, kind string) float64 {
	t.Helper()
	for _, mf := range mustGather(t, inst) {
		if mf.GetName() != "replicache_sidecar_circuit_breaker_open" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == kind {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no circuit_breaker_open series for kind %q", kind)
	return 0
}

// TestWritePathDownFailsFastReadsKeepWorking is the case a single breaker
// got wrong: the API's write endpoints answer 503 after half a second while
// its /api/me (the auth call of every push) answers at once. Each push's
// successful auth call used to reset the failure count, so the breaker never
// opened and every push waited the full half second. With a breaker per
// kind, pushes fail fast once the mutation breaker opens, while pulls and
// pass-through pages, whose own calls succeed, keep working.
func TestWritePathDownFailsFastReadsKeepWorking(t *testing.T) {
	t.Parallel()
	// Default breaker settings but a long open period: the fail-fast pushes
	// below must all fall within it (1 s was too short for five of them on
	// a loaded machine, and a trial call then reached the write path).
	// Identity from /api/me.
	h := newHarness(t, map[string]string{"SIDECAR_BREAKER_OPEN_TIMEOUT": "30s"})
	sc := h.start()
	if r := sc.push(t, "alice", "g", create("c", 1, "a")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	var writes atomic.Int64
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet {
			return false
		}
		writes.Add(1)
		time.Sleep(500 * time.Millisecond)
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	failures, _ := strconv.Atoi(h.env["SIDECAR_BREAKER_FAILURES"])
	if failures == 0 {
		failures = 5 // the default
	}
	for i := range failures {
		if r := sc.push(t, "alice", "g", create("c", 2, "b")); r.status != 503 {
			t.Fatalf("push %d while the write path is down = %d %s", i, r.status, r.raw)
		}
	}
	if v := breakerOpen(t, sc, "mutation"); v != 1 {
		t.Fatalf("circuit_breaker_open{kind=mutation} = %v after %d failed pushes, want 1", v, failures)
	}
	var slowest time.Duration
	before := writes.Load()
	for range 5 {
		start := time.Now()
		r := sc.push(t, "alice", "g", create("c", 2, "b"))
		slowest = max(slowest, time.Since(start))
		if r.status != 503 || r.header.Get("Retry-After") == "" || !strings.Contains(r.str("cause"), "circuit breaker open") {
			t.Fatalf("push with the mutation breaker open = %d %s", r.status, r.raw)
		}
	}
	// Failing fast means not waiting for the half-second write at all.
	if n := writes.Load() - before; n != 0 {
		t.Errorf("%d pushes reached the failing write path through the open breaker", n)
	}
	t.Logf("slowest fail-fast push with only the write path down: %s", slowest)
	for _, kind := range []string{"view", "auth", "proxy"} {
		if v := breakerOpen(t, sc, kind); v != 0 {
			t.Errorf("circuit_breaker_open{kind=%s} = %v, want 0: its calls succeed", kind, v)
		}
	}
	if r, p := sc.pull(t, "alice", "g", nil); r.status != 200 || len(p.keys(t)) != 2 {
		t.Errorf("pull while only the write path is down = %d %s", r.status, r.raw)
	}
	if r := do(t, mustRequest(t, http.MethodGet, sc.srv.URL+"/legacy/echo")); r.status != http.StatusTeapot {
		t.Errorf("pass-through page while only the write path is down = %d %s", r.status, r.raw)
	}
	if l := h.lmid(t, sc.pool, "c"); l != 1 {
		t.Errorf("lastMutationID = %d, want 1: nothing consumed while the write path is down", l)
	}
}

// BenchmarkWritePathDownPush: a push refused by the open mutation breaker
// while the API's write path is down (its writes take 0.5 s) and /api/me
// answers at once, next to a pull that still works.
func BenchmarkWritePathDownPush(b *testing.B) {
	h := newHarness(b, nil)
	sc := h.start()
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet {
			return false
		}
		time.Sleep(500 * time.Millisecond)
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	for range 5 {
		sc.push(b, "alice", "g", create("c", 1, "a"))
	}
	if !sc.sc.core.Parts.Upstream.Mutation.Suspended() {
		b.Fatal("the mutation breaker did not open")
	}
	var push, pull time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if r := sc.push(b, "alice", "g", create("c", 1, "a")); r.status != 503 {
			b.Fatalf("push = %d %s", r.status, r.raw)
		}
		t1 := time.Now()
		if r, _ := sc.pull(b, "alice", "g", nil); r.status != 200 {
			b.Fatalf("pull = %d %s", r.status, r.raw)
		}
		push += t1.Sub(t0)
		pull += time.Since(t1)
	}
	b.ReportMetric(float64(push.Nanoseconds())/float64(b.N), "refused-push-ns/op")
	b.ReportMetric(float64(pull.Nanoseconds())/float64(b.N), "pull-ns/op")
}

// TestOnlyUpstreamHealthOpensABreaker: anonymous requests with a broken
// chunked body, and pass-through routes the legacy API answers with 5xx,
// open no breaker: a victim's pulls and pages keep working.
func TestOnlyUpstreamHealthOpensABreaker(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_BREAKER_FAILURES": "3"})
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/legacy/fail" {
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return false
	})
	sc := h.start()
	addr := strings.TrimPrefix(sc.srv.URL, "http://")
	for range 6 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(conn, "POST /nonexistent HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nnot a chunk\r\n")
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.ReadAll(conn)
		_ = conn.Close()
	}
	for range 6 {
		if r := do(t, mustRequest(t, http.MethodGet, sc.srv.URL+"/legacy/fail")); r.status != 500 {
			t.Fatalf("pass-through of a 500 = %d, want the API's 500 unchanged", r.status)
		}
	}
	for _, kind := range []string{"proxy", "mutation", "view", "auth"} {
		if v := breakerOpen(t, sc, kind); v != 0 {
			t.Errorf("circuit_breaker_open{kind=%s} = %v after client-side garbage and API 5xx pages", kind, v)
		}
	}
	if r := do(t, mustRequest(t, http.MethodGet, sc.srv.URL+"/legacy/echo")); r.status != http.StatusTeapot {
		t.Errorf("a victim's page = %d %s", r.status, r.raw)
	}
	if r, _ := sc.pull(t, "alice", "g", nil); r.status != 200 {
		t.Errorf("a victim's pull = %d %s", r.status, r.raw)
	}
}

// TestPoisonClientCannotOpenTheBreaker: with default settings, one client
// whose mutation the API answers 500 every time, re-pushed back to back (10
// times, then 8 at once), does not stop another user's pushes; a real
// outage (503 to every user's calls) still opens the breaker, after which
// pushes fail without calling the API.
func TestPoisonClientCannotOpenTheBreaker(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	var outage atomic.Bool
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.Method == http.MethodPost && outage.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
		case r.Method == http.MethodPost && r.Header.Get("Authorization") == "Bearer mallory":
			w.WriteHeader(http.StatusInternalServerError)
		default:
			return false
		}
		return true
	})
	sc := h.start()
	poison := create("m", 1, "poison")
	for range 10 {
		sc.push(t, "mallory", "gm", poison)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); sc.push(t, "mallory", "gm", poison) }()
	}
	wg.Wait()
	if r := sc.push(t, "alice", "ga", create("a", 1, "a")); r.status != 200 || r.json["applied"] != 1.0 {
		t.Fatalf("another user's push after the poison client's = %d %s", r.status, r.raw)
	}
	// A real outage: every user's writes answer 503.
	outage.Store(true)
	for i := range 5 {
		sc.push(t, fmt.Sprint("user", i), fmt.Sprint("g", i), create(fmt.Sprint("c", i), 1, "x"))
	}
	if v := breakerOpen(t, sc, "mutation"); v != 1 {
		t.Fatalf("circuit_breaker_open{kind=mutation} = %v after an outage of 5 users' calls, want 1", v)
	}
	calls := h.up.MutationCalls()
	if r := sc.push(t, "alice", "ga", create("a", 2, "b")); r.status != 503 || !strings.Contains(r.str("cause"), "circuit breaker open") {
		t.Errorf("push during the outage = %d %s; want 503 from the open breaker", r.status, r.raw)
	}
	if n := h.up.MutationCalls() - calls; n != 0 {
		t.Errorf("%d calls reached the API through the open breaker", n)
	}
}

// TestBreakerRecoversQuickly: during an outage of the write path the API
// sees few trial calls (the open period doubles from 250 ms up to
// SIDECAR_BREAKER_OPEN_TIMEOUT, 1 s by default), and once it answers
// normally pushes apply again within about one open period.
func TestBreakerRecoversQuickly(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	var outage atomic.Bool
	var trials atomic.Int64
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && outage.Load() {
			trials.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	sc := h.start()
	outage.Store(true)
	for i := range 5 {
		sc.push(t, "alice", fmt.Sprint("g", i), create(fmt.Sprint("c", i), 1, "x"))
	}
	if !sc.sc.core.Parts.Upstream.Mutation.Suspended() {
		t.Fatal("the outage did not open the mutation breaker")
	}
	trials.Store(0)
	begin := time.Now()
	for time.Since(begin) < 2*time.Second { // clients keep pushing back to back
		sc.push(t, "alice", "g0", create("c0", 1, "x"))
	}
	if n := trials.Load(); n > 6 {
		t.Errorf("%d trial calls reached the API in 2 s of outage; want a few a second at most", n)
	}
	outage.Store(false)
	back := time.Now()
	proxytest.WaitFor(t, "a push to apply after the outage", func() bool {
		r := sc.push(t, "alice", "g0", create("c0", 1, "x"))
		return r.status == 200
	})
	took := time.Since(back)
	t.Logf("%d trial calls in 2 s of outage; pushes applied again %s after the API recovered", trials.Load(), took)
	if took > 2*time.Second {
		t.Errorf("pushes applied again only %s after the API recovered; want about one open period (1 s)", took)
	}
}

// TestVictimPullsWhileAnAttackerSendsGarbage: an anonymous client sends
// malformed chunked requests at 10 a second while a victim pulls; every
// victim pull succeeds (before: 50 of 50 failed once the breaker opened).
func TestVictimPullsWhileAnAttackerSendsGarbage(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil) // default breaker settings
	sc := h.start()
	addr := strings.TrimPrefix(sc.srv.URL, "http://")
	stop := make(chan struct{})
	var sent atomic.Int64
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				continue
			}
			_, _ = io.WriteString(conn, "POST /nonexistent HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nnot a chunk\r\n")
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, _ = io.ReadAll(conn)
			_ = conn.Close()
			sent.Add(1)
		}
	}()
	var ok, total int
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		r, _ := sc.pull(t, "alice", "g", nil)
		total++
		if r.status == 200 {
			ok++
		}
		if p := do(t, mustRequest(t, http.MethodGet, sc.srv.URL+"/legacy/echo")); p.status == http.StatusTeapot {
			ok++
		}
		total++
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	t.Logf("victim: %d of %d pulls and pages succeeded while %d malformed requests were sent", ok, total, sent.Load())
	if ok != total || sent.Load() < 10 {
		t.Errorf("victim: %d of %d succeeded (%d garbage requests sent); want all", ok, total, sent.Load())
	}
}
