package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// itemsAPI is an API of a few collections of items, each item carrying
// updated_at (the API's clock), for the review's tests of delta reads:
// /api/me answers the bearer token's user; every other GET path is a
// collection (the same for every user unless perUser), paged by Link
// header (pageSize items a page, no total) and filtered by
// ?updated_after= (strictly after). It notes the Authorization of every
// read.
type itemsAPI struct {
	srv      *httptest.Server
	pageSize int
	perUser  bool

	mu    sync.Mutex
	items map[string][]*apiItem // collection path (+ "\x00" + user when perUser) → items in order
	seq   time.Time
	auth  map[string][]string // path → the Authorization of each read
	hook  func(r *http.Request)
}

type apiItem struct {
	ID        string `json:"id"`
	Title     string `json:"title"`
	UpdatedAt string `json:"updated_at"`
	at        time.Time
}

func newItemsAPI(t testing.TB) *itemsAPI {
	a := &itemsAPI{pageSize: 100, items: map[string][]*apiItem{}, auth: map[string][]string{}}
	a.srv = httptest.NewServer(a)
	t.Cleanup(a.srv.Close)
	return a
}

func (a *itemsAPI) coll(path, user string) string {
	if a.perUser {
		return path + "\x00" + user
	}
	return path
}

// put creates or replaces an item of a collection (in the API directly).
func (a *itemsAPI) put(path, user, id, title string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now().UTC()
	if !now.After(a.seq) {
		now = a.seq.Add(time.Microsecond)
	}
	a.seq = now
	c := a.coll(path, user)
	it := &apiItem{ID: id, Title: title, UpdatedAt: now.Format(time.RFC3339Nano), at: now}
	for i, x := range a.items[c] {
		if x.ID == id {
			a.items[c][i] = it
			return
		}
	}
	a.items[c] = append(a.items[c], it)
}

// remove hard-deletes an item (in the API directly: no sidecar sees it).
func (a *itemsAPI) remove(path, user, id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.coll(path, user)
	a.items[c] = slices.DeleteFunc(a.items[c], func(x *apiItem) bool { return x.ID == id })
}

// move takes an item out of one collection and puts it at the end of
// another, with a new updated_at.
func (a *itemsAPI) move(from, to, user, id string) {
	a.mu.Lock()
	var title string
	c := a.coll(from, user)
	a.items[c] = slices.DeleteFunc(a.items[c], func(x *apiItem) bool {
		if x.ID == id {
			title = x.Title
			return true
		}
		return false
	})
	a.mu.Unlock()
	a.put(to, user, id, title)
}

func (a *itemsAPI) authOf(path string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.auth[path])
}

func (a *itemsAPI) setHook(h func(r *http.Request)) {
	a.mu.Lock()
	a.hook = h
	a.mu.Unlock()
}

func (a *itemsAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	user, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if r.URL.Path == "/api/me" {
		if user == "" {
			http.Error(w, `{"error":"unauthenticated"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"id":%q}`, user)
		return
	}
	if r.Method != http.MethodGet {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	a.mu.Lock()
	hook := a.hook
	a.mu.Unlock()
	if hook != nil {
		hook(r)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.auth[r.URL.Path] = append(a.auth[r.URL.Path], r.Header.Get("Authorization"))
	q := r.URL.Query()
	var after time.Time
	filtered := false
	if s := q.Get("updated_after"); s != "" {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			after, filtered = t, true
		}
	}
	list := []*apiItem{}
	for _, it := range a.items[a.coll(r.URL.Path, user)] {
		if !filtered || it.at.After(after) {
			list = append(list, it)
		}
	}
	page, _ := strconv.Atoi(q.Get("page"))
	page = max(page, 1)
	lo, hi := min((page-1)*a.pageSize, len(list)), min(page*a.pageSize, len(list))
	if hi < len(list) {
		q.Set("page", strconv.Itoa(page+1))
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, q.Encode()))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"items": list[lo:hi]})
}

// reviewHarness starts a sidecar in front of api with mapping.
func reviewHarness(t *testing.T, api *itemsAPI, mapping string, env map[string]string) *harness {
	t.Helper()
	e := map[string]string{"SIDECAR_UPSTREAM_URL": api.srv.URL, "SIDECAR_MAPPING_FILE": writeFile(t, mapping)}
	for k, v := range env {
		e[k] = v
	}
	return newHarness(t, e)
}

// TestReviewSharedDeltaSourceForgetsNoDelete: a shared source that also
// reads by its changes is served from the replica's copy, a full read;
// an item deleted in the API directly must leave the clients' views at
// the latest once fullEvery has passed. Before the fix, the pull treated
// the copy as the delta read its plan asked for: it kept every key the
// copy lacked, and the copy's "full read" moved the source's last full
// read, so fullEvery never came and the deleted item stayed for ever.
func TestReviewSharedDeltaSourceForgetsNoDelete(t *testing.T) {
	t.Parallel()
	api := newItemsAPI(t)
	api.put("/api/catalog", "", "c1", "one")
	api.put("/api/catalog", "", "c2", "two")
	sc := reviewHarness(t, api, `{"clientView": [
		{"path": "/api/me", "key": "me"},
		{"path": "/api/catalog", "items": "items", "key": "item/{id}", "shared": true, "maxAge": "10ms",
		 "changes": {"param": "updated_after", "field": "updated_at", "fullEvery": "300ms"}}]}`, nil).start()
	c := newReplica()
	sc.pullInto(t, "alice", "g", c)
	if _, ok := c.state["item/c2"]; !ok {
		t.Fatalf("first pull lacks item/c2: %v", c.state)
	}
	api.remove("/api/catalog", "", "c2")
	// Pull until fullEvery has surely passed since the deletion (pulls
	// in between may read by changes and keep the item meanwhile).
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		sc.pullInto(t, "alice", "g", c)
	}
	if _, ok := c.state["item/c2"]; ok {
		t.Errorf("item/c2, deleted in the API over a second ago (fullEvery 300ms, maxAge 10ms), is still in the view")
	}
}

// TestReviewSharedSourceConfirmedWithoutCredentials: a shared source is
// read without any user's credentials, also when a deletion its read
// would answer is confirmed by a second read (its pages, by Link header
// without a total, cannot prove they fit together). Before the fix, the
// confirming read was the pulling user's, with the user's Authorization.
func TestReviewSharedSourceConfirmedWithoutCredentials(t *testing.T) {
	t.Parallel()
	api := newItemsAPI(t)
	api.pageSize = 2
	for i := range 5 {
		api.put("/api/catalog", "", fmt.Sprint("c", i), fmt.Sprint("item ", i))
	}
	sc := reviewHarness(t, api, `{"clientView": [
		{"path": "/api/me", "key": "me"},
		{"path": "/api/catalog", "items": "items", "key": "item/{id}", "pagination": {"type": "link"},
		 "shared": true, "maxAge": "10ms"}]}`, nil).start()
	c := newReplica()
	sc.pullInto(t, "alice", "g", c)
	api.remove("/api/catalog", "", "c3")
	time.Sleep(20 * time.Millisecond) // the copy's maxAge
	sc.pullInto(t, "alice", "g", c)
	if _, ok := c.state["item/c3"]; ok {
		t.Errorf("item/c3, deleted in the API, is still in the view")
	}
	for _, a := range api.authOf("/api/catalog") {
		if a != "" {
			t.Errorf("a read of the shared source carried Authorization %q; want none", a)
		}
	}
}

// TestReviewConfirmKeepsKeysUnique: in a view whose sources share a key
// template (an item moves between /api/open and /api/done), a full read
// that would delete something is confirmed by a second read; an item that
// moved from one source to the other between the two reads is in the
// first read under one and in the second under the other. The confirmed
// view must still hold each key once. Before the fix it held the moved
// item twice: a reset answered both values, the later one (the first
// read's) winning in the client, while the record stored the other; and
// the record this replica cached kept the first read's value while the
// database held the second's, so the next pull through another replica
// found nothing to put and the client kept a value the API no longer had.
func TestReviewConfirmKeepsKeysUnique(t *testing.T) {
	t.Parallel()
	// Written whole, and streamed as the view is read (the confirming
	// read's pages then go out too, and must not put what the merge keeps
	// from the first read).
	for _, streamed := range []bool{false, true} {
		t.Run(fmt.Sprintf("streamed=%v", streamed), func(t *testing.T) {
			t.Parallel()
			confirmKeepsKeysUnique(t, streamed)
		})
	}
}

func confirmKeepsKeysUnique(t *testing.T, streamed bool) {
	api := newItemsAPI(t)
	api.perUser, api.pageSize = true, 2
	for _, id := range []string{"a", "b", "x"} {
		api.put("/api/open", "alice", id, "title "+id)
	}
	api.put("/api/done", "alice", "k", "title k")
	h := reviewHarness(t, api, `{"clientView": [
		{"path": "/api/open", "items": "items", "key": "todo/{id}", "pagination": {"type": "link"}},
		{"path": "/api/done", "items": "items", "key": "todo/{id}", "pagination": {"type": "link"}}]}`, nil)
	if streamed {
		h.streamAfter = 1
	}
	one, two := h.start(), h.start()
	first := newReplica()
	one.pullInto(t, "alice", "g", first)

	// x goes (a full read would delete it: confirmed by a second read),
	// and k moves from done to open just as the second read begins.
	api.mu.Lock()
	var kBefore string
	for _, it := range api.items[api.coll("/api/done", "alice")] {
		if it.ID == "k" {
			b, _ := json.Marshal(it)
			kBefore = string(b)
		}
	}
	api.mu.Unlock()
	api.remove("/api/open", "alice", "x")
	var mu sync.Mutex
	reads := map[string]int{}
	moved := make(chan struct{})
	api.setHook(func(r *http.Request) {
		if r.URL.Query().Get("page") != "" {
			return
		}
		mu.Lock()
		reads[r.URL.Path]++
		n := reads[r.URL.Path]
		mu.Unlock()
		switch {
		case r.URL.Path == "/api/done" && n == 2:
			api.move("/api/done", "/api/open", "alice", "k")
			close(moved)
		case r.URL.Path == "/api/open" && n == 2:
			<-moved
		}
	})
	// A new client of the group (a new tab): its pull answers a reset.
	c := newReplica()
	r := one.pullInto(t, "alice", "g", c)
	if !r.reset() {
		t.Fatalf("the new client's pull was not a reset: %v", ops(r))
	}
	mu.Lock()
	if reads["/api/done"] < 2 {
		t.Fatalf("the deletion was not confirmed by a second read (reads %v)", reads)
	}
	mu.Unlock()
	if !streamed { // a streamed answer puts a source read again twice, the second read last
		seen := map[string]bool{}
		for _, op := range r.Patch {
			if op.Op == "put" && seen[op.Key] {
				t.Errorf("the answer put %s twice", op.Key)
			}
			seen[op.Key] = true
		}
	}
	// The merge keeps the moved item where the first read had it, and so
	// does the record: the client must hold that value too, or a later
	// diff against the record could leave it stale.
	if got := c.state["todo/k"]; got != kBefore {
		t.Errorf("after the reset the client holds todo/k = %s; the record holds the first read's %s", got, kBefore)
	}
	api.setHook(nil)
	// One more pull, through the other replica: the view is the API's.
	two.pullInto(t, "alice", "g", c)
	want := map[string]string{}
	for _, p := range []string{"/api/open", "/api/done"} {
		api.mu.Lock()
		for _, it := range api.items[api.coll(p, "alice")] {
			b, _ := json.Marshal(it)
			want["todo/"+it.ID] = string(b)
		}
		api.mu.Unlock()
	}
	for k, v := range want {
		if c.state[k] != v {
			t.Errorf("after the next pull the client holds %s = %s; the API has %s", k, c.state[k], v)
		}
	}
	if len(c.state) != len(want) {
		t.Errorf("the client holds %d entries, the API %d", len(c.state), len(want))
	}
}

// TestReviewDeltaReadSkipsNoUpdate: a delta read of several pages (Link
// pages without a total) while an item on a page already read is deleted
// in the API: the next item moves up onto that page and the read skips
// it. A delta read deletes nothing, but its watermark moves past the
// skipped item's change, so the next delta read (asking from the
// watermark less the overlap) never brings it: the update is missing
// until the group's next full read (fullEvery, 10 minutes by default),
// though it was made through the API's ordinary write path.
func TestReviewDeltaReadSkipsNoUpdate(t *testing.T) {
	t.Parallel()
	api := proxytest.NewChangingAPI(t)
	api.PageSize = 3
	seed(api, "alice", 10)
	sc := deltaHarness(t, api, "10m", nil).start()
	c := newReplica()
	sc.pullInto(t, "alice", "g", c)
	// Four updates a minute ago, one now: a delta read of two pages.
	api.SetSkew(-time.Minute)
	for _, id := range []string{"t001", "t002", "t003", "t004"} {
		api.Put("alice", id, "renamed "+id)
	}
	api.SetSkew(0)
	api.Put("alice", "t005", "renamed t005")
	var once sync.Once
	api.SetHook(func(r *http.Request) {
		if r.URL.Query().Get("updated_after") != "" && r.URL.Query().Get("page") == "2" {
			once.Do(func() { api.Delete("alice", "t002") }) // another writer, in the API
		}
	})
	sc.pullInto(t, "alice", "g", c)
	api.SetHook(nil)
	sc.pullInto(t, "alice", "g", c) // and the next one
	if got := c.state["todo/t004"]; !strings.Contains(got, "renamed t004") {
		t.Errorf("todo/t004 = %s after two delta reads; the API renamed it before both", got)
	}
}
