package proxy

import (
	"context"
	"errors"
	"net/http"
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

// TestLeaderRefusesRidersAfterAChange: the leader of a flight answers all
// its riders when the count of routed changes it reads once the flight is
// sealed is the one it read before its fetch began; when it moved (or
// cannot be read again), each rider whose count, read after it boarded,
// is no larger than the leader's; never a rider whose count is unknown
// then, nor any rider of a leader that read no count.
func TestLeaderRefusesRidersAfterAChange(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		leader   int64   // its count before the fetch; -1: never read
		now      int64   // at the seal; -1: cannot be read
		riders   []int64 // their counts, read after boarding; -1: not yet
		answered []bool
	}{
		{"no change while it ran", 5, 5, []int64{-1, 5}, []bool{true, true}},
		{"a change after some boarded", 5, 6, []int64{4, 5, 6, -1}, []bool{true, true, false, false}},
		{"the count cannot be read again", 5, -1, []int64{5, 6}, []bool{true, false}},
		{"the leader read none", -1, 5, []int64{0, 3}, []bool{false, false}},
	} {
		var g flight.Group[pullMeta, *pullRider]
		meta := pullMeta{changes: new(atomic.Int64)}
		meta.changes.Store(-1)
		f, _, _ := g.Join("k", meta, nil, nil)
		var riders []*pullRider
		for _, n := range c.riders {
			r := &pullRider{}
			r.changes.Store(n)
			riders = append(riders, r)
			if _, leader, _ := g.Join("k", meta, r, func(pullMeta) (bool, error) { return true, nil }); leader {
				t.Fatal("a rider led")
			}
		}
		l := leading{f}
		if c.leader >= 0 {
			l.fetching(c.leader)
		}
		count := func() (int64, error) {
			if c.now < 0 {
				return 0, errors.New("unreadable")
			}
			return c.now, nil
		}
		got := l.seal(count)
		want := 0
		for i, r := range riders {
			if c.answered[i] {
				want++
			}
			if r.refused == c.answered[i] {
				t.Errorf("%s: rider %d (count %d) refused %v, want %v", c.name, i, c.riders[i], r.refused, !c.answered[i])
			}
		}
		if len(got) != want {
			t.Errorf("%s: %d riders answered, want %d", c.name, len(got), want)
		}
		f.Land(nil)
	}
}

// TestGatherWindow: only the leader of a crowded group's fetch (16 or more
// open streams naming the group here) waits before it begins, an eighth
// of the poke spread and 50 ms at most; without a spread the wave's pulls
// arrive together and nothing waits.
func TestGatherWindow(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		streams int
		spread  time.Duration
		want    time.Duration
	}{
		{0, 250 * time.Millisecond, 0},
		{15, 250 * time.Millisecond, 0},
		{16, 250 * time.Millisecond, 31250 * time.Microsecond},
		{1000, time.Second, 50 * time.Millisecond},
		{1000, 0, 0},
	} {
		if got := gatherWindow(c.streams, c.spread); got != c.want {
			t.Errorf("gatherWindow(%d streams, spread %v) = %v, want %v", c.streams, c.spread, got, c.want)
		}
	}
}
