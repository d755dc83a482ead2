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
// view once. (The count of routed changes is one for the whole database:
// judged only by the count at the seal, any change routed while the fetch
// ran refused every rider, and a sidecar whose users push more often than
// a fetch lasts merged hardly any pull. A rider's own count, read after it
// boarded, tells them apart.)
func TestReviewAChangeAfterBoardingRefusesNoRider(t *testing.T) {
	t.Parallel()
	f := heldFetchOfAlice(t)
	sc, second := f.sc, f.second
	ride := make(chan struct{})
	go func() { defer close(ride); sc.pullInto(t, "alice", "g", second) }()
	// It rides: the leader holds one of the group's two turns, so a pull
	// that led would take the other and wait for the row lock, not here.
	proxytest.WaitFor(t, "the second pull to board the leader's fetch", func() bool {
		return sc.sc.core.Turns.Waiting() > 0
	})
	// Only now is another user's write routed: it pokes nobody of alice's.
	if r := sc.push(t, "bob", "g-bob", create("c-bob", 1, "b1")); r.status != http.StatusOK {
		t.Fatalf("bob's push = %d %s", r.status, r.raw)
	}
	f.release()
	<-f.lead
	<-ride
	if n := f.fetches.Load(); n != 1 {
		t.Errorf("two pulls of alice's group, the second boarding the first's fetch before bob's push, fetched the view %d times; want once", n)
	}
	if _, ok := second.state["todo/a1"]; !ok {
		t.Errorf("the rider's client lacks alice's todo: %v", second.state)
	}
}

// heldFetch is a fetch of alice's group "g" (one todo) whose read of
// /api/todos is held until release: led by a pull of one tab (first; lead
// closes when it is answered), with another tab (second) holding the same
// cookie, ready to pull. fetches counts alice's reads of /api/todos.
type heldFetch struct {
	h       *harness
	sc      *instance
	second  *replica
	fetches *atomic.Int64
	lead    chan struct{}
	release func()
}

func heldFetchOfAlice(t *testing.T) heldFetch {
	t.Helper()
	return heldFetchOfAliceWith(t, map[string]string{"SIDECAR_POKE_SCOPE": "user"})
}

// heldFetchOfAliceWith is heldFetchOfAlice with the sidecar's settings env.
func heldFetchOfAliceWith(t *testing.T, env map[string]string) heldFetch {
	t.Helper()
	h := newHarness(t, env)
	sc := h.start()
	if r := sc.push(t, "alice", "g", create("c1", 1, "a1")); r.status != http.StatusOK {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	first := newReplica()
	sc.pullInto(t, "alice", "g", first)
	f := heldFetch{h: h, sc: sc, second: first.clone(), fetches: new(atomic.Int64), lead: make(chan struct{})}
	var hold atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	f.release = func() { once.Do(func() { close(release) }) }
	t.Cleanup(f.release)
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && r.URL.Path == "/api/todos" && r.Header.Get("Authorization") == "Bearer alice" {
			f.fetches.Add(1)
			if hold.CompareAndSwap(true, false) {
				close(held)
				<-release
			}
		}
		return false
	})
	hold.Store(true)
	go func() { defer close(f.lead); sc.pullInto(t, "alice", "g", first) }()
	<-held // the leader's fetch has begun
	return f
}
