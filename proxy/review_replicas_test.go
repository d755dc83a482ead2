package proxy

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestReviewRoutedDeleteReachesAPullElsewhere: a client whose poke stream
// is on replica A (where a delete was routed) pulls through replica B
// (a load balancer without sticky sessions) as soon as it is poked. That
// one pull must bring the del: the client is not poked again. Replica B
// learns of the delete only from A's announcement on the database's
// NOTIFY channel, which may reach it after the client's pull (its
// listener behind, or reconnecting: here, not yet listening); B then
// reads the source by its changes, which never show a hard delete, and
// the client holds the deleted item until the group's next full read
// (fullEvery, 10 minutes by default) or another poke.
func TestReviewRoutedDeleteReachesAPullElsewhere(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	seed(api, "alice", 10)
	h := deltaHarness(t, api, "10m", nil)
	a, b := h.start(), h.start()
	runPokes(t, a) // B has not heard A's announcements yet
	writer, reader := newReplica(), newReplica()
	a.pullInto(t, "alice", "ga", writer)
	b.pullInto(t, "alice", "gb", reader)
	s := openStream(t, a, "Bearer alice", nil) // the reader's stream, on A
	s.waitOpen(t)
	if r := a.push(t, "alice", "ga", mut{"ca", 1, "deleteTodo", map[string]any{"id": "t003"}}); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	if e := s.next(5 * time.Second); e != "poke" {
		t.Fatalf("the reader's stream got %q, want a poke", e)
	}
	b.pullInto(t, "alice", "gb", reader) // the one pull the poke causes
	if _, has := reader.state["todo/t003"]; has {
		t.Error("the reader, poked after a delete routed through A, pulled through B and still holds todo/t003")
	}
}

// TestReviewRiderAfterAPokeElsewhere: a pull may ride on a running fetch
// of its group only when no poke came since the fetch began (the hub's
// generation), because a change made after the fetch read the API is
// not in its answer. That generation is this replica's: a client poked by
// replica A (a change through A) that pulls through replica B, before B
// has heard A's announcement, rides on a fetch B began before the change,
// and gets a view without it; the poke that caused the pull is not
// repeated, so the client lacks the change until its next poke or
// periodic pull.
func TestReviewRiderAfterAPokeElsewhere(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPIHandler()
	seed(api, "alice", 5)
	// The leader's read of /api/todos is answered, then held until the
	// change is made and the rider has joined.
	var hold atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	api.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, r)
		if r.Method == http.MethodGet && r.URL.Path == "/api/todos" && hold.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	t.Cleanup(api.Server.Close)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the server closes
	h := deltaHarness(t, api, "10m", nil)
	a, b := h.start(), h.start()
	runPokes(t, a) // B has not heard A's announcements yet
	tab1 := newReplica()
	b.pullInto(t, "alice", "g", tab1)
	tab2 := tab1.clone() // another tab of the group: the same cookie
	s := openStream(t, a, "Bearer alice", nil)
	s.waitOpen(t)

	hold.Store(true)
	lead := make(chan struct{})
	go func() { defer close(lead); b.pullInto(t, "alice", "g", tab1) }()
	<-held // the leader's fetch has read /api/todos
	if r := a.push(t, "alice", "other", create("co", 1, "fresh")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	if e := s.next(5 * time.Second); e != "poke" {
		t.Fatalf("the stream got %q, want a poke", e)
	}
	ride := make(chan struct{})
	go func() { defer close(ride); b.pullInto(t, "alice", "g", tab2) }() // the pull the poke causes
	// It rides on the leader's fetch, or (as it should) waits for the
	// group's lock to make its own.
	h.waitRideOrWait(t, b, "the pull to ride or wait")
	once.Do(func() { close(release) })
	<-lead
	<-ride
	if _, has := tab2.state["todo/fresh"]; !has {
		t.Error("the tab, poked after a create through A, pulled through B and lacks todo/fresh")
	}
}
