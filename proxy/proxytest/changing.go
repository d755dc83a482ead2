package proxytest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ChangingAPI is a legacy API shaped for delta reads, as many are: every
// todo carries updated_at (the API's own clock, RFC 3339), GET /api/todos
// pages by Link header and filters by ?updated_after= (strictly after),
// and a delete is hard, or soft (deleted: true, shown only to a filtered
// read) when SoftDelete is set. /api/lists never changes, /api/me answers
// the bearer token's user. Writes honour Idempotency-Key. It counts what
// it serves: GETs, bytes, and the most requests it held at once.
type ChangingAPI struct {
	Server *httptest.Server
	// PageSize is the todos per page (default 50); Total adds X-Total-Count.
	PageSize int
	Total    bool
	// SoftDelete keeps deleted todos with deleted: true (and a new
	// updated_at), shown only to filtered reads.
	SoftDelete bool
	// IgnoreFilter answers the whole collection whatever the filter (a
	// mistyped parameter).
	IgnoreFilter bool

	mu    sync.Mutex
	todos map[string]map[string]*changingTodo // user → id → todo
	order map[string][]string
	skew  time.Duration
	seq   time.Time // the last updated_at given: never twice the same
	keys  map[string]int
	hook  func(r *http.Request) // called before a GET is answered, without mu

	catalogAuth []string // the Authorization each /api/catalog read carried

	gets, bytes, inFlight, maxInFlight atomic.Int64
	perPath                            sync.Map // path → *atomic.Int64
}

type changingTodo struct {
	ID        string `json:"id"`
	Title     string `json:"title"`
	UpdatedAt string `json:"updated_at"`
	Deleted   bool   `json:"deleted,omitempty"`
	at        time.Time
}

// NewChangingAPI starts a ChangingAPI, stopped when the test ends.
func NewChangingAPI(t testing.TB) *ChangingAPI {
	a := NewChangingAPIHandler()
	a.Server = httptest.NewServer(a)
	t.Cleanup(a.Server.Close)
	return a
}

// NewChangingAPIHandler returns a ChangingAPI to serve as the caller
// wishes (Server stays nil).
func NewChangingAPIHandler() *ChangingAPI {
	return &ChangingAPI{PageSize: 50, todos: map[string]map[string]*changingTodo{}, order: map[string][]string{}, keys: map[string]int{}}
}

// SetSkew makes the API's clock run d ahead (another API replica's clock).
func (a *ChangingAPI) SetSkew(d time.Duration) {
	a.mu.Lock()
	a.skew = d
	a.mu.Unlock()
}

// SetHook calls h before each GET is answered (outside the API's lock).
func (a *ChangingAPI) SetHook(h func(r *http.Request)) {
	a.mu.Lock()
	a.hook = h
	a.mu.Unlock()
}

// now is the API's clock; a.mu is held.
func (a *ChangingAPI) now() time.Time {
	t := time.Now().Add(a.skew).UTC()
	if !t.After(a.seq) {
		t = a.seq.Add(time.Microsecond)
	}
	a.seq = t
	return t
}

// Put creates or replaces a todo directly (a write that bypasses the
// sidecar).
func (a *ChangingAPI) Put(user, id, title string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.put(user, id, title)
}

func (a *ChangingAPI) put(user, id, title string) {
	if a.todos[user] == nil {
		a.todos[user] = map[string]*changingTodo{}
	}
	t := a.now()
	if old, ok := a.todos[user][id]; !ok || old.Deleted {
		if !ok {
			a.order[user] = append(a.order[user], id)
		}
	}
	a.todos[user][id] = &changingTodo{ID: id, Title: title, UpdatedAt: t.Format(time.RFC3339Nano), at: t}
}

// Delete deletes a todo directly: hard, or soft with SoftDelete.
func (a *ChangingAPI) Delete(user, id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.delete(user, id)
}

func (a *ChangingAPI) delete(user, id string) bool {
	td, ok := a.todos[user][id]
	if !ok || td.Deleted {
		return false
	}
	if a.SoftDelete {
		t := a.now()
		td.Deleted, td.UpdatedAt, td.at = true, t.Format(time.RFC3339Nano), t
		return true
	}
	delete(a.todos[user], id)
	a.order[user] = slices.DeleteFunc(a.order[user], func(x string) bool { return x == id })
	return true
}

// Live returns the user's todos that are not deleted, id → title.
func (a *ChangingAPI) Live(user string) map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]string{}
	for id, td := range a.todos[user] {
		if !td.Deleted {
			out[id] = td.Title
		}
	}
	return out
}

// Stats is what the API served.
type Stats struct {
	GETs, Bytes, MaxInFlight int64
}

// Stats returns what the API served so far.
func (a *ChangingAPI) Stats() Stats {
	return Stats{GETs: a.gets.Load(), Bytes: a.bytes.Load(), MaxInFlight: a.maxInFlight.Load()}
}

// GETs returns how many GETs asked for path.
func (a *ChangingAPI) GETs(path string) int64 {
	if c, ok := a.perPath.Load(path); ok {
		return c.(*atomic.Int64).Load()
	}
	return 0
}

// CatalogAuth returns the Authorization header each read of the public
// /api/catalog carried.
func (a *ChangingAPI) CatalogAuth() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.catalogAuth)
}

// ResetStats forgets what was served.
func (a *ChangingAPI) ResetStats() {
	a.gets.Store(0)
	a.bytes.Store(0)
	a.maxInFlight.Store(0)
	a.perPath.Range(func(k, _ any) bool { a.perPath.Delete(k); return true })
}

func (a *ChangingAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := a.inFlight.Add(1)
	defer a.inFlight.Add(-1)
	for m := a.maxInFlight.Load(); n > m && !a.maxInFlight.CompareAndSwap(m, n); m = a.maxInFlight.Load() {
	}
	if r.URL.Path == "/api/catalog" && r.Method != http.MethodGet {
		w.WriteHeader(http.StatusNoContent) // a write of the catalog (by an admin)
		return
	}
	if r.URL.Path == "/api/catalog" { // public reference data: the same for everyone
		c, _ := a.perPath.LoadOrStore(r.URL.Path, &atomic.Int64{})
		c.(*atomic.Int64).Add(1)
		a.gets.Add(1)
		a.mu.Lock()
		a.catalogAuth = append(a.catalogAuth, r.Header.Get("Authorization"))
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"items":[{"id":"c1","name":"one"},{"id":"c2","name":"two"}]}`))
		return
	}
	user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || user == "" {
		http.Error(w, `{"error":"unauthenticated"}`, http.StatusUnauthorized)
		return
	}
	if r.Method == http.MethodGet {
		a.mu.Lock()
		hook := a.hook
		a.mu.Unlock()
		if hook != nil {
			hook(r)
		}
		a.gets.Add(1)
		c, _ := a.perPath.LoadOrStore(r.URL.Path, &atomic.Int64{})
		c.(*atomic.Int64).Add(1)
		body, hdr := a.get(r, user)
		for k, v := range hdr {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Type", "application/json")
		a.bytes.Add(int64(len(body)))
		_, _ = w.Write(body)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	key := r.Header.Get("Idempotency-Key")
	if status, seen := a.keys[user+"\x00"+key]; seen && key != "" {
		w.WriteHeader(status) // a replay: no second effect
		return
	}
	status := a.write(r, user)
	if key != "" {
		a.keys[user+"\x00"+key] = status
	}
	w.WriteHeader(status)
}

// write applies one write and returns its status; a.mu is held.
func (a *ChangingAPI) write(r *http.Request, user string) int {
	id, hasID := strings.CutPrefix(r.URL.Path, "/api/todos/")
	var in struct{ ID, Title string }
	_ = json.NewDecoder(r.Body).Decode(&in)
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/api/todos" && in.ID != "":
		a.put(user, in.ID, in.Title)
		return http.StatusCreated
	case (r.Method == http.MethodPatch || r.Method == http.MethodPut) && hasID:
		if td, ok := a.todos[user][id]; !ok || td.Deleted {
			return http.StatusNotFound
		}
		a.put(user, id, in.Title)
		return http.StatusOK
	case r.Method == http.MethodDelete && hasID:
		if !a.delete(user, id) {
			return http.StatusNotFound
		}
		return http.StatusNoContent
	}
	return http.StatusNotFound
}

func (a *ChangingAPI) get(r *http.Request, user string) ([]byte, http.Header) {
	a.mu.Lock()
	defer a.mu.Unlock()
	hdr := http.Header{}
	switch r.URL.Path {
	case "/api/me":
		b, _ := json.Marshal(map[string]string{"id": user})
		return b, hdr
	case "/api/lists":
		b, _ := json.Marshal(map[string]any{"lists": []map[string]string{{"id": "inbox", "name": "Inbox"}, {"id": "work", "name": user + "'s work"}}})
		return b, hdr
	case "/api/todos":
	default:
		return []byte(`{"error":"not found"}`), hdr
	}
	q := r.URL.Query()
	var after time.Time
	filtered := false
	if s := q.Get("updated_after"); s != "" && !a.IgnoreFilter {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err == nil {
			after, filtered = t, true
		}
	}
	list := []*changingTodo{}
	for _, id := range a.order[user] {
		td := a.todos[user][id]
		if td == nil || td.Deleted && !filtered || filtered && !td.at.After(after) {
			continue
		}
		list = append(list, td)
	}
	page, _ := strconv.Atoi(q.Get("page"))
	page = max(page, 1)
	size := max(a.PageSize, 1)
	lo, hi := min((page-1)*size, len(list)), min(page*size, len(list))
	if hi < len(list) {
		q.Set("page", strconv.Itoa(page+1))
		hdr.Set("Link", fmt.Sprintf(`</api/todos?%s>; rel="next"`, q.Encode()))
	}
	if a.Total {
		hdr.Set("X-Total-Count", strconv.Itoa(len(list)))
	}
	b, _ := json.Marshal(map[string]any{"todos": list[lo:hi]})
	return b, hdr
}
