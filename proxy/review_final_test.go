package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// TestReviewKeptCookieOnlyWhenNothingChanged: a pull holding the group's
// current cookie keeps it only when nothing its client holds changed since
// it was issued. A mutation of another client of the group through the
// other replica, a write straight to the API (no poke, no mark), and the
// record's eviction by the other replica (SIDECAR_MAX_VIEW_RECORDS_PER_USER)
// each get a new, larger cookie with what changed; in between, an
// unchanged pull keeps it.
func TestReviewKeptCookieOnlyWhenNothingChanged(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_MAX_VIEW_RECORDS_PER_USER": "1"})
	a, b := h.start(), h.start()
	if r := a.push(t, "alice", "g", create("c1", 1, "x")); r.status != http.StatusOK {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	c := newReplica()
	a.pullInto(t, "alice", "g", c)
	order := func(ck json.RawMessage) float64 {
		var o struct {
			Order float64 `json:"order"`
		}
		if err := json.Unmarshal(ck, &o); err != nil {
			t.Fatalf("cookie %s: %v", ck, err)
		}
		return o.Order
	}
	kept := func(inst *instance, what string) {
		t.Helper()
		before := c.cookie
		ans := inst.pullInto(t, "alice", "g", c)
		if !sameCookie(ans.Cookie, before) || len(ans.Patch) != 0 || len(ans.LastMutationIDChanges) != 0 {
			t.Errorf("%s: unchanged pull = cookie %s, patch %+v, ids %v; want its own cookie %s, nothing else",
				what, ans.Cookie, ans.Patch, ans.LastMutationIDChanges, before)
		}
	}
	renewed := func(inst *instance, what, key string) patchAnswer {
		t.Helper()
		before := c.cookie
		ans := inst.pullInto(t, "alice", "g", c)
		if ans.Error != "" || order(ans.Cookie) <= order(before) {
			t.Errorf("%s: pull = cookie %s (%s); want one ordered after %s", what, ans.Cookie, ans.Error, before)
		}
		if _, has := c.state[key]; !has {
			t.Errorf("%s: the client lacks %s after the pull (patch %+v)", what, key, ans.Patch)
		}
		return ans
	}
	kept(b, "after the first pull")

	// Another client of the group, through the other replica.
	if r := b.push(t, "alice", "g", create("c2", 1, "w")); r.status != http.StatusOK {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	if ans := renewed(a, "after another client's push", "todo/w"); ans.LastMutationIDChanges["c2"] != 1 {
		t.Errorf("after another client's push: ids %v; want c2 at 1", ans.LastMutationIDChanges)
	}
	kept(b, "after the push's pull")

	// A write straight to the API: nobody is told.
	req, _ := http.NewRequest(http.MethodPost, h.up.Server.URL+"/api/todos", strings.NewReader(`{"id":"direct","title":"not routed"}`))
	req.Header.Set("Authorization", "Bearer alice")
	req.Header.Set("Content-Type", "application/json")
	if r := do(t, req); r.status/100 != 2 {
		t.Fatalf("direct write = %d %s", r.status, r.raw)
	}
	renewed(b, "after a write straight to the API", "todo/direct")
	kept(a, "after the direct write's pull")

	// Another group of the user, through the other replica, takes the
	// user's one record: g's is evicted.
	other := newReplica()
	b.pullInto(t, "alice", "g2", other)
	proxytest.WaitFor(t, "g's record to be evicted", func() bool {
		var evicted bool
		err := a.pool.QueryRow(context.Background(), `SELECT view_evicted_at IS NOT NULL FROM `+
			pgx.Identifier{h.schema, "client_groups"}.Sanitize()+` WHERE id = 'g'`).Scan(&evicted)
		return err == nil && evicted
	})
	renewed(a, "after the record's eviction", "todo/x")
	kept(b, "after the eviction's pull")
	for _, key := range []string{"todo/x", "todo/w", "todo/direct"} {
		if _, has := c.state[key]; !has {
			t.Errorf("the client lacks %s at the end: %v", key, c.state)
		}
	}
}

// TestReviewAnotherUsersPushSplitsAFlight: under SIDECAR_POKE_SCOPE=user a
// push of another user's group pokes nobody of alice's, and moves only
// bob's count of routed changes, which alice's pulls do not read: a pull
// of alice's group that arrives during a running fetch of it still rides
// on it, and the view is fetched once. (With every user's pushes counted
// together, as the count first was, a busy sidecar merged hardly any pull
// that arrived once a fetch had begun: TestPullBurstOfOneGroup fetched 6
// to 8 times for its 30 pulls with 3 pushes of bob's during them, want at
// most 3. TestRoutedChangesRefuseTheRidersTheyPoke: the writes that do
// refuse alice's riders.)
func TestReviewAnotherUsersPushSplitsAFlight(t *testing.T) {
	t.Parallel()
	f := heldFetchOfAlice(t)
	h, sc, second := f.h, f.sc, f.second
	// Through another replica, which pokes nobody here, so that only the
	// count of routed changes can refuse the rider (through sc, bob's
	// poke moves sc's poke generation of bob's: see
	// TestAnotherUsersLocalPokeKeepsAFlight).
	if r := h.start().push(t, "bob", "g-bob", create("c-bob", 1, "b1")); r.status != http.StatusOK {
		t.Fatalf("bob's push = %d %s", r.status, r.raw)
	}
	ride := make(chan struct{})
	go func() { defer close(ride); sc.pullInto(t, "alice", "g", second) }()
	// It rides on the leader's fetch, or waits for the group's turn to
	// make its own: either way it has chosen.
	h.waitRideOrWait(t, sc, "the second pull to ride or wait")
	f.release()
	<-f.lead
	<-ride
	if n := f.fetches.Load(); n != 1 {
		t.Errorf("two pulls of alice's group, the second during the first's fetch, fetched the view %d times; want once (bob's push pokes none of alice's)", n)
	}
}

// TestAnotherUsersLocalPokeKeepsAFlight: under SIDECAR_POKE_SCOPE=user a
// push of bob's through the same replica pokes only bob's streams there,
// and moves only the poke generation alice's pulls do not compare (the
// hub counts deliveries by a hash of the user), so a pull of alice's group
// after it still rides on the fetch that began before it. Before, the
// generation was one per replica: any delivery, to anyone, kept every
// later pull from boarding a fetch begun before it.
func TestAnotherUsersLocalPokeKeepsAFlight(t *testing.T) {
	t.Parallel()
	f := heldFetchOfAlice(t)
	sc, second := f.sc, f.second
	hub := sc.sc.core.Hub
	alice, bob := hub.Generation("alice"), hub.Generation("bob")
	if r := sc.push(t, "bob", "g-bob", create("c-bob", 1, "b1")); r.status != http.StatusOK {
		t.Fatalf("bob's push = %d %s", r.status, r.raw)
	}
	proxytest.WaitFor(t, "bob's poke delivered here", func() bool { return hub.Generation("bob") > bob })
	if got := hub.Generation("alice"); got != alice {
		t.Errorf("bob's poke moved alice's poke generation (%d → %d)", alice, got)
	}
	ride := make(chan struct{})
	go func() { defer close(ride); sc.pullInto(t, "alice", "g", second) }()
	f.h.waitRideOrWait(t, sc, "the second pull to ride or wait")
	f.release()
	<-f.lead
	<-ride
	if n := f.fetches.Load(); n != 1 {
		t.Errorf("two pulls of alice's group, the second after bob's poke here, fetched the view %d times; want once", n)
	}
}
