package proxy

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// lagSnapshot is replicache_sidecar_change_lag_seconds of some replicas,
// summed: its count and its buckets' cumulative counts.
type lagSnapshot struct {
	count  uint64
	bounds []float64
	counts []uint64
}

// changeLag reads the histogram of insts.
func changeLag(t testing.TB, insts ...*instance) lagSnapshot {
	t.Helper()
	var out lagSnapshot
	for _, inst := range insts {
		found := false
		for _, mf := range mustGather(t, inst) {
			if mf.GetName() != "replicache_sidecar_change_lag_seconds" {
				continue
			}
			found = true
			h := mf.GetMetric()[0].GetHistogram()
			out.count += h.GetSampleCount()
			for i, b := range h.GetBucket() {
				if len(out.bounds) <= i {
					out.bounds, out.counts = append(out.bounds, b.GetUpperBound()), append(out.counts, 0)
				}
				out.counts[i] += b.GetCumulativeCount()
			}
		}
		if !found {
			t.Fatal("no replicache_sidecar_change_lag_seconds")
		}
	}
	return out
}

// since returns how many observations were made since before, and how many
// of those are at most bound (as far as the buckets tell: those in the
// first bucket at or above bound).
func (s lagSnapshot) since(before lagSnapshot, bound time.Duration) (count, within uint64) {
	count, within = s.count-before.count, s.count-before.count
	for i, ub := range s.bounds {
		if ub >= bound.Seconds() {
			prev := uint64(0)
			if i < len(before.counts) {
				prev = before.counts[i]
			}
			within = s.counts[i] - prev
			break
		}
	}
	return count, within
}

// openGroupStream opens a poke stream naming group.
func openGroupStream(t testing.TB, inst *instance, user, group string) *stream {
	t.Helper()
	s := openStreamURL(t, inst.srv.URL+"/replicache/poke?clientGroupID="+url.QueryEscape(group), "Bearer "+user, nil)
	s.waitOpen(t)
	return s
}

// TestChangeLag: a change (a push through replica A, an invalidate for
// one user, a pass-through write through replica B) is observed once per
// client group it pokes, in the
// replica holding the group's stream, when that group's pull answers it,
// whichever replica saw the change: the timestamp travels with the
// announcement. Each observation lies within the test's own measured
// interval from before the change to after the last pull. A pull that
// answers nothing new observes nothing; nor do groups without a stream, a
// stream naming no group, a stream naming someone else's group, or a
// group the change did not poke.
func TestChangeLag(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_INVALIDATE_TOKEN": "s3cret"})
	a, b := h.start(), h.start()
	runPokes(t, a, b)
	type watcher struct {
		user, group string
		inst        *instance // holds its stream, answers its pulls
		stream      *stream
		rep         *replica
	}
	watchers := []*watcher{
		{user: "alice", group: "alice-tab", inst: b},
		{user: "bob", group: "bob-tab", inst: b},
		{user: "carol", group: "carol-tab", inst: a},
	}
	for _, w := range watchers {
		w.stream, w.rep = openGroupStream(t, w.inst, w.user, w.group), newReplica()
		w.inst.pullInto(t, w.user, w.group, w.rep) // the replica knows the group's cookie
	}
	// Streams that must not count: no group; mallory naming bob's group.
	openStream(t, b, "Bearer dave", nil).waitOpen(t)
	openGroupStream(t, b, "mallory", "bob-tab")
	dave, phone := newReplica(), newReplica() // dave's stream names no group; alice's phone has none
	b.pullInto(t, "dave", "dave-tab", dave)
	a.pullInto(t, "alice", "alice-phone", phone)

	// pullAfterPoke waits for each poked watcher's poke, then has every
	// watcher pull through its replica.
	pullAfterPoke := func(poked ...*watcher) {
		t.Helper()
		for _, w := range poked {
			if e := w.stream.next(5 * time.Second); e != "poke" {
				t.Fatalf("%s's stream: %q, want a poke", w.user, e)
			}
		}
		for _, w := range watchers {
			w.inst.pullInto(t, w.user, w.group, w.rep)
		}
		b.pullInto(t, "dave", "dave-tab", dave)
		a.pullInto(t, "alice", "alice-phone", phone)
	}

	step := func(what string, change func(), want uint64, poked ...*watcher) {
		t.Helper()
		before := changeLag(t, a, b)
		start := time.Now()
		change()
		pullAfterPoke(poked...)
		elapsed := time.Since(start)
		if n, within := changeLag(t, a, b).since(before, elapsed); n != want || within != want {
			t.Errorf("%s: %d observations, %d of them within the %v it took; want %d, all within", what, n, within, elapsed, want)
		}
	}
	step("a push through A, poking 3 watched groups (2 on B)", func() {
		if r := a.push(t, "alice", "alice-phone", create("p1", 1, "x")); r.status != http.StatusOK {
			t.Fatalf("push = %d %s", r.status, r.raw)
		}
	}, 3, watchers...)
	if ca := changeLag(t, a).count; ca != 1 {
		t.Errorf("replica A (the pusher's, holding carol's stream) observed %d, want 1", ca)
	}
	step("pulls answering nothing new", func() {}, 0)
	step("the invalidate hook for bob", func() {
		if r := a.post(t, "/replicache/invalidate", "Bearer s3cret", `{"users": ["bob"]}`); r.status != http.StatusAccepted {
			t.Fatalf("invalidate = %d %s", r.status, r.raw)
		}
	}, 1, watchers[1])
	step("a write through the pass-through by carol, on B", func() {
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/api/todos", strings.NewReader(`{"id":"w1","title":"direct"}`))
		req.Header.Set("Authorization", "Bearer carol")
		req.Header.Set("Content-Type", "application/json")
		if r := do(t, req); r.status != http.StatusCreated {
			t.Fatalf("pass-through write = %d %s", r.status, r.raw)
		}
	}, 3, watchers...)
}
