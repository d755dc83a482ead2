package proxytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// LegacyAPI is a real HTTP service standing in for the unmodified REST API
// the sidecar fronts: per-user todos behind "Authorization: Bearer <user>",
// list pagination by Link header (LegacyPageSize a page), /api/me, the
// usual 201/200/204/404/409/422 answers, Idempotency-Key replay, and
// /legacy/echo, which answers 418 with what it received. Tests can slow it
// down or make it fail. It is safe for concurrent use.
type LegacyAPI struct {
	Server *httptest.Server

	mu      sync.Mutex
	todos   map[string]map[string]json.RawMessage // user → id → todo
	order   map[string][]string                   // user → ids in creation order
	idem    map[string]int                        // user+key → status first answered
	calls   map[string]int                        // idempotency key → calls received
	effects map[string]int                        // idempotency key → times it changed state
	log     []string                              // "METHOD path" of every mutation call

	delay atomic.Int64 // nanoseconds added to every answer
	hook  atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]
}

// LegacyPageSize is how many todos one page of /api/todos holds.
const LegacyPageSize = 3

// NewLegacyAPI starts a LegacyAPI, stopped when the test ends.
func NewLegacyAPI(t testing.TB) *LegacyAPI {
	t.Helper()
	l := &LegacyAPI{
		todos: map[string]map[string]json.RawMessage{}, order: map[string][]string{},
		idem: map[string]int{}, calls: map[string]int{}, effects: map[string]int{},
	}
	l.Server = httptest.NewServer(l)
	t.Cleanup(l.Server.Close)
	return l
}

// SetFault makes the upstream answer f's status instead of serving, for
// every request where f returns non-zero. nil clears it.
func (l *LegacyAPI) SetFault(f func(r *http.Request) int) {
	if f == nil {
		l.SetHook(nil)
		return
	}
	l.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		code := f(r)
		if code == 0 {
			return false
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"error":"injected fault"}`)
		return true
	})
}

// SetHook lets h answer any request it wants to (returning true); nil clears it.
func (l *LegacyAPI) SetHook(h func(w http.ResponseWriter, r *http.Request) bool) {
	if h == nil {
		l.hook.Store(nil)
		return
	}
	l.hook.Store(&h)
}

// SetDelay makes every answer wait d (0: no delay).
func (l *LegacyAPI) SetDelay(d time.Duration) { l.delay.Store(int64(d)) }

// Calls returns "METHOD escaped-path[?query]" of every mutation call so far.
func (l *LegacyAPI) Calls() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.log...)
}

func (l *LegacyAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body)) // for a hook
	if d := time.Duration(l.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	if h := l.hook.Load(); h != nil && (*h)(w, r) {
		return
	}
	if r.URL.Path == "/legacy/echo" {
		l.echo(w, r, body)
		return
	}
	user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || user == "" {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "unauthenticated"})
		return
	}
	if r.Method == http.MethodGet {
		l.get(w, r, user)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls[key]++
	call := r.Method + " " + r.URL.EscapedPath()
	if r.URL.RawQuery != "" {
		call += "?" + r.URL.RawQuery
	}
	l.log = append(l.log, call)
	if status, seen := l.idem[user+"\x00"+key]; seen && key != "" {
		w.WriteHeader(status) // replay: no second effect
		return
	}
	status := l.mutate(r, user, body)
	if status >= 200 && status < 300 {
		l.effects[key]++
	}
	if key != "" {
		l.idem[user+"\x00"+key] = status
	}
	w.WriteHeader(status)
}

// mutate applies one call; l.mu is held.
func (l *LegacyAPI) mutate(r *http.Request, user string, body []byte) int {
	todos := l.todos[user]
	if todos == nil {
		todos = map[string]json.RawMessage{}
		l.todos[user] = todos
	}
	id, isItem := strings.CutPrefix(r.URL.Path, "/api/todos/")
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/api/todos":
		var t struct {
			ID    string `json:"id"`
			Title string `json:"title"`
		}
		if json.Unmarshal(body, &t) != nil || t.ID == "" || t.Title == "" {
			return http.StatusUnprocessableEntity
		}
		if _, exists := todos[t.ID]; exists {
			return http.StatusConflict
		}
		todos[t.ID] = json.RawMessage(body)
		l.order[user] = append(l.order[user], t.ID)
		return http.StatusCreated
	case r.Method == http.MethodPatch && isItem:
		cur, ok := todos[id]
		if !ok {
			return http.StatusNotFound
		}
		var merged, patch map[string]any
		_ = json.Unmarshal(cur, &merged)
		if json.Unmarshal(body, &patch) != nil {
			return http.StatusUnprocessableEntity
		}
		for k, v := range patch {
			merged[k] = v
		}
		todos[id], _ = json.Marshal(merged)
		return http.StatusOK
	case r.Method == http.MethodDelete && isItem:
		if _, ok := todos[id]; !ok {
			return http.StatusNotFound
		}
		delete(todos, id)
		ids := l.order[user][:0]
		for _, x := range l.order[user] {
			if x != id {
				ids = append(ids, x)
			}
		}
		l.order[user] = ids
		return http.StatusNoContent
	}
	return http.StatusNotFound
}

func (l *LegacyAPI) get(w http.ResponseWriter, r *http.Request, user string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch r.URL.Path {
	case "/api/me":
		writeJSON(w, http.StatusOK, map[string]string{"id": user, "name": strings.ToUpper(user)})
	case "/api/todos":
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		page = max(page, 1)
		ids := l.order[user]
		lo, hi := min((page-1)*LegacyPageSize, len(ids)), min(page*LegacyPageSize, len(ids))
		if hi < len(ids) {
			w.Header().Set("Link", fmt.Sprintf(`</api/todos?page=%d>; rel="next"`, page+1))
		}
		items := make([]json.RawMessage, 0, hi-lo)
		for _, id := range ids[lo:hi] {
			items = append(items, l.todos[user][id])
		}
		writeJSON(w, http.StatusOK, map[string]any{"todos": items})
	default:
		http.NotFound(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (l *LegacyAPI) echo(w http.ResponseWriter, r *http.Request, body []byte) {
	h := map[string]string{}
	for k := range r.Header {
		h[k] = r.Header.Get(k)
	}
	writeJSON(w, http.StatusTeapot, map[string]any{
		"method": r.Method, "path": r.URL.Path, "query": r.URL.RawQuery, "body": string(body), "headers": h, "host": r.Host,
	})
}

// TodoIDs returns the user's todo ids in creation order.
func (l *LegacyAPI) TodoIDs(user string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.order[user]...)
}

// CallsFor returns how many calls carried the idempotency key.
func (l *LegacyAPI) CallsFor(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls[key]
}

// MutationCalls returns how many mutation calls arrived in total.
func (l *LegacyAPI) MutationCalls() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.log)
}

// MultiplyApplied lists idempotency keys whose effect happened more than once.
func (l *LegacyAPI) MultiplyApplied() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for k, n := range l.effects {
		if n > 1 {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
