package proxy

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestReviewAChangeAfterBoardingRefusesNoRider: a pull of alice's group
// that boards a running fetch of it, and only then sees another user's
// push routed (while the fetch still runs), cannot have been poked for
// that push: it is answered from the fetch it rode, which fetches the
// view once. Since the leader judges its riders by the count of routed
// changes read at the seal (bb9c7a9), any change routed anywhere while
// the fetch runs refuses every rider, also those that boarded before it;
// each then waits for one more fetch, or leads its own. Before bb9c7a9
// each rider read the count as it boarded, and this one was answered. The
// count is one for the whole database, so on a sidecar whose users push
// more often than a fetch lasts, hardly any pull is merged.
func TestReviewAChangeAfterBoardingRefusesNoRider(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_POKE_SCOPE": "user"})
	sc := h.start()
	if r := sc.push(t, "alice", "g", create("c1", 1, "a1")); r.status != http.StatusOK {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	first := newReplica()
	sc.pullInto(t, "alice", "g", first)
	second := first.clone() // another tab of the group: the same cookie
	var fetches atomic.Int64
	var hold atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && r.URL.Path == "/api/todos" && r.Header.Get("Authorization") == "Bearer alice" {
			fetches.Add(1)
			if hold.CompareAndSwap(true, false) {
				close(held)
				<-release
			}
		}
		return false
	})
	hold.Store(true)
	lead := make(chan struct{})
	go func() { defer close(lead); sc.pullInto(t, "alice", "g", first) }()
	<-held // the leader's fetch has begun
	ride := make(chan struct{})
	go func() { defer close(ride); sc.pullInto(t, "alice", "g", second) }()
	// It rides: the leader holds one of the group's two turns, so a pull
	// that led would take the other and wait for the row lock, not here.
	proxytest.WaitFor(t, "the second pull to board the leader's fetch", func() bool {
		return sc.sc.turns.Waiting() > 0
	})
	// Only now is another user's write routed: it pokes nobody of alice's.
	if r := sc.push(t, "bob", "g-bob", create("c-bob", 1, "b1")); r.status != http.StatusOK {
		t.Fatalf("bob's push = %d %s", r.status, r.raw)
	}
	once.Do(func() { close(release) })
	<-lead
	<-ride
	if n := fetches.Load(); n != 1 {
		t.Errorf("two pulls of alice's group, the second boarding the first's fetch before bob's push, fetched the view %d times; want once", n)
	}
	if _, ok := second.state["todo/a1"]; !ok {
		t.Errorf("the rider's client lacks alice's todo: %v", second.state)
	}
}
