package proxy

import (
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

// legacy is a real HTTP service standing in for the unmodified REST API the
// sidecar fronts: per-user todos behind "Authorization: Bearer <user>", list
// pagination by Link header, the usual 201/200/204/404/409/422 answers, and
// Idempotency-Key replay. Tests can slow it down or make it fail.
type legacy struct {
	srv *httptest.Server

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

const legacyPageSize = 3

func newLegacy(t testing.TB) *legacy {
	t.Helper()
	l := &legacy{
		todos: map[string]map[string]json.RawMessage{}, order: map[string][]string{},
		idem: map[string]int{}, calls: map[string]int{}, effects: map[string]int{},
	}
	l.srv = httptest.NewServer(l)
	t.Cleanup(l.srv.Close)
	return l
}

// setFault makes the upstream answer f's status instead of serving, for
// every request where f returns non-zero. nil clears it.
func (l *legacy) setFault(f func(r *http.Request) int) {
	if f == nil {
		l.setHook(nil)
		return
	}
	l.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		code := f(r)
		if code == 0 {
			return false
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"error":"injected fault"}`)
		return true
	})
}

// setHook lets h answer any request it wants to (returning true); nil clears it.
func (l *legacy) setHook(h func(w http.ResponseWriter, r *http.Request) bool) {
	if h == nil {
		l.hook.Store(nil)
		return
	}
	l.hook.Store(&h)
}

func (l *legacy) setDelay(d time.Duration) { l.delay.Store(int64(d)) }

func (l *legacy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
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
func (l *legacy) mutate(r *http.Request, user string, body []byte) int {
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

func (l *legacy) get(w http.ResponseWriter, r *http.Request, user string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch r.URL.Path {
	case "/api/me":
		writeJSON(w, http.StatusOK, map[string]string{"id": user, "name": strings.ToUpper(user)})
	case "/api/todos":
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		page = max(page, 1)
		ids := l.order[user]
		lo, hi := min((page-1)*legacyPageSize, len(ids)), min(page*legacyPageSize, len(ids))
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

func (l *legacy) echo(w http.ResponseWriter, r *http.Request, body []byte) {
	h := map[string]string{}
	for k := range r.Header {
		h[k] = r.Header.Get(k)
	}
	writeJSON(w, http.StatusTeapot, map[string]any{
		"method": r.Method, "path": r.URL.Path, "query": r.URL.RawQuery, "body": string(body), "headers": h, "host": r.Host,
	})
}

// todoIDs returns the user's todo ids in creation order.
func (l *legacy) todoIDs(user string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.order[user]...)
}

// callsFor returns how many calls carried the idempotency key.
func (l *legacy) callsFor(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls[key]
}

// mutationCalls returns how many mutation calls arrived in total.
func (l *legacy) mutationCalls() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.log)
}

// multiplyApplied lists idempotency keys whose effect happened more than once.
func (l *legacy) multiplyApplied() []string {
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
