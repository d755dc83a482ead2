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

// TestLeaderRefusesRidersAfterAChange: the leader of a flight answers its
// riders from its fetch only when the count of routed changes it reads
// once the flight is sealed is the one it read before the fetch began;
// when a change was routed meanwhile (the count moved), when it never
// read one, or when it cannot read it again, every rider is refused (and
// rides on a later fetch or leads its own).
func TestLeaderRefusesRidersAfterAChange(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		leader   int64 // its count before the fetch; -1: never read
		now      int64 // at the seal; -1: cannot be read
		answered bool
	}{
		{"no change while it ran", 5, 5, true},
		{"a change while it ran", 5, 6, false},
		{"the leader read none", -1, 5, false},
		{"the count cannot be read again", 5, -1, false},
	} {
		var g flight.Group[pullMeta, *pullRider]
		meta := pullMeta{changes: new(atomic.Int64)}
		meta.changes.Store(-1)
		f, _, _ := g.Join("k", meta, nil, nil)
		riders := []*pullRider{{}, {}}
		for _, r := range riders {
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
		if want := map[bool]int{true: 2, false: 0}[c.answered]; len(got) != want {
			t.Errorf("%s: %d riders answered, want %d", c.name, len(got), want)
		}
		for _, r := range riders {
			if r.refused == c.answered {
				t.Errorf("%s: rider refused %v, want %v", c.name, r.refused, !c.answered)
			}
		}
		f.Land(nil)
	}
}
