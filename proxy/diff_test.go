package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
)

// replica is what a Replicache client holds: its cookie and its view.
type replica struct {
	cookie json.RawMessage
	state  map[string]string // key → compact value
}

func newReplica() *replica {
	return &replica{cookie: json.RawMessage("null"), state: map[string]string{}}
}

func (c *replica) clone() *replica {
	return &replica{cookie: slices.Clone(c.cookie), state: maps.Clone(c.state)}
}

// patchAnswer is a PullResponse with its cookie kept raw, as a client
// keeps it.
type patchAnswer struct {
	Cookie                json.RawMessage  `json:"cookie"`
	LastMutationIDChanges map[string]int64 `json:"lastMutationIDChanges"`
	Patch                 []struct {
		Op    string          `json:"op"`
		Key   string          `json:"key"`
		Value json.RawMessage `json:"value"`
	} `json:"patch"`
	Error string `json:"error"`
}

// reset reports whether the patch starts with clear.
func (a patchAnswer) reset() bool { return len(a.Patch) > 0 && a.Patch[0].Op == "clear" }

// pullInto pulls as the client c and applies the answer as the Replicache
// client does, checking the patch's form: clear only first, ops known.
func (inst *instance) pullInto(t testing.TB, user, group string, c *replica) patchAnswer {
	t.Helper()
	r := inst.post(t, "/replicache/pull", "Bearer "+user, pullBody(group, c.cookie))
	var a patchAnswer
	if r.status != http.StatusOK || json.Unmarshal(r.raw, &a) != nil {
		t.Fatalf("pull = %d %s", r.status, r.raw)
	}
	if a.Error != "" {
		return a
	}
	for i, op := range a.Patch {
		switch op.Op {
		case "clear":
			if i != 0 {
				t.Fatalf("clear at position %d of the patch", i)
			}
			clear(c.state)
		case "put":
			c.state[op.Key] = string(op.Value)
		case "del":
			// A key added and removed since the client's cookie is deleted
			// although the client never held it: a no-op, as for the client.
			delete(c.state, op.Key)
		default:
			t.Fatalf("unknown op %q", op.Op)
		}
	}
	c.cookie = a.Cookie
	return a
}

// changingAPI is an upstream whose collection changes between pulls: items
// are added, updated, deleted and reordered, so they move between pages.
// It paginates in the body (next URL and count, as Django REST Framework
// does), 7 items a page, and has one singleton source.
type changingAPI struct {
	mu    sync.Mutex
	order []string          // item ids in the order the API lists them
	items map[string]string // id → JSON
	meta  string
	next  int
	gets  int // pages and singletons served

	// validators: pages answer an ETag (a hash of the body) and the
	// singleton a Last-Modified (a clock that ticks a second per change),
	// and conditional requests that match get 304.
	validators  bool
	metaChanged time.Time
	notModified int // 304s answered
	conditional int // requests that carried a validator
	bodyBytes   int // bytes of bodies served
}

func newChangingAPI(t testing.TB) (*changingAPI, *httptest.Server) {
	a := &changingAPI{items: map[string]string{}, meta: `{"version":0}`, metaChanged: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return a, srv
}

func (a *changingAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gets++
	w.Header().Set("Content-Type", "application/json")
	if r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Modified-Since") != "" {
		a.conditional++
	}
	if r.URL.Path == "/meta" {
		if a.validators {
			lm := a.metaChanged.UTC().Format(http.TimeFormat)
			w.Header().Set("Last-Modified", lm)
			if r.Header.Get("If-Modified-Since") == lm {
				a.notModified++
				w.WriteHeader(http.StatusNotModified)
				return
			}
		}
		a.bodyBytes += len(a.meta)
		_, _ = fmt.Fprint(w, a.meta)
		return
	}
	const size = 7
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	page = max(page, 1)
	var out []string
	for i := (page - 1) * size; i < min(page*size, len(a.order)); i++ {
		out = append(out, a.items[a.order[i]])
	}
	next := "null"
	if page*size < len(a.order) {
		next = fmt.Sprintf(`"/items?page=%d"`, page+1)
	}
	body := fmt.Sprintf(`{"count":%d,"next":%s,"results":[%s]}`, len(a.order), next, strings.Join(out, ","))
	if a.validators {
		etag := fmt.Sprintf(`"%x"`, clientview.Hash([]byte(body)))
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			a.notModified++
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	a.bodyBytes += len(body)
	_, _ = fmt.Fprint(w, body)
}

// change makes n random changes.
func (a *changingAPI) change(rng *rand.Rand, n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for range n {
		switch k := rng.IntN(10); {
		case k < 3 || len(a.order) < 3: // add, anywhere in the order
			a.next++
			id := fmt.Sprintf("i%d", a.next)
			a.items[id] = fmt.Sprintf(`{"id":%q,"title":"new %d","n":0}`, id, a.next)
			at := rng.IntN(len(a.order) + 1)
			a.order = slices.Insert(a.order, at, id)
		case k < 6: // update
			id := a.order[rng.IntN(len(a.order))]
			a.items[id] = fmt.Sprintf(`{"id":%q,"title":"changed %d","n":%d}`, id, rng.IntN(1000), rng.IntN(3))
		case k < 8: // delete
			at := rng.IntN(len(a.order))
			delete(a.items, a.order[at])
			a.order = slices.Delete(a.order, at, at+1)
		case k < 9: // reorder: items move between pages
			rng.Shuffle(len(a.order), func(i, j int) { a.order[i], a.order[j] = a.order[j], a.order[i] })
		default:
			a.meta = fmt.Sprintf(`{"version":%d}`, rng.IntN(5))
			a.metaChanged = a.metaChanged.Add(time.Second)
		}
	}
}

// view is what a correct client holds now.
func (a *changingAPI) view() map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]string{"meta": a.meta}
	for id, v := range a.items {
		out["item/"+id] = v
	}
	return out
}

const changingMapping = `{"clientView":[
	{"path":"/items","items":"results","key":"item/{id}","pagination":{"type":"url"}},
	{"path":"/meta","key":"meta"}]}`

func changingEnv(t testing.TB, url string, extra map[string]string) map[string]string {
	f := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(f, []byte(changingMapping), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SIDECAR_UPSTREAM_URL": url, "SIDECAR_MAPPING_FILE": f, "SIDECAR_AUTH_PATH": ""}
	maps.Copy(env, extra)
	return env
}

// TestDiffPatchesMatchReset is the diff mode's property: for random
// sequences of upstream changes, a client that applies successive diff
// patches always holds exactly what the API shows (what a fresh reset
// gives). Clients pull through two replicas sharing one database, at
// different paces (one falls behind by more than the record remembers),
// and sometimes with a cookie whose answer they lost.
func TestDiffPatchesMatchReset(t *testing.T) {
	for _, validators := range []bool{false, true} {
		t.Run(fmt.Sprint("conditional GETs ", validators), func(t *testing.T) { testDiffPatchesMatchReset(t, validators) })
	}
}

func testDiffPatchesMatchReset(t *testing.T, validators bool) {
	api, srv := newChangingAPI(t)
	api.validators = validators
	h := newHarness(t, changingEnv(t, srv.URL, map[string]string{"SIDECAR_VIEW_RECORD_VERSIONS": "8"}))
	replicas := []*instance{h.start(), h.start()}
	for seed := range uint64(2) {
		rng := rand.New(rand.NewPCG(seed, 42))
		group := fmt.Sprint("g", seed)
		clients := []*replica{newReplica(), newReplica(), newReplica()}
		var diffs, resets, empty, lagReset int
		api.change(rng, 20)
		const steps = 60
		for step := range steps {
			if step > 0 && rng.IntN(4) > 0 { // now and then, nothing changes
				api.change(rng, 1+rng.IntN(4))
			}
			for i, c := range clients {
				// Client 2 pulls once every 20 steps; the group meanwhile
				// moves on by more versions than the record keeps removals for.
				if i == 2 && step%20 != 19 {
					continue
				}
				if i == 1 && step%2 == 1 {
					continue
				}
				before := c.clone()
				a := replicas[rng.IntN(2)].pullInto(t, "alice", group, c)
				if a.Error != "" {
					t.Fatalf("seed %d step %d: pull answered %s", seed, step, a.Error)
				}
				switch {
				case a.reset():
					resets++
					if i == 2 && step > 20 {
						lagReset++
					}
				case len(a.Patch) == 0:
					empty++
					diffs++
				default:
					diffs++
				}
				if want := api.view(); !maps.Equal(c.state, want) {
					t.Fatalf("seed %d step %d client %d: after the patch the client holds %d keys, the API shows %d (reset=%v)\nclient: %v\napi:    %v",
						seed, step, i, len(c.state), len(want), a.reset(), c.state, want)
				}
				// Now and then the answer is lost on its way: the client pulls
				// again with its previous cookie.
				if rng.IntN(5) == 0 {
					clients[i] = before
				}
			}
		}
		t.Logf("seed %d: %d diff answers (%d empty), %d resets", seed, diffs, empty, resets)
		if diffs < steps || empty == 0 || resets < 3 {
			t.Errorf("seed %d: %d diffs (%d empty), %d resets: the sequence did not exercise diff mode", seed, diffs, empty, resets)
		}
		if lagReset == 0 {
			t.Errorf("seed %d: the client that fell behind the record was never reset", seed)
		}
	}
	api.mu.Lock()
	defer api.mu.Unlock()
	t.Logf("%d conditional requests, %d answered 304", api.conditional, api.notModified)
	if validators != (api.notModified > 0) || validators != (api.conditional > 0) {
		t.Errorf("%d conditional requests, %d answered 304, with validators %v", api.conditional, api.notModified, validators)
	}
}

// diffSetup is a harness on the legacy API with two sidecars and a group
// that has pulled once.
func TestDiffPulls(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, nil)
	a, b := h.start(), h.start()
	if r := a.push(t, "alice", "g", create("c1", 1, "x"), create("c1", 2, "y")); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	c := newReplica()
	first := a.pullInto(t, "alice", "g", c)
	if !first.reset() || len(first.Patch) != 4 { // clear, x, y, me
		t.Fatalf("first pull = %+v; want a reset of 3 entries", first.Patch)
	}
	var ck struct {
		Order int64  `json:"order"`
		DB    string `json:"db"`
		Rec   string `json:"rec"`
		V     int64  `json:"v"`
	}
	if err := json.Unmarshal(first.Cookie, &ck); err != nil || ck.Order != 1 || len(ck.DB) != 16 || len(ck.Rec) != 16 || ck.V != 1 {
		t.Fatalf("cookie = %s; want order 1, db, rec and v 1", first.Cookie)
	}

	t.Run("unchanged view answers an empty patch through either replica", func(t *testing.T) {
		// Nothing changed since the client's cookie, the group's current
		// one: that cookie again, with nothing else (TestUnchangedPull*).
		for i, inst := range []*instance{b, a} {
			ans := inst.pullInto(t, "alice", "g", c)
			if len(ans.Patch) != 0 || len(ans.LastMutationIDChanges) != 0 {
				t.Fatalf("unchanged pull %d = %+v %v; want an empty patch and no id changes", i, ans.Patch, ans.LastMutationIDChanges)
			}
			if !sameCookie(ans.Cookie, first.Cookie) {
				t.Errorf("cookie after an unchanged pull = %s; want the client's own, %s", ans.Cookie, first.Cookie)
			}
		}
	})

	t.Run("a change answers only what changed", func(t *testing.T) {
		if r := b.push(t, "alice", "g", create("c1", 3, "z"), mut{"c1", 4, "deleteTodo", map[string]any{"id": "x"}},
			mut{"c1", 5, "updateTodo", map[string]any{"id": "y", "done": true}}); r.status != 200 {
			t.Fatalf("push = %d %s", r.status, r.raw)
		}
		ans := a.pullInto(t, "alice", "g", c)
		var ops []string
		for _, op := range ans.Patch {
			ops = append(ops, op.Op+" "+op.Key)
		}
		slices.Sort(ops)
		if want := []string{"del todo/x", "put todo/y", "put todo/z"}; !slices.Equal(ops, want) || ans.LastMutationIDChanges["c1"] != 5 {
			t.Errorf("patch = %v, ids %v; want %v and c1 at 5", ops, ans.LastMutationIDChanges, want)
		}
		if c.state["todo/y"] != `{"done":true,"id":"y","title":"t y"}` {
			t.Errorf("todo/y = %s", c.state["todo/y"])
		}
	})

	resets := func(t *testing.T, name, group string, cookie any) {
		t.Helper()
		r, p := a.pull(t, "alice", group, cookie)
		if r.status != 200 || len(p.Patch) == 0 || p.Patch[0].Op != "clear" {
			t.Errorf("%s: pull = %d %s; want a reset", name, r.status, r.raw)
		}
	}
	t.Run("cookies that name no record this group holds get a reset", func(t *testing.T) {
		var cur map[string]any
		_ = json.Unmarshal(c.cookie, &cur)
		resets(t, "a forked group with its parent's cookie", "forked", cur)
		m := maps.Clone(cur)
		m["db"] = "0123456789abcdef"
		resets(t, "a forked group with its parent's cookie from another database", "forked-2", m)
		for name, edit := range map[string]func(m map[string]any){
			"unreadable record":      func(m map[string]any) { m["rec"] = "not hex" },
			"unreadable tag":         func(m map[string]any) { m["t"] = 7 },
			"version not a number":   func(m map[string]any) { m["v"] = "3" },
			"no record":              func(m map[string]any) { delete(m, "rec"); delete(m, "v"); delete(m, "t") },
			"no group (old sidecar)": func(m map[string]any) { delete(m, "g") },
			"no epoch (old sidecar)": func(m map[string]any) {
				delete(m, "db")
				delete(m, "g")
				delete(m, "rec")
				delete(m, "v")
				delete(m, "t")
			},
		} {
			m := maps.Clone(cur)
			edit(m)
			resets(t, name, "g", m)
		}
		resets(t, "an order-only cookie far ahead", "g", map[string]any{"order": 100000})
	})

	csnf := func(t *testing.T, name string, cookie any) {
		t.Helper()
		r, _ := a.pull(t, "alice", "g", cookie)
		if r.status != 200 || string(r.raw) != `{"error":"ClientStateNotFound"}` {
			t.Errorf("%s: pull = %d %s; want 200 ClientStateNotFound", name, r.status, r.raw)
		}
	}
	t.Run("this group's cookies from another database or another history get ClientStateNotFound", func(t *testing.T) {
		var cur map[string]any
		_ = json.Unmarshal(c.cookie, &cur)
		m := maps.Clone(cur)
		m["db"] = "0123456789abcdef"
		csnf(t, "another epoch", m)
		m = maps.Clone(cur)
		m["rec"] = "0000000000000001"
		csnf(t, "another record of this group", m)
		m = maps.Clone(cur)
		m["t"] = "00000000000000ff"
		csnf(t, "the current version with another tag (a history lost to a restore)", m)
		m = maps.Clone(cur)
		m["v"] = cur["v"].(float64) + 3
		csnf(t, "a version the record never reached", m)
		m = maps.Clone(cur)
		m["order"] = 10000000.0
		csnf(t, "an order the group never issued, with its record", m)
	})

	t.Run("reset mode answers resets, and its cookies name no record", func(t *testing.T) {
		hr := *h
		hr.env = maps.Clone(h.env)
		hr.env["SIDECAR_PATCH_MODE"] = "reset"
		reset := hr.start()
		ans := reset.pullInto(t, "alice", "g", c)
		if !ans.reset() || strings.Contains(string(ans.Cookie), "rec") {
			t.Fatalf("reset-mode pull = %s %+v; want a reset and a cookie without a record", ans.Cookie, ans.Patch)
		}
		if ans := a.pullInto(t, "alice", "g", c); !ans.reset() {
			t.Errorf("diff-mode pull with a reset-mode cookie = %+v; want a reset", ans.Patch)
		}
		if ans := a.pullInto(t, "alice", "g", c); len(ans.Patch) != 0 {
			t.Errorf("next pull = %+v; want an empty diff", ans.Patch)
		}
	})
	if want := map[string]string{"todo/y": `{"done":true,"id":"y","title":"t y"}`, "todo/z": `{"id":"z","title":"t z"}`, "me": `{"id":"alice","name":"ALICE"}`}; !maps.Equal(c.state, want) {
		t.Errorf("client state = %v, want %v", c.state, want)
	}
}

// TestEpoch: a cookie issued before the sidecar's schema was recreated
// gets ClientStateNotFound, not a silent trip back in time.
func TestEpoch(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := h.start()
	c := newReplica()
	a.pullInto(t, "alice", "g", c)
	if _, err := a.pool.Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{h.schema}.Sanitize()+" CASCADE"); err != nil {
		t.Fatal(err)
	}
	b := h.start() // migrates a new schema: a new epoch
	r := b.post(t, "/replicache/pull", "Bearer alice", pullBody("g", c.cookie))
	if r.status != 200 || string(r.raw) != `{"error":"ClientStateNotFound"}` {
		t.Errorf("pull with a cookie of the old database = %d %s; want ClientStateNotFound", r.status, r.raw)
	}
	if _, p := b.pull(t, "alice", "g2", map[string]any{"order": 100000}); p.Cookie.Order != 100001 {
		t.Errorf("pull with an order-only cookie = order %d; want 100001", p.Cookie.Order)
	}
}

// TestExposeRejections: with SIDECAR_EXPOSE_REJECTIONS a rejected mutation
// shows in the client view under the reserved prefix, and is diffed like
// any entry.
func TestExposeRejections(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_EXPOSE_REJECTIONS": "true"})
	a := h.start()
	c := newReplica()
	a.pullInto(t, "alice", "g", c)
	bad := mut{"c1", 1, "createTodo", map[string]any{"id": "t1", "title": ""}} // the API answers 422
	if r := a.push(t, "alice", "g", bad); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	ans := a.pullInto(t, "alice", "g", c)
	if len(ans.Patch) != 1 || ans.Patch[0].Op != "put" || ans.Patch[0].Key != "_sidecar/rejection/c1/1" {
		t.Fatalf("patch = %+v; want one put of _sidecar/rejection/c1/1", ans.Patch)
	}
	var v struct {
		ClientID   string `json:"clientID"`
		MutationID int64  `json:"mutationID"`
		Mutator    string `json:"mutator"`
		Status     int    `json:"status"`
		Reason     string `json:"reason"`
		Time       string `json:"time"`
	}
	if err := json.Unmarshal(ans.Patch[0].Value, &v); err != nil || v.Mutator != "createTodo" || v.Status != 422 || v.Reason == "" || v.Time == "" || v.MutationID != 1 {
		t.Errorf("rejection entry = %s (%v)", ans.Patch[0].Value, err)
	}
	if ans := a.pullInto(t, "alice", "g", c); len(ans.Patch) != 0 {
		t.Errorf("next pull = %+v; want an empty diff", ans.Patch)
	}
	// Without the setting, none.
	h.env["SIDECAR_EXPOSE_REJECTIONS"] = "false"
	_, p := h.start().pull(t, "alice", "g", nil)
	for _, op := range p.Patch {
		if strings.HasPrefix(op.Key, "_sidecar/") {
			t.Errorf("entry %s without SIDECAR_EXPOSE_REJECTIONS", op.Key)
		}
	}
}

// TestConditionalGETs: pages that answered with validators are asked for
// conditionally by a pull at the record's current version; a 304 is not
// downloaded; the last page of a paged source is always fetched in full;
// a pull behind the record fetches everything in full.
func TestConditionalGETs(t *testing.T) {
	t.Parallel()
	api, srv := newChangingAPI(t)
	api.validators = true
	api.mu.Lock()
	for i := range 30 { // 5 pages of 7, and the singleton
		id := fmt.Sprint("x", i)
		api.order = append(api.order, id)
		api.items[id] = fmt.Sprintf(`{"id":%q,"title":"todo %d","n":0}`, id, i)
	}
	api.mu.Unlock()
	h := newHarness(t, changingEnv(t, srv.URL, nil))
	a, b := h.start(), h.start()
	c := newReplica()
	a.pullInto(t, "alice", "g", c)
	stale := c.clone()
	counts := func() (conditional, notModified, bytes int) {
		api.mu.Lock()
		defer api.mu.Unlock()
		conditional, notModified, bytes = api.conditional, api.notModified, api.bodyBytes
		api.conditional, api.notModified, api.bodyBytes = 0, 0, 0
		return
	}
	counts()
	api.mu.Lock()
	pages := (len(api.order) + 6) / 7
	api.mu.Unlock()

	// Unchanged, through the other replica: every page but the last, and
	// the singleton, answer 304.
	if ans := b.pullInto(t, "alice", "g", c); len(ans.Patch) != 0 {
		t.Fatalf("unchanged pull = %+v", ans.Patch)
	}
	cond, hits, bytes := counts()
	if cond != pages || hits != pages || bytes > 7*200 {
		t.Errorf("unchanged pull of %d pages + singleton: %d conditional, %d not modified, %d body bytes; want %d, %d and only the last page's body",
			pages, cond, hits, bytes, pages, pages)
	}
	// A change on the first page: it is fetched, the rest still are not.
	api.mu.Lock()
	first := api.order[0]
	api.items[first] = fmt.Sprintf(`{"id":%q,"title":"edited","n":9}`, first)
	api.mu.Unlock()
	ans := a.pullInto(t, "alice", "g", c)
	if len(ans.Patch) != 1 || ans.Patch[0].Key != "item/"+first {
		t.Errorf("pull after one edit = %+v; want one put of item/%s", ans.Patch, first)
	}
	if _, hits, _ = counts(); hits != pages-1 {
		t.Errorf("%d pages answered 304 after an edit on page 1; want %d", hits, pages-1)
	}
	if want := api.view(); !maps.Equal(c.state, want) {
		t.Errorf("client = %v, want %v", c.state, want)
	}
	// A client behind the record: nothing is asked conditionally, and it
	// gets every change since its cookie.
	ans = b.pullInto(t, "alice", "g", stale)
	if cond, _, _ := counts(); cond != 0 {
		t.Errorf("a pull behind the record sent %d conditional requests; want 0", cond)
	}
	if len(ans.Patch) != 1 || !maps.Equal(stale.state, api.view()) {
		t.Errorf("stale client's pull = %+v", ans.Patch)
	}
	if hit := testutil.ToFloat64(b.sc.core.Metrics.Conditional.WithLabelValues("hit")); hit != float64(pages) {
		t.Errorf(`conditional_requests_total{result="hit"} = %v on the replica that had %d hits`, hit, pages)
	}
}

// TestRestoreFromBackup: the sidecar's database goes back in time (restored
// from a backup) and then moves on, re-issuing record versions and cookie
// orders with other content. A client holding a cookie from the lost
// history gets ClientStateNotFound, never a diff against the new history;
// a client whose cookie predates the backup gets a correct diff.
func TestRestoreFromBackup(t *testing.T) {
	t.Parallel()
	api, srv := newChangingAPI(t)
	h := newHarness(t, changingEnv(t, srv.URL, nil))
	a := h.start()
	rng := rand.New(rand.NewPCG(3, 4))
	api.change(rng, 20)
	old, lost, other := newReplica(), newReplica(), newReplica()
	a.pullInto(t, "alice", "g", old)
	lost.cookie = slices.Clone(old.cookie)
	lost.state = maps.Clone(old.state)

	ctx := context.Background()
	schema := pgx.Identifier{h.schema}.Sanitize()
	tables := []string{"client_groups", "clients", "view_entries", "view_versions", "view_pages"}
	for _, tb := range tables {
		if _, err := a.pool.Exec(ctx, fmt.Sprintf("CREATE TABLE %s.backup_%s AS TABLE %s.%s", schema, tb, schema, tb)); err != nil {
			t.Fatal(err)
		}
	}
	api.change(rng, 5)
	a.pullInto(t, "alice", "g", lost) // issued after the backup: lost by the restore
	// And one issued after the backup by a pull that changed nothing: its
	// record version and tag exist in the restored database, only its
	// order does not.
	unchanged := old.clone()
	a.pullInto(t, "alice", "g", unchanged)
	a.pullInto(t, "alice", "g", unchanged)
	for _, tb := range slices.Backward(tables) {
		if _, err := a.pool.Exec(ctx, fmt.Sprintf("DELETE FROM %s.%s", schema, tb)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tb := range tables {
		if _, err := a.pool.Exec(ctx, fmt.Sprintf("INSERT INTO %s.%s SELECT * FROM %s.backup_%s", schema, tb, schema, tb)); err != nil {
			t.Fatal(err)
		}
	}
	// Two tabs holding the same lost cookie: both start over (the first
	// one's answer must not make the order look issued).
	for tab := range 2 {
		if ans := a.pullInto(t, "alice", "g", unchanged.clone()); ans.Error != "ClientStateNotFound" {
			t.Errorf("tab %d: pull with a cookie of an unchanged pull lost to the restore = %+v; want ClientStateNotFound", tab, ans)
		}
	}
	// The restored database moves on: new changes, new versions, and
	// orders past the lost cookie's.
	other.cookie = slices.Clone(old.cookie)
	other.state = maps.Clone(old.state)
	for range 3 {
		api.change(rng, 5)
		a.pullInto(t, "alice", "g", other)
	}
	if ans := a.pullInto(t, "alice", "g", lost); ans.Error != "ClientStateNotFound" {
		t.Errorf("pull with a cookie lost to the restore = %+v; want ClientStateNotFound", ans)
	}
	// A cookie from before the backup is part of the restored history.
	if ans := a.pullInto(t, "alice", "g", old); ans.Error != "" || !maps.Equal(old.state, api.view()) {
		t.Errorf("pull with a cookie from before the backup = %+v; the client holds %v, want %v", ans, old.state, api.view())
	}
}

// TestBulkDeleteWithUnchangedPages: removing more keys at once than the
// record keeps removals for, while another page answers 304, is answered
// (a diff for the client that saw the version before), not refused.
func TestBulkDeleteWithUnchangedPages(t *testing.T) {
	t.Parallel()
	api, srv := newChangingAPI(t)
	api.validators = true
	api.mu.Lock()
	for i := range 1100 {
		id := fmt.Sprint("x", i)
		api.order = append(api.order, id)
		api.items[id] = fmt.Sprintf(`{"id":%q,"title":"todo %d","n":0}`, id, i)
	}
	api.mu.Unlock()
	a := newHarness(t, changingEnv(t, srv.URL, nil)).start()
	c := newReplica()
	a.pullInto(t, "alice", "g", c)
	api.mu.Lock()
	api.order = api.order[:0]
	clear(api.items)
	api.mu.Unlock()
	for i := range 2 {
		ans := a.pullInto(t, "alice", "g", c)
		if ans.Error != "" || !maps.Equal(c.state, api.view()) || (i == 0 && ans.reset()) {
			t.Fatalf("pull %d after deleting 1100 items = %d ops (reset %v); the client holds %d keys, want %d", i, len(ans.Patch), ans.reset(), len(c.state), len(api.view()))
		}
	}
}

// TestOddValidators: validators that Postgres text cannot hold, or a
// Last-Modified within the second of the answer (weak), are not
// remembered; pulls go on working.
func TestOddValidators(t *testing.T) {
	t.Parallel()
	var lastModified atomic.Value
	lastModified.Store("")
	body := `{"id":"only"}`
	var mu sync.Mutex
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("ETag", "\"caf\xe9\"")
		if lm := lastModified.Load().(string); lm != "" {
			w.Header().Set("Last-Modified", lm)
			if r.Header.Get("If-Modified-Since") == lm {
				w.WriteHeader(http.StatusNotModified)
				return
			}
		}
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(api.Close)
	f := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(f, []byte(`{"clientView":[{"path":"/one","key":"one"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	a := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": f, "SIDECAR_AUTH_PATH": ""}).start()
	c := newReplica()
	for i, v := range []string{"v1", "v2", "v3"} {
		mu.Lock()
		body = fmt.Sprintf(`{"id":%q}`, v)
		mu.Unlock()
		// Changed within the same second as the answer: weak.
		lastModified.Store(time.Now().UTC().Format(http.TimeFormat))
		if ans := a.pullInto(t, "alice", "g", c); ans.Error != "" || c.state["one"] != fmt.Sprintf(`{"id":%q}`, v) {
			t.Fatalf("pull %d = %+v; the client holds %v", i, ans, c.state)
		}
	}
}

// TestHostileKeys: keys that Postgres text cannot hold (NUL) work in diff
// mode; keys the sidecar cannot keep (too long, or under the reserved
// prefix, made from an item's field) fail the pull naming the source, in
// both modes, instead of wedging the group.
func TestHostileKeys(t *testing.T) {
	t.Parallel()
	var id atomic.Value
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, _ := json.Marshal(map[string]any{"items": []map[string]string{{"id": "plain"}, {"id": id.Load().(string)}}})
		_, _ = w.Write(v)
	}))
	t.Cleanup(api.Close)
	f := filepath.Join(t.TempDir(), "m.json")
	if err := os.WriteFile(f, []byte(`{"clientView":[{"path":"/items","items":"items","key":"{id}","pagination":{"type":"none"}}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"diff", "reset"} {
		h := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": f, "SIDECAR_AUTH_PATH": "", "SIDECAR_PATCH_MODE": mode})
		sc := h.start()
		id.Store("nul\x00inside")
		c := newReplica()
		sc.pullInto(t, "alice", "g", c)
		if c.state["nul\x00inside"] == "" {
			t.Errorf("%s: the NUL key is missing: %v", mode, c.state)
		}
		if ans := sc.pullInto(t, "alice", "g", c); mode == "diff" && len(ans.Patch) != 0 {
			t.Errorf("%s: unchanged pull = %+v; want an empty diff", mode, ans.Patch)
		}
		for _, bad := range []string{strings.Repeat("k", 3000), "_sidecar/rejection/c1/1"} {
			id.Store(bad)
			r, _ := sc.pull(t, "alice", "g", nil)
			if r.status != http.StatusBadGateway || r.str("source") != "/items" {
				t.Errorf("%s: pull with key %.20q… = %d %s; want 502 naming the source", mode, bad, r.status, r.raw)
			}
		}
	}
}
