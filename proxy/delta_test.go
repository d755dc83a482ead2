package proxy

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// deltaMapping maps proxytest.ChangingAPI: /api/todos read by its changes
// (a soft-delete field too), /api/lists and /api/me kept for a minute.
const deltaMapping = `{
  "mutators": {
    "createTodo": {"method": "POST", "path": "/api/todos"},
    "updateTodo": {"method": "PATCH", "path": "/api/todos/{args.id}"},
    "deleteTodo": {"method": "DELETE", "path": "/api/todos/{args.id}", "outcomes": {"404": "applied"}},
    "createList": {"method": "POST", "path": "/api/lists", "outcomes": {"404": "applied"}}
  },
  "clientView": [
    {"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"},
     "changes": {"param": "updated_after", "field": "updated_at", "deleted": "deleted", "fullEvery": "%s"}},
    {"path": "/api/lists", "items": "lists", "key": "list/{id}", "maxAge": "60s"},
    {"path": "/api/me", "key": "me", "maxAge": "60s"}
  ]
}`

// deltaHarness is a harness in front of a ChangingAPI with deltaMapping.
func deltaHarness(t testing.TB, api *proxytest.ChangingAPI, fullEvery string, env map[string]string) *harness {
	t.Helper()
	f := filepath.Join(t.TempDir(), "mapping.json")
	if err := os.WriteFile(f, []byte(fmt.Sprintf(deltaMapping, fullEvery)), 0o600); err != nil {
		t.Fatal(err)
	}
	e := map[string]string{"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_MAPPING_FILE": f}
	maps.Copy(e, env)
	return newHarness(t, e)
}

// seed gives user n todos written ten seconds apart hours ago by the
// API's clock (so the overlap window re-reads none of them).
func seed(api *proxytest.ChangingAPI, user string, n int) {
	for i := range n {
		api.SetSkew(-3*time.Hour + time.Duration(i)*10*time.Second)
		api.Put(user, fmt.Sprintf("t%03d", i), fmt.Sprintf("todo %d", i))
	}
	api.SetSkew(0)
}

// ops lists a patch's operations as "op key", sorted.
func ops(a patchAnswer) []string {
	var out []string
	for _, op := range a.Patch {
		out = append(out, op.Op+" "+op.Key)
	}
	slices.Sort(out)
	return out
}

// TestDeltaPulls: after a group's first pull, its pulls read /api/todos by
// what changed since its watermark and skip the sources that are fresh:
// a create costs one small GET and answers exactly one put. A delete the
// sidecar routed makes the next pull of every group read the source in
// full (a del within one poke); one made in the API directly is seen at
// the next full read (fullEvery); a soft-deleted item is a del at once.
// Writes made in the API directly are seen by the next delta read. A write
// under a maxAge source makes the next pull read it again.
func TestDeltaPulls(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	seed(api, "alice", 120)
	sc := deltaHarness(t, api, "1s", nil).start()
	a, b := newReplica(), newReplica() // two groups of alice (two browsers)
	if r := sc.pullInto(t, "alice", "ga", a); !r.reset() || len(a.state) != 120+2+1 {
		t.Fatalf("first pull: reset %v, %d entries", r.reset(), len(a.state))
	}
	sc.pullInto(t, "alice", "gb", b)
	api.ResetStats()

	// Nothing changed: one GET of /api/todos (by its changes), nothing of
	// the fresh sources; an empty patch.
	if r := sc.pullInto(t, "alice", "ga", a); len(r.Patch) != 0 {
		t.Errorf("unchanged pull patched %v", ops(r))
	}
	if n, lists, me := api.GETs("/api/todos"), api.GETs("/api/lists"), api.GETs("/api/me"); n != 1 || lists != 0 || me != 1 {
		t.Errorf("unchanged pull: %d GETs of /api/todos, %d of /api/lists, %d of /api/me (the auth call); want 1, 0, 1", n, lists, me)
	}

	// A create: one small GET, one put.
	if r := sc.push(t, "alice", "ga", create("ca", 1, "new")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	api.ResetStats()
	if r := sc.pullInto(t, "alice", "ga", a); !slices.Equal(ops(r), []string{"put todo/new"}) {
		t.Errorf("pull after a create = %v, want [put todo/new]", ops(r))
	}
	if st := api.Stats(); st.GETs != 2 || st.Bytes > 512 {
		t.Errorf("pull after a create asked %d GETs, %d bytes of the API; want 2 (the auth call and one delta read), a few hundred bytes", st.GETs, st.Bytes)
	}

	// A routed delete: both groups' next pulls delete it (a full read).
	if r := sc.push(t, "alice", "ga", mut{"ca", 2, "deleteTodo", map[string]any{"id": "t005"}}); r.status != 200 {
		t.Fatalf("delete push = %d %s", r.status, r.raw)
	}
	for name, c := range map[string]*replica{"ga": a, "gb": b} {
		r := sc.pullInto(t, "alice", name, c)
		if name == "ga" && !slices.Equal(ops(r), []string{"del todo/t005"}) {
			t.Errorf("group %s after a routed delete = %v, want [del todo/t005]", name, ops(r))
		}
		if _, has := c.state["todo/t005"]; has {
			t.Errorf("group %s still holds todo/t005 after the delete", name)
		}
	}

	// In the API directly: an update and a create are read at once; a
	// hard delete waits for the next full read (fullEvery: 1 s).
	api.Put("alice", "t010", "renamed elsewhere")
	api.Put("alice", "oob", "made elsewhere")
	api.Delete("alice", "t011")
	if r := sc.pullInto(t, "alice", "ga", a); !slices.Equal(ops(r), []string{"put todo/oob", "put todo/t010"}) {
		t.Errorf("pull after writes in the API = %v, want the update and the create", ops(r))
	}
	time.Sleep(1100 * time.Millisecond)
	if r := sc.pullInto(t, "alice", "ga", a); !slices.Equal(ops(r), []string{"del todo/t011"}) {
		t.Errorf("pull after fullEvery = %v, want [del todo/t011]", ops(r))
	}

	// A soft delete is a del at the next delta read.
	api.SoftDelete = true
	api.Delete("alice", "t012")
	if r := sc.pullInto(t, "alice", "ga", a); !slices.Equal(ops(r), []string{"del todo/t012"}) {
		t.Errorf("pull after a soft delete = %v, want [del todo/t012]", ops(r))
	}

	// A write under /api/lists: its next pull reads it again.
	api.ResetStats()
	sc.pullInto(t, "alice", "ga", a)
	if n := api.GETs("/api/lists"); n != 0 {
		t.Errorf("%d GETs of a fresh /api/lists", n)
	}
	sc.push(t, "alice", "ga", mut{"ca", 3, "createList", map[string]any{"id": "l9"}})
	sc.pullInto(t, "alice", "ga", a)
	if n := api.GETs("/api/lists"); n != 1 {
		t.Errorf("%d GETs of /api/lists after a write under it, want 1", n)
	}

	want := map[string]bool{}
	for id := range api.Live("alice") {
		want["todo/"+id] = true
	}
	for k := range a.state {
		if strings.HasPrefix(k, "todo/") && !want[k] {
			t.Errorf("client holds %s, which the API does not have", k)
		}
		delete(want, k)
	}
	if len(want) > 0 {
		t.Errorf("client lacks %v", slices.Collect(maps.Keys(want)))
	}
}

// TestDeltaFilterIgnored: an API that ignores the changes filter (a
// mistyped parameter answers everything) is noticed: logged, counted, and
// the view stays right.
func TestDeltaFilterIgnored(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	seed(api, "alice", 10)
	h := deltaHarness(t, api, "10m", nil)
	sc := h.start()
	c := newReplica()
	sc.pullInto(t, "alice", "g", c)
	api.IgnoreFilter = true
	api.Put("alice", "x", "new")
	if r := sc.pullInto(t, "alice", "g", c); !slices.Equal(ops(r), []string{"put todo/x"}) {
		t.Errorf("pull through an API that ignores the filter = %v, want [put todo/x]", ops(r))
	}
	if v := testutil.ToFloat64(sc.sc.core.Metrics.FilterIgnored.WithLabelValues("/api/todos")); v != 1 {
		t.Errorf("view_filter_ignored_total = %v, want 1", v)
	}
	if !strings.Contains(h.logs.String(), "the API ignored a view source's changes filter") {
		t.Error("no log line for the ignored filter")
	}
}

// TestDelMustBeTrue (delta reads, constraint): a full read of link pages
// without a total, while another writer deletes an item on a page already
// read, skips the item that moves up into that page; the diff must not
// answer a del for that live item (before: a flicker, the next pull put it
// back). The read is confirmed by a second read, and only what both reads
// lack is deleted.
func TestDelMustBeTrue(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	api.PageSize = 3
	seed(api, "alice", 9)
	sc := deltaHarness(t, api, "10m", nil).start()
	c := newReplica()
	sc.pullInto(t, "alice", "g", c)
	// The next pull reads /api/todos in full (a routed delete of an item
	// the API does not have), and another writer deletes t001 as soon as
	// page 1 is served: t003 moves onto page 1 and page 2 starts at t004.
	var once sync.Once
	api.SetHook(func(r *http.Request) {
		if r.URL.Path == "/api/todos" && r.URL.Query().Get("page") == "2" && r.URL.Query().Get("updated_after") == "" {
			once.Do(func() { api.Delete("alice", "t001") })
		}
	})
	sc.push(t, "alice", "g", mut{"c", 1, "deleteTodo", map[string]any{"id": "nope"}})
	r := sc.pullInto(t, "alice", "g", c)
	for _, op := range r.Patch {
		if op.Op == "del" && op.Key != "todo/t001" {
			t.Errorf("the diff deleted %s, which the API still has", op.Key)
		}
	}
	if _, has := c.state["todo/t003"]; !has {
		t.Error("the client lost todo/t003, which an item deleted on an earlier page made a page skip")
	}
	// The next full read removes what the confirmed read kept.
	sc.push(t, "alice", "g", mut{"c", 2, "deleteTodo", map[string]any{"id": "nope2"}})
	sc.pullInto(t, "alice", "g", c)
	if _, has := c.state["todo/t001"]; has {
		t.Error("todo/t001, deleted in the API, is still in the view after the next full read")
	}
}

// TestDeltaChurn: creates, updates and deletes through pushes and made in
// the API directly, by two users with two client groups each, every group
// pulling after each step (a poke); then, once fullEvery has passed, every
// client's view equals what the API holds for its user. Never a del of a
// live item on the way (the API's items are checked after each pull).
func TestDeltaChurn(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	api.PageSize = 4
	users := []string{"alice", "bob"}
	for _, u := range users {
		seed(api, u, 12)
	}
	sc := deltaHarness(t, api, "1s", nil).start()
	type client struct {
		user, group, id string
		next            int64
		view            *replica
	}
	var clients []*client
	for _, u := range users {
		for g := range 2 {
			clients = append(clients, &client{user: u, group: fmt.Sprint(u, g), id: fmt.Sprint("c-", u, g), next: 1, view: newReplica()})
		}
	}
	rng := rand.New(rand.NewPCG(7, 11))
	steps := 0
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); steps++ {
		c := clients[rng.IntN(len(clients))]
		id := fmt.Sprintf("t%03d", rng.IntN(16))
		switch rng.IntN(6) {
		case 0:
			sc.push(t, c.user, c.group, mut{c.id, c.next, "createTodo", map[string]any{"id": id, "title": fmt.Sprint("s", steps)}})
			c.next++
		case 1:
			sc.push(t, c.user, c.group, mut{c.id, c.next, "updateTodo", map[string]any{"id": id, "title": fmt.Sprint("u", steps)}})
			c.next++
		case 2:
			sc.push(t, c.user, c.group, mut{c.id, c.next, "deleteTodo", map[string]any{"id": id}})
			c.next++
		case 3:
			api.Put(c.user, id, fmt.Sprint("oob", steps))
		case 4:
			api.Delete(c.user, id)
		}
		for _, o := range clients {
			r := sc.pullInto(t, o.user, o.group, o.view)
			live := api.Live(o.user)
			for _, op := range r.Patch {
				if k, ok := strings.CutPrefix(op.Key, "todo/"); op.Op == "del" && ok {
					if _, alive := live[k]; alive {
						t.Errorf("step %d: %s's group %s got a del of %s, which the API has", steps, o.user, o.group, op.Key)
					}
				}
			}
		}
	}
	time.Sleep(1100 * time.Millisecond) // fullEvery
	for _, c := range clients {
		sc.pullInto(t, c.user, c.group, c.view)
		want := map[string]string{}
		for id, title := range api.Live(c.user) {
			v, _ := json.Marshal(title)
			want["todo/"+id] = string(v)
		}
		got := map[string]string{}
		for k, v := range c.view.state {
			if strings.HasPrefix(k, "todo/") {
				var td struct{ Title string }
				_ = json.Unmarshal([]byte(v), &td)
				t2, _ := json.Marshal(td.Title)
				got[k] = string(t2)
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("after %d steps and fullEvery, %s's group %s holds %v; the API has %v", steps, c.user, c.group, got, want)
		}
	}
	t.Logf("%d churn steps", steps)
}

// TestUpstreamMaxInflightWave (delta reads, "a bound on what a poke wave
// asks of the API"): 100 client groups pull at once against an API whose
// answers take 10 ms; with SIDECAR_UPSTREAM_MAX_INFLIGHT=8 the API never
// holds more than 8 requests at once, and every pull answers 200.
func TestUpstreamMaxInflightWave(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	api.SetHook(func(*http.Request) { time.Sleep(10 * time.Millisecond) })
	sc := deltaHarness(t, api, "10m", map[string]string{"SIDECAR_UPSTREAM_MAX_INFLIGHT": "8"}).start()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, _ := sc.pull(t, fmt.Sprint("u", i%20), fmt.Sprint("g", i), nil); r.status != 200 {
				if failed.Add(1) == 1 {
					t.Logf("a failed pull: %d %s", r.status, r.raw)
				}
			}
		}()
	}
	wg.Wait()
	st := api.Stats()
	t.Logf("100 pulls at once: %d GETs, at most %d in flight at the API", st.GETs, st.MaxInFlight)
	if failed.Load() > 0 {
		t.Errorf("%d of 100 pulls failed", failed.Load())
	}
	// The auth calls are GETs too (/api/me), and within the same bound.
	if st.MaxInFlight > 8 {
		t.Errorf("the API held %d requests at once; SIDECAR_UPSTREAM_MAX_INFLIGHT is 8", st.MaxInFlight)
	}
}

// TestDeltaMarksAcrossReplicas: a delete routed through one replica makes
// a group that pulls through the other read the source in full (the mark
// travels with the replicas' announcements), so the del reaches it within
// one poke; and the invalidate hook naming a source makes its next read
// full (a maxAge source is read again, a delta source in full).
func TestDeltaMarksAcrossReplicas(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	seed(api, "alice", 10)
	h := deltaHarness(t, api, "10m", map[string]string{"SIDECAR_INVALIDATE_TOKEN": "tok"})
	one, two := h.start(), h.start()
	runPokes(t, one, two)
	a, b := newReplica(), newReplica()
	one.pullInto(t, "alice", "ga", a)
	two.pullInto(t, "alice", "gb", b)
	if r := one.push(t, "alice", "ga", mut{"ca", 1, "deleteTodo", map[string]any{"id": "t003"}}); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	proxytest.WaitFor(t, "group gb, pulling through the other replica, to get the del", func() bool {
		two.pullInto(t, "alice", "gb", b)
		_, has := b.state["todo/t003"]
		return !has
	})

	// The invalidate hook names /api/lists: its next read is not skipped.
	api.ResetStats()
	two.pullInto(t, "alice", "gb", b)
	if n := api.GETs("/api/lists"); n != 0 {
		t.Fatalf("%d GETs of a fresh /api/lists", n)
	}
	req, _ := http.NewRequest(http.MethodPost, one.srv.URL+"/replicache/invalidate", strings.NewReader(`{"sources": ["/api/lists"]}`))
	req.Header.Set("Authorization", "Bearer tok")
	if r := do(t, req); r.status != http.StatusAccepted || !strings.Contains(string(r.raw), `"sources":["/api/lists"]`) {
		t.Fatalf("invalidate = %d %s", r.status, r.raw)
	}
	proxytest.WaitFor(t, "the other replica to read /api/lists again", func() bool {
		two.pullInto(t, "alice", "gb", b)
		return api.GETs("/api/lists") > 0
	})
}

// TestSharedSource (delta reads, per-source freshness): a source whose
// answer is the same for every user ("shared": true) is read once for
// every client group of a replica, without any user's credentials; a write
// under it makes the next pull read it again, once.
func TestSharedSource(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	f := filepath.Join(t.TempDir(), "mapping.json")
	mapping := `{"clientView": [
		{"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"}},
		{"path": "/api/catalog", "items": "items", "key": "item/{id}", "shared": true}]}`
	if err := os.WriteFile(f, []byte(mapping), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_MAPPING_FILE": f}).start()
	for i := range 5 {
		c := newReplica()
		sc.pullInto(t, fmt.Sprint("user", i), fmt.Sprint("g", i), c)
		if c.state["item/c2"] != `{"id":"c2","name":"two"}` {
			t.Fatalf("user%d's view lacks the shared items: %v", i, c.state)
		}
	}
	if n := api.GETs("/api/catalog"); n != 1 {
		t.Errorf("five users' first pulls read the shared source %d times, want once", n)
	}
	if auth := api.CatalogAuth(); len(auth) != 1 || auth[0] != "" {
		t.Errorf("the shared read carried Authorization %q; want none", auth)
	}
	// A write under it (through the pass-through): read again, once.
	req, _ := http.NewRequest(http.MethodPost, sc.srv.URL+"/api/catalog", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer admin")
	do(t, req)
	for i := range 3 {
		sc.pull(t, fmt.Sprint("user", i), fmt.Sprint("g", i), nil)
	}
	if n := api.GETs("/api/catalog"); n != 2 {
		t.Errorf("after a write under it, %d reads in all; want 2", n)
	}
}
