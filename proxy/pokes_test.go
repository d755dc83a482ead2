package proxy

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// seriesValue reads the value of a gauge or counter without labels.
func seriesValue(t testing.TB, inst *instance, name string) float64 {
	t.Helper()
	for _, mf := range mustGather(t, inst) {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// runPokes runs the instances' poke buses until the test ends, and waits
// until they listen.
func runPokes(t testing.TB, insts ...*instance) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, inst := range insts {
		wg.Add(1)
		go func() { defer wg.Done(); inst.sc.runPokes(ctx) }()
	}
	// Listening, and past the poke every listener sends its local streams
	// once it listens (none are open yet).
	proxytest.WaitFor(t, "the poke listeners", func() bool {
		for _, inst := range insts {
			if !inst.sc.core.Bus.Listening() || inst.sc.core.Hub.Generation("") == 0 {
				return false
			}
		}
		return true
	})
}

// TestPokesFromPushes: a push that applied or rejected mutations pokes
// every stream (scope all), coalesced: a 100-mutation push is a poke or
// two per stream, not a hundred; one that changed nothing pokes nobody.
// Under scope user only the pusher's streams are poked.
func TestPokesFromPushes(t *testing.T) {
	t.Parallel()
	for _, scope := range []string{"all", "user"} {
		t.Run(scope, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, map[string]string{"SIDECAR_POKE_SCOPE": scope})
			a := h.start()
			runPokes(t, a)
			alice, bob := openStream(t, a, "Bearer alice", nil), openStream(t, a, "Bearer bob", nil)
			alice.waitOpen(t)
			bob.waitOpen(t)
			// pokes counts a stream's pokes for what was just done: the
			// first, however late it comes under load, and those within
			// 500 ms of it.
			pokes := func(s *stream) int {
				if s.next(5*time.Second) != "poke" {
					return 0
				}
				return 1 + s.count(500*time.Millisecond)
			}
			var muts []mut
			for i := int64(1); i <= 100; i++ {
				muts = append(muts, create("c1", i, fmt.Sprint("t", i)))
			}
			if r := a.push(t, "alice", "g", muts...); r.status != 200 {
				t.Fatalf("push = %d %s", r.status, r.raw)
			}
			n := pokes(alice)
			t.Logf("scope %s: %d pokes for a 100-mutation push", scope, n)
			if n < 1 || n > 3 {
				t.Errorf("alice's stream got %d pokes for one 100-mutation push; want 1 to 3", n)
			}
			if scope == "all" {
				if bob.next(5*time.Second) != "poke" {
					t.Errorf("scope all: bob's stream got no poke for alice's push")
				}
			} else if nb := bob.count(300 * time.Millisecond); nb > 0 {
				t.Errorf("scope %s: bob's stream got %d pokes for alice's push", scope, nb)
			}
			// Nothing new: no poke.
			if r := a.push(t, "alice", "g", muts[99]); r.status != 200 {
				t.Fatalf("push = %d %s", r.status, r.raw)
			}
			if n := alice.count(300 * time.Millisecond); n != 0 {
				t.Errorf("a push of an already processed mutation poked %d times", n)
			}
			if got := testutil.ToFloat64(a.sc.core.Metrics.PokeNotifications.WithLabelValues("push")); got != 1 {
				t.Errorf(`poke_notifications_total{source="push"} = %v, want 1`, got)
			}
			// A burst of 10 pushes (10 groups at once) is coalesced too.
			var wg sync.WaitGroup
			for i := range 10 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					a.push(t, "alice", fmt.Sprint("burst", i), create(fmt.Sprint("b", i), 1, fmt.Sprint("b", i)))
				}()
			}
			wg.Wait()
			if n := pokes(alice); n < 1 || n > 5 {
				t.Errorf("a burst of 10 pushes poked %d times; want 1 to 5", n)
			} else {
				t.Logf("a burst of 10 pushes: %d pokes", n)
			}
		})
	}
}

// TestPokesFromPassthroughWrites: a 2xx write through the pass-through
// pokes; a read, or a write the API refused, does not.
func TestPokesFromPassthroughWrites(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := h.start()
	runPokes(t, a)
	s := openStream(t, a, "Bearer alice", nil)
	s.waitOpen(t)
	call := func(method, path, body string) int {
		req, _ := http.NewRequest(method, a.srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("Content-Type", "application/json")
		return do(t, req).status
	}
	if st := call(http.MethodGet, "/api/todos", ""); st != 200 || s.count(300*time.Millisecond) != 0 {
		t.Errorf("a GET through the pass-through (%d) poked", st)
	}
	if st := call(http.MethodPost, "/api/todos", `{"id":"x"}`); st != 422 || s.count(300*time.Millisecond) != 0 {
		t.Errorf("a refused write through the pass-through (%d) poked", st)
	}
	if st := call(http.MethodPost, "/api/todos", `{"id":"x","title":"legacy client"}`); st != 201 || s.next(2*time.Second) != "poke" {
		t.Errorf("a 2xx write through the pass-through (%d) did not poke", st)
	}
	if got := testutil.ToFloat64(a.sc.core.Metrics.PokeNotifications.WithLabelValues("passthrough")); got != 1 {
		t.Errorf(`poke_notifications_total{source="passthrough"} = %v, want 1`, got)
	}
}

// TestPassthroughWritesUnderUserScope: under SIDECAR_POKE_SCOPE=user a
// pass-through write pokes its user's streams when the user comes in the
// trusted header, and nobody when the writer is unknown (never everyone).
func TestPassthroughWritesUnderUserScope(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_POKE_SCOPE": "user", "SIDECAR_USER_ID_HEADER": "X-User", "SIDECAR_AUTH_PATH": ""})
	a := h.start()
	runPokes(t, a)
	alice := openStream(t, a, "", map[string]string{"X-User": "alice"})
	bob := openStream(t, a, "", map[string]string{"X-User": "bob"})
	alice.waitOpen(t)
	bob.waitOpen(t)
	n := 0
	write := func(hdr map[string]string) {
		n++
		req, _ := http.NewRequest(http.MethodPost, a.srv.URL+"/api/todos", strings.NewReader(fmt.Sprintf(`{"id":"w%d","title":"x"}`, n)))
		req.Header.Set("Authorization", "Bearer alice") // the API's own check
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		if r := do(t, req); r.status/100 != 2 {
			t.Fatalf("pass-through write = %d %s", r.status, r.raw)
		}
	}
	write(map[string]string{"X-User": "alice"}) // from loopback: a trusted proxy
	if alice.next(2*time.Second) != "poke" || bob.count(300*time.Millisecond) != 0 {
		t.Error("alice's identified write did not poke alice alone")
	}
	write(nil) // the sidecar does not know whose
	if n := alice.count(300*time.Millisecond) + bob.count(300*time.Millisecond); n != 0 {
		t.Errorf("an unidentified write poked %d streams under scope user", n)
	}
}

// TestInvalidate: the hook needs its token; it pokes everyone, or the
// users it names.
func TestInvalidate(t *testing.T) {
	t.Parallel()
	post := func(inst *instance, auth, body string) response {
		req, _ := http.NewRequest(http.MethodPost, inst.srv.URL+"/replicache/invalidate", strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		return do(t, req)
	}
	if r := post(newHarness(t, nil).start(), "Bearer x", ""); r.status != http.StatusNotFound {
		t.Errorf("invalidate without a configured token = %d, want 404", r.status)
	}
	h := newHarness(t, map[string]string{"SIDECAR_INVALIDATE_TOKEN": "s3cret"})
	a := h.start()
	runPokes(t, a)
	alice, bob := openStream(t, a, "Bearer alice", nil), openStream(t, a, "Bearer bob", nil)
	alice.waitOpen(t)
	bob.waitOpen(t)
	for _, auth := range []string{"", "Bearer wrong", "s3cret"} {
		if r := post(a, auth, ""); r.status != http.StatusUnauthorized {
			t.Errorf("invalidate with Authorization %q = %d, want 401", auth, r.status)
		}
	}
	if alice.count(200*time.Millisecond)+bob.count(200*time.Millisecond) != 0 {
		t.Error("a refused invalidate poked")
	}
	if r := post(a, "Bearer s3cret", ""); r.status != http.StatusAccepted || alice.next(2*time.Second) != "poke" || bob.next(2*time.Second) != "poke" {
		t.Errorf("invalidate for everyone = %d %s; both streams should be poked", r.status, r.raw)
	}
	if r := post(a, "Bearer s3cret", `{"users":["bob"]}`); r.status != http.StatusAccepted || bob.next(2*time.Second) != "poke" {
		t.Errorf("invalidate for bob = %d %s; bob's stream should be poked", r.status, r.raw)
	}
	if n := alice.count(300 * time.Millisecond); n != 0 {
		t.Errorf("invalidate for bob poked alice %d times", n)
	}
	for _, body := range []string{`{"users":`, `{"user":["bob"]}`} {
		if r := post(a, "Bearer s3cret", body); r.status != http.StatusBadRequest {
			t.Errorf("invalidate with body %s = %d, want 400", body, r.status)
		}
	}
	if r := post(a, "bearer s3cret", `{"users":["alice"]}`); r.status != http.StatusAccepted || alice.next(2*time.Second) != "poke" {
		t.Errorf("invalidate with a lower-case scheme = %d %s; want 202 and a poke", r.status, r.raw)
	}
}

// TestPokesAcrossReplicas: a push through one replica pokes a stream held
// by another, through the database; when the listening connection is
// killed it comes back and pokes its streams once (an announcement may
// have been missed); streams end when the replica drains.
func TestPokesAcrossReplicas(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a, b := h.start(), h.start()
	runPokes(t, a, b)
	s := openStream(t, a, "Bearer alice", nil)
	s.waitOpen(t)
	start := time.Now()
	if r := b.push(t, "alice", "g", create("c1", 1, "x")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	if e := s.next(5 * time.Second); e != "poke" {
		t.Fatalf("a stream on replica A after a push through B: %q, want a poke", e)
	}
	t.Logf("push through B to poke on A: %v", time.Since(start))

	// Kill both listening connections (A's and B's).
	var killed int
	err := a.pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = 'replicache-sidecar poke listener' AND query LIKE '%' || $1 || '%'`, h.schema).Scan(&killed)
	if err != nil || killed != 2 {
		t.Fatalf("terminated %d listeners (%v), want 2", killed, err)
	}
	if e := s.next(10 * time.Second); e != "poke" {
		t.Fatalf("after the listener came back: %q, want a catch-up poke", e)
	}
	proxytest.WaitFor(t, "the listeners to be back", func() bool { return a.sc.core.Bus.Listening() && b.sc.core.Bus.Listening() })
	if r := b.push(t, "alice", "g", create("c1", 2, "y")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	if e := s.next(5 * time.Second); e != "poke" {
		t.Fatalf("a push through B after the reconnect: %q, want a poke", e)
	}

	// Draining (the load balancer may still send streams): streams go on
	// and new ones open; at shutdown they end, and new ones are refused.
	a.sc.Drain()
	if again := openStream(t, a, "Bearer alice", nil); again.status != http.StatusOK {
		t.Errorf("a new stream on a draining replica = %d, want 200", again.status)
	}
	if e := s.next(200 * time.Millisecond); e != "" {
		t.Errorf("stream while draining: %q, want it to go on", e)
	}
	a.sc.closePokes()
	if e := s.next(5 * time.Second); e != "end" {
		t.Errorf("stream at shutdown: %q, want its end", e)
	}
	if again := openStream(t, a, "Bearer alice", nil); again.status != http.StatusServiceUnavailable {
		t.Errorf("a new stream on a replica shutting down = %d, want 503", again.status)
	}
}

// TestPokeReconnectCatchesUp: a stream reopened by EventSource (it sends
// the last event id it saw) gets a poke at once: pokes may have been
// missed while it was down.
func TestPokeReconnectCatchesUp(t *testing.T) {
	t.Parallel()
	a := newHarness(t, nil).start()
	fresh := openStream(t, a, "Bearer alice", nil)
	fresh.waitOpen(t)
	if e := fresh.next(300 * time.Millisecond); e != "" {
		t.Errorf("a new stream got %q before anything changed", e)
	}
	again := openStream(t, a, "Bearer alice", map[string]string{"Last-Event-ID": "1"})
	again.waitOpen(t)
	if e := again.next(2 * time.Second); e != "poke" {
		t.Errorf("a reopened stream got %q, want a catch-up poke", e)
	}
}

// TestPokedPullDoesNotJoinAnOlderFetch: a pull that comes after a poke does
// not share a view fetch that began before the poke (the change may have
// been made after that fetch read its page).
func TestPokedPullDoesNotJoinAnOlderFetch(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_POKE_COALESCE": "0s"})
	a := h.start()
	fetches := slowView(h, "alice", 400*time.Millisecond)
	first := make(chan response, 1)
	go func() {
		r, _ := a.pull(t, "alice", "g", nil)
		first <- r
	}()
	proxytest.WaitFor(t, "the first fetch", func() bool { return fetches.Load() == 1 })
	a.sc.core.Bus.Publish(nil) // a change elsewhere: every client is poked
	if r, _ := a.pull(t, "alice", "g", nil); r.status != 200 {
		t.Fatalf("poked pull = %d %s", r.status, r.raw)
	}
	if r := <-first; r.status != 200 {
		t.Fatalf("first pull = %d %s", r.status, r.raw)
	}
	if n := fetches.Load(); n != 2 {
		t.Errorf("%d view fetches; the poked pull should have fetched again", n)
	}
	if merged := testutil.ToFloat64(a.sc.core.Metrics.PullsMerged); merged != 0 {
		t.Errorf("%v pulls merged into a fetch older than a poke", merged)
	}
}

// BenchmarkPokeLatency: from a push's answer through replica B to the poke
// on a stream held by replica A (through Postgres NOTIFY), per push;
// reported as median and p99, and without the coalescing window (what the
// path itself costs).
func BenchmarkPokeLatency(b *testing.B) {
	// Back-to-back pushes by one user would be paced to one poke per
	// SIDECAR_POKE_CALLER_INTERVAL: off here, to measure the path.
	h := newHarness(b, map[string]string{"SIDECAR_POKE_CALLER_INTERVAL": "0s"})
	a, bb := h.start(), h.start()
	runPokes(b, a, bb)
	s := openStream(b, a, "Bearer alice", nil)
	s.waitOpen(b)
	var lat []time.Duration
	for i := 0; b.Loop(); i++ {
		if r := bb.push(b, "alice", "g", create("c1", int64(i+1), fmt.Sprint("t", i))); r.status != 200 {
			b.Fatalf("push = %d %s", r.status, r.raw)
		}
		t0 := time.Now()
		if e := s.next(5 * time.Second); e != "poke" {
			b.Fatalf("no poke: %q", e)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "median-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64((lat[len(lat)/2]-a.sc.core.Cfg.PokeCoalesce).Microseconds())/1000, "median-minus-window-ms")
}
