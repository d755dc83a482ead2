package proxy

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
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
