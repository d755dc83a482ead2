package proxy

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// timedPush is one push's status and time.
func timedPush(t *testing.T, sc *instance, user, group string, m mut) (response, time.Duration) {
	t.Helper()
	start := time.Now()
	r := sc.push(t, user, group, m)
	return r, time.Since(start)
}

// slowView makes the legacy API take d for each of user's todo views, and
// counts those fetches.
func slowView(h *harness, user string, d time.Duration) *atomic.Int64 {
	var fetches atomic.Int64
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && r.URL.Path == "/api/todos" && r.Header.Get("Authorization") == "Bearer "+user {
			fetches.Add(1)
			time.Sleep(d)
		}
		return false
	})
	return &fetches
}

// TestPullBurstOfOneGroup: 30 pulls of one client group at once, with a view
// that takes 0.5 s, neither starve another user's push (it waits for no
// connection) nor cost one fetch each (they share one); every answer is
// correct: its own cookie, strictly increasing for the group, and a patch
// consistent with its lastMutationIDChanges.
func TestPullBurstOfOneGroup(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	for i := int64(1); i <= 3; i++ {
		if r := sc.push(t, "alice", "g-alice", create("c1", i, fmt.Sprint("a", i))); r.status != 200 {
			t.Fatalf("setup push = %d %s", r.status, r.raw)
		}
	}
	fetches := slowView(h, "alice", 500*time.Millisecond)

	var unloaded []time.Duration
	for i := int64(1); i <= 3; i++ {
		r, d := timedPush(t, sc, "bob", "g-bob", create("c-bob", i, fmt.Sprint("b", i)))
		if r.status != 200 {
			t.Fatalf("bob's push = %d %s", r.status, r.raw)
		}
		unloaded = append(unloaded, d)
	}

	const pulls = 30
	results := make([]pullResult, pulls)
	statuses := make([]int, pulls)
	var wg sync.WaitGroup
	for i := range pulls {
		wg.Go(func() {
			r, pr := sc.pull(t, "alice", "g-alice", nil)
			statuses[i], results[i] = r.status, pr
		})
	}
	time.Sleep(100 * time.Millisecond) // the burst is in flight
	var loaded []time.Duration
	for i := int64(4); i <= 6; i++ {
		r, d := timedPush(t, sc, "bob", "g-bob", create("c-bob", i, fmt.Sprint("b", i)))
		if r.status != 200 {
			t.Fatalf("bob's push during the burst = %d %s", r.status, r.raw)
		}
		loaded = append(loaded, d)
	}
	wg.Wait()

	orders := map[int64]bool{}
	for i, pr := range results {
		if statuses[i] != 200 {
			t.Fatalf("pull %d = %d", i, statuses[i])
		}
		if orders[pr.Cookie.Order] {
			t.Errorf("cookie order %d issued twice", pr.Cookie.Order)
		}
		orders[pr.Cookie.Order] = true
		// The patch holds the effects of exactly the mutations reported.
		keys := pr.keys(t)
		if pr.LastMutationIDChanges["c1"] != 3 || !slices.Contains(keys, "todo/a1") || !slices.Contains(keys, "todo/a3") || len(keys) != 4 {
			t.Errorf("pull %d: lmids %v with keys %v", i, pr.LastMutationIDChanges, keys)
		}
	}
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	merged := testutil.ToFloat64(sc.sc.core.Metrics.PullsMerged)
	t.Logf("bob's push: %v unloaded, %v during 30 pulls of another group (medians); %d view fetches for %d pulls (%v merged)",
		med(unloaded), med(loaded), fetches.Load(), pulls, merged)
	if n := fetches.Load(); n > 3 {
		t.Errorf("%d upstream view fetches for %d concurrent pulls; want a handful", n, pulls)
	}
	if int(merged)+int(fetches.Load()) < pulls {
		t.Errorf("pulls_merged_total %v + %d fetches < %d pulls", merged, fetches.Load(), pulls)
	}
	// Starved, it would wait for the 0.5 s fetches; isolated, it costs
	// about what it costs alone.
	if m := med(loaded); m > 250*time.Millisecond && m > 10*med(unloaded) {
		t.Errorf("another group's push took %v during the burst (%v alone)", m, med(unloaded))
	}
	if sc.sc.core.Turns.Keys() != 0 || sc.sc.core.Turns.Waiting() != 0 {
		t.Errorf("turns left behind: %d groups, %d waiting", sc.sc.core.Turns.Keys(), sc.sc.core.Turns.Waiting())
	}
}

// Beyond SIDECAR_MAX_WAITING_PER_GROUP a push answers 503 GroupBusy with
// Retry-After at once, and loses nothing: pushed again, it applies.
func TestGroupWaitingBound(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_MAX_WAITING_PER_GROUP": "2", "SIDECAR_MAX_CONNS_PER_GROUP": "1"})
	sc := h.start()
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost {
			time.Sleep(300 * time.Millisecond)
		}
		return false
	})
	const n = 6
	type res struct {
		r response
		d time.Duration
	}
	out := make([]res, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, d := timedPush(t, sc, "alice", "g", create(fmt.Sprint("c", i), 1, fmt.Sprint("t", i)))
			out[i] = res{r, d}
		})
	}
	wg.Wait()
	var busy []int
	for i, o := range out {
		switch {
		case o.r.status == 200:
		case o.r.status == http.StatusServiceUnavailable && o.r.str("error") == "GroupBusy" && o.r.header.Get("Retry-After") != "":
			busy = append(busy, i)
			if o.d > 250*time.Millisecond {
				t.Errorf("push %d waited %v before GroupBusy; want at once", i, o.d)
			}
		default:
			t.Errorf("push %d = %d %s", i, o.r.status, o.r.raw)
		}
	}
	if len(busy) < n-3 {
		t.Errorf("%d of %d pushes refused as GroupBusy; at most 1 running and 2 waiting may be served", len(busy), n)
	}
	if got := testutil.ToFloat64(sc.sc.core.Metrics.GroupBusy); int(got) != len(busy) {
		t.Errorf("group_busy_total = %v, want %d", got, len(busy))
	}
	for _, i := range busy {
		if r := sc.push(t, "alice", "g", create(fmt.Sprint("c", i), 1, fmt.Sprint("t", i))); r.status != 200 || r.json["applied"] != 1.0 {
			t.Errorf("push %d again = %d %s", i, r.status, r.raw)
		}
	}
	if got := h.up.TodoIDs("alice"); len(got) != n {
		t.Errorf("todos %v, want all %d", got, n)
	}
}
