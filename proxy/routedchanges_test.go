package proxy

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/flight"
)

// TestRoutedChangesMoveBeforeTheirPokes: every write the sidecar routes
// and pokes for (a push's mutation, a pass-through write, the invalidate
// hook) has moved the count of routed changes by the time its poke
// arrives: a pull the poke causes, through any replica, reads a count
// above that of a fetch begun before the write, and does not ride on it
// (TestReviewRiderAfterAPokeElsewhere).
func TestRoutedChangesMoveBeforeTheirPokes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_INVALIDATE_TOKEN": "tok", "SIDECAR_POKE_CALLER_INTERVAL": "0s"})
	a := h.start()
	runPokes(t, a)
	s := openStream(t, a, "Bearer alice", nil)
	s.waitOpen(t)
	count := func() int64 {
		t.Helper()
		n, err := a.sc.store.ChangeCount(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	send := func(method, path, auth, body string) response {
		req, _ := http.NewRequest(method, a.srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", "application/json")
		return do(t, req)
	}
	for _, c := range []struct {
		name  string
		write func() response
	}{
		// A push's mutation: with its settlement, in the COMMIT's round trip.
		{"push", func() response { return a.push(t, "alice", "g", create("c1", 1, "pushed")) }},
		// A pass-through write, its writer identified by the auth call.
		{"pass-through", func() response {
			return send(http.MethodPost, "/api/todos", "Bearer alice", `{"id":"passed","title":"legacy client"}`)
		}},
		// The legacy service's own voice.
		{"invalidate", func() response { return send(http.MethodPost, "/replicache/invalidate", "Bearer tok", "") }},
	} {
		before := count()
		if r := c.write(); r.status/100 != 2 {
			t.Fatalf("%s = %d %s", c.name, r.status, r.raw)
		}
		if e := s.next(5 * time.Second); e != "poke" {
			t.Fatalf("%s: the stream got %q, want a poke", c.name, e)
		}
		if after := count(); after <= before {
			t.Errorf("%s: the count of routed changes is %d at its poke, as before it; want it moved", c.name, after)
		}
	}
}

// TestLeaderRefusesRidersAboveItsCount: a pull that boarded before the
// leader read its count of routed changes, with a larger count of its own
// (a change was routed between the two reads), is refused when the flight
// is sealed, and fetches on its own; so is every rider of a leader that
// never read one. The others are answered from the fetch.
func TestLeaderRefusesRidersAboveItsCount(t *testing.T) {
	for _, c := range []struct {
		name    string
		leader  int64 // its count; -1: never read
		riders  []int64
		answers []int64 // the counts of the riders answered
	}{
		{"a change between the reads", 5, []int64{4, 5, 6}, []int64{4, 5}},
		{"none", 5, []int64{5, 5}, []int64{5, 5}},
		{"the leader read none", -1, []int64{0, 3}, nil},
	} {
		var g flight.Group[pullMeta, *pullRider]
		meta := pullMeta{changes: new(atomic.Int64)}
		meta.changes.Store(-1)
		f, _, _ := g.Join("k", meta, nil, nil)
		var riders []*pullRider
		for _, n := range c.riders {
			r := &pullRider{changes: n}
			riders = append(riders, r)
			if _, leader, _ := g.Join("k", meta, r, func(pullMeta) (bool, error) { return true, nil }); leader {
				t.Fatal("a rider led")
			}
		}
		l := leading{f}
		if c.leader >= 0 {
			l.fetching(c.leader)
		}
		var got []int64
		for _, r := range l.seal() {
			got = append(got, r.changes)
		}
		if !slices.Equal(got, c.answers) {
			t.Errorf("%s: riders answered %v, want %v", c.name, got, c.answers)
		}
		for _, r := range riders {
			if want := !slices.Contains(c.answers, r.changes); r.refused != want {
				t.Errorf("%s: rider with count %d refused %v, want %v", c.name, r.changes, r.refused, want)
			}
		}
		f.Land(nil)
	}
}
