package proxy

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
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
		n, err := a.sc.core.Store.ChangeCounts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return n.For("alice") // the count alice's pulls read
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

// TestRoutedChangesRefuseTheRidersTheyPoke: a write routed before a pull
// of alice's group boards a running fetch of it refuses the rider (which
// then fetches the view again, and has the write) exactly when the write
// may poke alice. Under SIDECAR_POKE_SCOPE=user: alice's own push (of
// another group), an invalidate of alice and one of everyone do; bob's
// push and an invalidate of bob do not (they move only bob's count).
// Under scope all every write moves everyone's count, as before counts
// per scope: bob's push and an invalidate of bob refuse alice's rider too.
// The writes go through another replica, which pokes nobody here: the
// count alone refuses the rider, not this replica's poke generation.
func TestRoutedChangesRefuseTheRidersTheyPoke(t *testing.T) {
	t.Parallel()
	push := func(user, group, todo string) func(*testing.T, *instance) response {
		return func(t *testing.T, other *instance) response {
			return other.push(t, user, group, create("c-"+todo, 1, todo))
		}
	}
	invalidate := func(body string) func(*testing.T, *instance) response {
		return func(t *testing.T, other *instance) response {
			req, _ := http.NewRequest(http.MethodPost, other.srv.URL+"/replicache/invalidate", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer tok")
			req.Header.Set("Content-Type", "application/json")
			return do(t, req)
		}
	}
	for _, c := range []struct {
		name, scope string
		write       func(*testing.T, *instance) response
		refused     bool
		has         string // a key the rider's client has at the end
	}{
		{"scope user, alice's push", "user", push("alice", "g-alice", "a2"), true, "todo/a2"},
		{"scope user, invalidate of alice", "user", invalidate(`{"users":["alice"]}`), true, ""},
		{"scope user, invalidate of everyone", "user", invalidate(""), true, ""},
		{"scope user, bob's push", "user", push("bob", "g-bob", "b1"), false, ""},
		{"scope user, invalidate of bob", "user", invalidate(`{"users":["bob"]}`), false, ""},
		{"scope all, bob's push", "all", push("bob", "g-bob", "b1"), true, ""},
		{"scope all, invalidate of bob", "all", invalidate(`{"users":["bob"]}`), true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := heldFetchOfAliceWith(t, map[string]string{"SIDECAR_POKE_SCOPE": c.scope, "SIDECAR_INVALIDATE_TOKEN": "tok"})
			sc, second := f.sc, f.second
			other := f.h.start()
			if r := c.write(t, other); r.status/100 != 2 {
				t.Fatalf("the write = %d %s", r.status, r.raw)
			}
			ride := make(chan struct{})
			go func() { defer close(ride); sc.pullInto(t, "alice", "g", second) }()
			// It boards the leader's fetch (nothing poked this replica): a
			// pull that led would take the group's other turn and wait for
			// the row lock, not here.
			proxytest.WaitFor(t, "the second pull to board the leader's fetch", func() bool {
				return sc.sc.core.Turns.Waiting() > 0
			})
			f.release()
			<-f.lead
			<-ride
			want := int64(1)
			if c.refused {
				want = 2 // the leader's, then the refused rider's own
			}
			if n := f.fetches.Load(); n != want {
				t.Errorf("two pulls of alice's group, the second boarding the first's fetch after the write, fetched the view %d times; want %d", n, want)
			}
			if _, ok := second.state[c.has]; c.has != "" && !ok {
				t.Errorf("the rider's client lacks %s, written before it pulled: %v", c.has, second.state)
			}
		})
	}
}
