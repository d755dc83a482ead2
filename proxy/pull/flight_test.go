package pull

import (
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/config"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/flight"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/identity"
)

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

// TestFlightKeysDoNotCollide: pulls with different users or different
// forwarded credentials never share a flight key, however the parts are
// written: a token in Authorization or in Cookie, a user id holding the
// separator, a value split over two headers.
func TestFlightKeysDoNotCollide(t *testing.T) {
	t.Parallel()
	e := &Engine{Core: &engine.Core{Cfg: config.Config{ForwardHeaders: []string{"Authorization", "Cookie"}}}}
	ex := func(user string, hdr ...string) *engine.Exchange {
		h := http.Header{}
		for i := 0; i < len(hdr); i += 2 {
			h.Add(hdr[i], hdr[i+1])
		}
		return &engine.Exchange{Caller: identity.Caller{User: user, Forward: h}}
	}
	cases := []*engine.Exchange{
		ex("alice", "Authorization", "T"),
		ex("alice", "Cookie", "T"),
		ex("alice"),
		ex("alice", "Authorization", "T", "Authorization", "U"),
		ex("alice", "Authorization", "T", "Cookie", "U"),
		ex("alice\x00T"),
		ex("alice\x00", "Cookie", "T"),
		ex(""),
		ex("", "Authorization", ""),
	}
	seen := map[string]int{}
	for i, c := range cases {
		k := e.flightKey("g", c)
		if j, ok := seen[k]; ok {
			t.Errorf("cases %d and %d share the flight key %q", j, i, k)
		}
		seen[k] = i
	}
	if k1, k2 := e.flightKey("g", ex("alice", "Authorization", "T")), e.flightKey("g", ex("alice", "Authorization", "T")); k1 != k2 {
		t.Errorf("two pulls with the same user and credentials have different keys: %q, %q", k1, k2)
	}
}
