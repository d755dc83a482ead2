package proxytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// DRFAPI is a legacy API shaped like Django REST Framework with an
// AutoField primary key: the server chooses every id. Per user (Bearer
// <user>): GET /api/me/, GET /api/todos/ (a bare array), POST /api/todos/
// answers 201 with the created todo and its new id (integers from 17 up,
// shared by every user as a database sequence is; strings "k17", … with
// StringIDs), PATCH and DELETE /api/todos/<id>/ answer 404 for an id it
// does not have. A path without its trailing slash is redirected (301),
// as DRF's APPEND_SLASH does. Idempotency-Key is honoured: a repeated key
// replays the first answer, body included, with no second effect. It is
// safe for concurrent use.
type DRFAPI struct {
	Server *httptest.Server
	// StringIDs makes new ids JSON strings instead of integers. Set it
	// before the first call.
	StringIDs bool

	mu      sync.Mutex
	next    int
	todos   map[string]map[string]map[string]any // user → id text → todo
	order   map[string][]string                  // user → id texts in creation order
	replies map[string]drfReply                  // user + key → first answer
	log     []string                             // "METHOD path status" of every mutating call

	hook atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]
}

type drfReply struct {
	status int
	body   []byte
}

// NewDRFAPI starts a DRFAPI, stopped when the test ends.
func NewDRFAPI(t testing.TB) *DRFAPI {
	t.Helper()
	a := &DRFAPI{next: 17, todos: map[string]map[string]map[string]any{}, order: map[string][]string{}, replies: map[string]drfReply{}}
	a.Server = httptest.NewServer(a)
	t.Cleanup(a.Server.Close)
	return a
}

// SetHook lets h answer any request it wants to (returning true), or act
// before the API does; nil clears it.
func (a *DRFAPI) SetHook(h func(w http.ResponseWriter, r *http.Request) bool) {
	if h == nil {
		a.hook.Store(nil)
		return
	}
	a.hook.Store(&h)
}

func (a *DRFAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body)) // for the hook
	if h := a.hook.Load(); h != nil && (*h)(w, r) {
		return
	}
	if !strings.HasSuffix(r.URL.Path, "/") {
		http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
		return
	}
	user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || user == "" {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": "Authentication credentials were not provided."})
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.Method == http.MethodGet {
		a.get(w, r, user)
		return
	}
	k := user + "\x00" + r.Header.Get("Idempotency-Key")
	reply, seen := a.replies[k]
	if !seen || r.Header.Get("Idempotency-Key") == "" {
		reply = a.mutate(r, user, body)
		a.replies[k] = reply
	}
	a.log = append(a.log, fmt.Sprintf("%s %s %d", r.Method, r.URL.EscapedPath(), reply.status))
	if reply.body != nil {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(reply.status)
	_, _ = w.Write(reply.body)
}

// mutate applies one call; a.mu is held.
func (a *DRFAPI) mutate(r *http.Request, user string, body []byte) drfReply {
	answer := func(status int, v any) drfReply {
		b, _ := json.Marshal(v)
		return drfReply{status, b}
	}
	todos := a.todos[user]
	if todos == nil {
		todos = map[string]map[string]any{}
		a.todos[user] = todos
	}
	var in map[string]any
	if len(body) > 0 && json.Unmarshal(body, &in) != nil {
		return answer(http.StatusBadRequest, map[string]string{"detail": "JSON parse error"})
	}
	id, isItem := strings.CutPrefix(strings.TrimSuffix(r.URL.Path, "/"), "/api/todos/")
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/api/todos/":
		title, _ := in["title"].(string)
		if title == "" {
			return answer(http.StatusBadRequest, map[string][]string{"title": {"This field is required."}})
		}
		var idValue any = a.next // id is read-only: whatever the body says is ignored
		if a.StringIDs {
			idValue = fmt.Sprint("k", a.next)
		}
		a.next++
		t := map[string]any{"id": idValue, "title": title, "done": in["done"] == true}
		key := fmt.Sprint(idValue)
		todos[key] = t
		a.order[user] = append(a.order[user], key)
		return answer(http.StatusCreated, t)
	case isItem && todos[id] == nil:
		return answer(http.StatusNotFound, map[string]string{"detail": "No Todo matches the given query."})
	case r.Method == http.MethodPatch && isItem:
		for _, f := range []string{"title", "done"} {
			if v, ok := in[f]; ok {
				todos[id][f] = v
			}
		}
		return answer(http.StatusOK, todos[id])
	case r.Method == http.MethodDelete && isItem:
		delete(todos, id)
		ids := a.order[user][:0]
		for _, x := range a.order[user] {
			if x != id {
				ids = append(ids, x)
			}
		}
		a.order[user] = ids
		return drfReply{status: http.StatusNoContent}
	}
	return answer(http.StatusNotFound, map[string]string{"detail": "Not found."})
}

func (a *DRFAPI) get(w http.ResponseWriter, r *http.Request, user string) {
	switch r.URL.Path {
	case "/api/me/":
		writeJSON(w, http.StatusOK, map[string]string{"id": user})
	case "/api/todos/":
		items := make([]map[string]any, 0, len(a.order[user]))
		for _, id := range a.order[user] {
			items = append(items, a.todos[user][id])
		}
		writeJSON(w, http.StatusOK, items)
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"detail": "Not found."})
	}
}

// Todos returns the user's todos by id (as text), each as JSON.
func (a *DRFAPI) Todos(user string) map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]string{}
	for id, t := range a.todos[user] {
		b, _ := json.Marshal(t)
		out[id] = string(b)
	}
	return out
}

// Calls returns "METHOD path status" of every mutating call so far,
// replays included.
func (a *DRFAPI) Calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.log...)
}

// NextID is the id the next create will get, as text.
func (a *DRFAPI) NextID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.StringIDs {
		return "k" + strconv.Itoa(a.next)
	}
	return strconv.Itoa(a.next)
}
