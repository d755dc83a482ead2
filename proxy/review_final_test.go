package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/flight"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// refusedRider boards a flight the test leads (its leader never reads a
// count of routed changes, so the seal refuses every rider), as a pull of
// alice's group g with cookie sent through the pull handler with ctx, and
// returns the flight and a channel that yields the handler's answer once
// it has returned.
func refusedRider(t *testing.T, a *instance, ctx context.Context, cookie any) (*flight.Flight[pullMeta, *pullRider], <-chan *httptest.ResponseRecorder) {
	t.Helper()
	body, err := json.Marshal(pullBody("g", cookie))
	if err != nil {
		t.Fatal(err)
	}
	newReq := func(ctx context.Context) *http.Request {
		r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/replicache/pull", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer alice")
		return r
	}
	s := a.sc.pulls
	// The flight's key, as the pull will make it.
	var req pullRequest
	c, ok := s.begin(httptest.NewRecorder(), newReq(context.Background()), metrics.EndpointPull, &req, nil)
	if !ok {
		t.Fatal("the pull was refused before its work")
	}
	key := s.flightKey(req.ClientGroupID, c)
	c.mem.Release()
	meta := pullMeta{gen: s.hub.Generation(), changes: new(atomic.Int64)}
	meta.changes.Store(-1)
	f, leader, err := s.flights.Join(key, meta, nil, nil)
	if err != nil || !leader {
		t.Fatalf("the test does not lead the flight (leader %v, %v)", leader, err)
	}
	out := make(chan *httptest.ResponseRecorder, 1)
	before := a.sc.turns.Waiting()
	go func() {
		w := httptest.NewRecorder()
		s.handlePull(w, newReq(ctx))
		out <- w
	}()
	proxytest.WaitFor(t, "the pull to board the flight", func() bool { return a.sc.turns.Waiting() > before })
	return f, out
}

// TestReviewRefusedRiderLeadsItsOwnFetch: a rider the leader refuses at
// the seal (a change was routed while it boarded) is answered once, from
// a fetch of its own: the view as it is, under a cookie above its own.
func TestReviewRefusedRiderLeadsItsOwnFetch(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := h.start()
	if r := a.push(t, "alice", "g", create("c1", 1, "one")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	r0, p0 := a.pull(t, "alice", "g", nil)
	if r0.status != 200 {
		t.Fatalf("pull = %d %s", r0.status, r0.raw)
	}
	f, out := refusedRider(t, a, context.Background(), json.RawMessage(mustJSON(t, r0.json["cookie"])))
	if riders := (leading{f}).seal(noCount); len(riders) != 0 {
		t.Fatalf("the seal answers %d riders from a fetch that read no count; want none", len(riders))
	}
	f.Land(nil)
	w := <-out
	var got pullResult
	if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &got) != nil || strings.Contains(w.Body.String(), "ClientStateNotFound") {
		t.Fatalf("the refused rider was answered %d %s; want its own pull's answer", w.Code, w.Body)
	}
	if got.Cookie.Order < p0.Cookie.Order {
		t.Errorf("the refused rider's cookie order is %d, below its own %d", got.Cookie.Order, p0.Cookie.Order)
	}
}

// TestReviewRefusedRiderWhoseClientLeft: a rider refused at the seal
// whose client leaves as the flight lands was taken for a pull whose
// cookie cannot grow (it has no answer, and its context had ended by the
// time it looked): the handler warned "the group's cookie cannot grow any
// further" and answered ClientStateNotFound, which tells a client that is
// still there to start over. (The same switch read the rider's refusal
// when its context had ended before the flight landed, while the leader
// could still be writing it: a data race.) A rider whose client left
// ends as one: nothing answered, nothing warned.
func TestReviewRefusedRiderWhoseClientLeft(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := h.start()
	r0, _ := a.pull(t, "alice", "g", nil)
	if r0.status != 200 {
		t.Fatalf("pull = %d %s", r0.status, r0.raw)
	}
	cookie := json.RawMessage(mustJSON(t, r0.json["cookie"]))
	// The client leaves right after the flight lands: whether the rider
	// looks at its context before or after that is up to the scheduler, so
	// the case is tried a number of times (every order is correct once
	// fixed; on the old code most end as described).
	for i := range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		f, out := refusedRider(t, a, ctx, cookie)
		(leading{f}).seal(noCount)
		f.Land(nil)
		cancel()
		w := <-out
		if strings.Contains(w.Body.String(), "ClientStateNotFound") {
			t.Fatalf("try %d: a refused rider whose client left was answered %d %s; want nothing (or its own pull's answer)", i, w.Code, w.Body)
		}
	}
	if strings.Contains(h.logs.String(), "cannot grow any further") {
		t.Error("a refused rider whose client left was logged as a cookie that cannot grow")
	}
}

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
// push of another user's group pokes nobody of alice's, yet it moves the
// one count of routed changes every replica shares, so a pull of alice's
// group that arrives during a running fetch of it no longer rides on it
// and fetches the view again. With every user's pushes counted together,
// a busy sidecar merges hardly any pull that arrives once a fetch has
// begun (TestPullBurstOfOneGroup: 6 to 8 fetches for its 30 pulls with 3
// pushes of bob's during them, want at most 3; it fails on main about one
// run in three).
func TestReviewAnotherUsersPushSplitsAFlight(t *testing.T) {
	t.Skip("BUG: the count of routed changes (5df660f) is one for the whole database: any user's push refuses every rider arriving after it, even where the push pokes none of the rider's user (SIDECAR_POKE_SCOPE=user); a count per poke scope (per user under scope user) would keep merging, but is a design change for the pull-correctness owner")
	t.Parallel()
	f := heldFetchOfAlice(t)
	h, sc, second := f.h, f.sc, f.second
	if r := sc.push(t, "bob", "g-bob", create("c-bob", 1, "b1")); r.status != http.StatusOK {
		t.Fatalf("bob's push = %d %s", r.status, r.raw)
	}
	ride := make(chan struct{})
	go func() { defer close(ride); sc.pullInto(t, "alice", "g", second) }()
	// It rides on the leader's fetch, or waits for the group's turn to
	// make its own: either way it has chosen.
	proxytest.WaitFor(t, "the second pull to ride or wait", func() bool {
		var locked int
		err := sc.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0`, h.schema).Scan(&locked)
		return err == nil && locked > 0 || sc.sc.turns.Waiting() > 0
	})
	f.release()
	<-f.lead
	<-ride
	if n := f.fetches.Load(); n != 1 {
		t.Errorf("two pulls of alice's group, the second during the first's fetch, fetched the view %d times; want once (bob's push pokes none of alice's)", n)
	}
}

// noCount is a leader's count of routed changes that cannot be read.
func noCount() (int64, error) { return 0, errors.New("no count in this test") }
