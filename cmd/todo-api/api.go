package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

type todo struct {
	ID string
	// Serial: the service chose the id (-assign-ids). It is written as a
	// JSON number, as Django's AutoField and Rails' integer keys are.
	Serial    bool
	ListID    string
	Title     string
	Done      bool
	UpdatedAt string
}

// todoJSON is a todo as the API writes it (and the state file keeps it):
// the id a string, or a number when the service chose it.
type todoJSON struct {
	ID        json.RawMessage `json:"id"`
	ListID    string          `json:"listID,omitempty"`
	Title     string          `json:"title"`
	Done      bool            `json:"done"`
	UpdatedAt string          `json:"updated_at,omitempty"`
}

func (t todo) MarshalJSON() ([]byte, error) {
	id, err := json.Marshal(t.ID)
	if t.Serial {
		id, err = []byte(t.ID), nil
	}
	if err != nil {
		return nil, err
	}
	return json.Marshal(todoJSON{ID: id, ListID: t.ListID, Title: t.Title, Done: t.Done, UpdatedAt: t.UpdatedAt})
}

func (t *todo) UnmarshalJSON(b []byte) error {
	var j todoJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*t = todo{ListID: j.ListID, Title: j.Title, Done: j.Done, UpdatedAt: j.UpdatedAt}
	if err := json.Unmarshal(j.ID, &t.ID); err != nil {
		var n json.Number
		if err := json.Unmarshal(j.ID, &n); err != nil {
			return fmt.Errorf("todo id %s is neither a string nor a number", j.ID)
		}
		t.ID, t.Serial = n.String(), true
	}
	return nil
}

type list struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	UpdatedAt string `json:"updated_at,omitempty"`
}

// updatedAt is the layout of updated_at, as most APIs write it: RFC 3339
// in UTC with microseconds (Django REST Framework's default).
const updatedAt = "2006-01-02T15:04:05.000000Z07:00"

// touched returns the time to stamp a change with: now, or just after the
// last stamp when the clock has not moved on (or went back), so an item's
// updated_at only grows and no two changes share one. a.mu is held.
func (a *api) touched() string {
	now := time.Now().UTC().Truncate(time.Microsecond)
	if !now.After(a.lastStamp) {
		now = a.lastStamp.Add(time.Microsecond)
	}
	a.lastStamp = now
	return now.Format(updatedAt)
}

type userData struct {
	todos     map[string]*todo
	todoOrder []string
	lists     map[string]*list
	listOrder []string
}

// answer is a stored response, replayed for a repeated Idempotency-Key.
type answer struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body"`
}

// replayed is the body of an answer given before for the same key.
type replayed json.RawMessage

// api is the in-memory service. One mutex: it is a demo, and it makes every
// request atomic, including the idempotency check and the effect.
type api struct {
	mu       sync.Mutex
	users    map[string]*userData
	answers  map[string]answer // user + "\x00" + key
	pageSize int
	state    string // file the state is saved to after each change; "" keeps it in memory only
	delay    time.Duration
	// duplicateStatus answers a create whose id exists (409 unless set).
	duplicateStatus int
	lastStamp       time.Time // the last updated_at given (a.touched)
	// assignIDs: a create of a todo takes no id from the client; the
	// service assigns the next of a sequence shared by every user (1, 2,
	// …), as an auto-increment key does.
	assignIDs bool
	lastID    int64 // the sequence's last value (assignIDs)
	// fault, when set, is a page of a list whose GET fails (-faults).
	fault atomic.Pointer[pageFault]
}

// pageFault makes GET path?page=page answer status.
type pageFault struct {
	path   string
	page   int
	status int
}

// faultRoutes serves the fault switch: PUT /test/fault?path=&page=&status=
// sets it, DELETE /test/fault clears it.
func (a *api) faultRoutes(mux *http.ServeMux) {
	mux.HandleFunc("PUT /test/fault", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		page, err1 := strconv.Atoi(q.Get("page"))
		status, err2 := strconv.Atoi(q.Get("status"))
		if err1 != nil || err2 != nil || page < 1 || status < 400 || status > 599 || !strings.HasPrefix(q.Get("path"), "/api/") {
			writeJSON(w, http.StatusBadRequest, errBody("want path=/api/…, page >= 1 and status 400-599"))
			return
		}
		a.fault.Store(&pageFault{path: q.Get("path"), page: page, status: status})
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /test/fault", func(w http.ResponseWriter, r *http.Request) {
		a.fault.Store(nil)
		w.WriteHeader(http.StatusNoContent)
	})
}

// faulty returns the status a GET of r's page must fail with (0: none).
func (a *api) faulty(r *http.Request) int {
	f := a.fault.Load()
	if f == nil || r.Method != http.MethodGet || r.URL.Path != f.path {
		return 0
	}
	page, err := strconv.Atoi(r.URL.Query().Get("page"))
	if err != nil || page < 1 {
		page = 1
	}
	if page != f.page {
		return 0
	}
	return f.status
}

func newAPI(pageSize int) *api {
	return &api{users: map[string]*userData{}, answers: map[string]answer{}, pageSize: max(pageSize, 1), duplicateStatus: http.StatusConflict}
}

func (a *api) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	mux.HandleFunc("GET /api/me", a.authed(a.me))
	mux.HandleFunc("GET /api/todos", a.authed(a.listTodos))
	mux.HandleFunc("GET /api/todos/{id}", a.authed(a.getTodo))
	mux.HandleFunc("POST /api/todos", a.authed(a.idempotent(a.createTodo)))
	mux.HandleFunc("PATCH /api/todos/{id}", a.authed(a.idempotent(a.updateTodo)))
	mux.HandleFunc("DELETE /api/todos/{id}", a.authed(a.idempotent(a.deleteTodo)))
	mux.HandleFunc("GET /api/lists", a.authed(a.listLists))
	mux.HandleFunc("POST /api/lists", a.authed(a.idempotent(a.createList)))
	mux.HandleFunc("DELETE /api/lists/{id}", a.authed(a.idempotent(a.deleteList)))
}

type handler func(user string, r *http.Request, body []byte) (int, any)

// authed checks the bearer token, reads the body (up to 1 MiB) and runs h
// under the lock.
func (a *api) authed(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if c, err := r.Cookie("demo_token"); !ok && err == nil {
			// A browser's EventSource sends cookies, not headers: the demo
			// page keeps its token in a cookie too.
			user, ok = c.Value, true
		}
		if !ok || user == "" || len(user) > 64 {
			writeJSON(w, http.StatusUnauthorized, errBody("missing or invalid bearer token"))
			return
		}
		if status := a.faulty(r); status != 0 {
			writeJSON(w, status, errBody("injected fault"))
			return
		}
		// "<user>~<unix ms>" is a token that expires then, to play an API
		// whose tokens run out in the middle of a client's queue.
		if name, exp, found := strings.Cut(user, "~"); found {
			ms, err := strconv.ParseInt(exp, 10, 64)
			if err != nil || time.Now().UnixMilli() >= ms {
				writeJSON(w, http.StatusUnauthorized, errBody("token expired"))
				return
			}
			user = name
		}
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, 1<<20)); err != nil {
			writeJSON(w, http.StatusRequestEntityTooLarge, errBody("body too large"))
			return
		}
		if r.Method != http.MethodGet && a.delay > 0 {
			time.Sleep(a.delay)
		}
		a.mu.Lock()
		status, v := h(user, r, buf.Bytes())
		var saveErr error
		if r.Method != http.MethodGet && status < 300 {
			saveErr = a.save()
		}
		a.mu.Unlock()
		if saveErr != nil {
			writeJSON(w, http.StatusInternalServerError, errBody("saving state: "+saveErr.Error()))
			return
		}
		if rp, ok := v.(replayed); ok {
			// As Stripe does: tell the caller this is a replayed answer.
			w.Header().Set("Idempotent-Replayed", "true")
			v = json.RawMessage(rp)
		}
		if status == http.StatusNoContent {
			w.WriteHeader(status)
			return
		}
		if p, ok := v.(paged); ok && status == http.StatusOK {
			writePage(w, r, p)
			return
		}
		writeJSON(w, status, v)
	}
}

// writePage answers a page of a list with a strong ETag over its body and
// Link header, and 304 Not Modified when the request's If-None-Match names
// it (as many REST frameworks do for GETs).
func writePage(w http.ResponseWriter, r *http.Request, p paged) {
	body, err := json.Marshal(p)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errBody("encoding page: "+err.Error()))
		return
	}
	link := ""
	if p.more {
		link = fmt.Sprintf(`<%s>; rel="next"`, p.next())
		w.Header().Set("Link", link)
	}
	sum := sha256.Sum256(append([]byte(link+"\n"), body...))
	etag := `"` + hex.EncodeToString(sum[:12]) + `"`
	w.Header().Set("ETag", etag)
	for _, tag := range strings.Split(r.Header.Get("If-None-Match"), ",") {
		if t := strings.TrimSpace(tag); t == etag || t == "*" || t == "W/"+etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(body, '\n'))
}

// idempotent replays the first answer to a repeated Idempotency-Key of the
// same user instead of running h again. a.mu is held.
func (a *api) idempotent(h handler) handler {
	return func(user string, r *http.Request, body []byte) (int, any) {
		key := r.Header.Get("Idempotency-Key")
		if key == "" {
			return h(user, r, body)
		}
		k := user + "\x00" + key
		if prev, ok := a.answers[k]; ok {
			return prev.Status, replayed(prev.Body)
		}
		status, v := h(user, r, body)
		b, _ := json.Marshal(v)
		a.answers[k] = answer{Status: status, Body: b}
		return status, v
	}
}

func (a *api) data(user string) *userData {
	d := a.users[user]
	if d == nil {
		d = &userData{todos: map[string]*todo{}, lists: map[string]*list{}}
		a.users[user] = d
	}
	return d
}

func errBody(msg string) map[string]string { return map[string]string{"error": msg} }

func (a *api) me(user string, _ *http.Request, _ []byte) (int, any) {
	return http.StatusOK, map[string]string{"id": user, "name": user}
}

// page returns the page'th slice of ids and whether there is a next page.
func (a *api) listTodos(user string, r *http.Request, _ []byte) (int, any) {
	d := a.data(user)
	return listPage(r, "todos", d.todos, d.todoOrder, a.pageSize, func(t *todo) string { return t.UpdatedAt })
}

func (a *api) listLists(user string, r *http.Request, _ []byte) (int, any) {
	d := a.data(user)
	return listPage(r, "lists", d.lists, d.listOrder, a.pageSize, func(l *list) string { return l.UpdatedAt })
}

// listPage answers a page of a list: the items in order, only those changed
// after ?updated_after= (RFC 3339) when it is given, as django-filter's
// updated_at__gt does; 400 for a time it cannot read.
func listPage[T any](r *http.Request, field string, items map[string]*T, order []string, size int, stamp func(*T) string) (int, any) {
	if after := r.URL.Query().Get("updated_after"); after != "" {
		since, err := time.Parse(time.RFC3339Nano, after)
		if err != nil {
			return http.StatusBadRequest, errBody("updated_after must be an RFC 3339 time: " + err.Error())
		}
		var changed []string
		for _, id := range order {
			// Stamps share one layout, but compare times: the caller's
			// may be written in another (offset, fewer digits).
			if at, err := time.Parse(time.RFC3339Nano, stamp(items[id])); err == nil && at.After(since) {
				changed = append(changed, id)
			}
		}
		order = changed
	}
	return http.StatusOK, pageOf(r, field, items, order, size)
}

// pageOf returns the page the request asks for (?page=N, from 1) of the
// items in order.
func pageOf[T any](r *http.Request, field string, items map[string]*T, order []string, size int) paged {
	p, err := strconv.Atoi(r.URL.Query().Get("page"))
	if err != nil || p < 1 {
		p = 1
	}
	lo := min((p-1)*size, len(order))
	hi := min(lo+size, len(order))
	out := make([]T, 0, hi-lo)
	for _, id := range order[lo:hi] {
		out = append(out, *items[id])
	}
	return paged{field, out, p, len(order), hi < len(order), r.URL.Path, r.URL.Query()}
}

// paged is a page of a list; writeJSON adds its Link header.
type paged struct {
	field string
	items any
	page  int
	total int
	more  bool
	path  string
	query url.Values // the request's, for the next page's link
}

// next is the link to the page after p: the same query (its filter), the
// next page number.
func (p paged) next() string {
	q := maps.Clone(p.query)
	if q == nil {
		q = url.Values{}
	}
	q.Set("page", strconv.Itoa(p.page+1))
	return p.path + "?" + q.Encode()
}

func (p paged) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{p.field: p.items, "page": p.page, "total": p.total})
}

func (a *api) getTodo(user string, r *http.Request, _ []byte) (int, any) {
	t, ok := a.data(user).todos[r.PathValue("id")]
	if !ok {
		return http.StatusNotFound, errBody("no such todo")
	}
	return http.StatusOK, t
}

type todoInput struct {
	ID     *string `json:"id"`
	ListID *string `json:"listID"`
	Title  *string `json:"title"`
	Done   *bool   `json:"done"`
}

func validText(s *string, maxLen int) bool {
	return s != nil && *s != "" && utf8.RuneCountInString(*s) <= maxLen && utf8.ValidString(*s)
}

func (a *api) createTodo(user string, _ *http.Request, body []byte) (int, any) {
	var in todoInput
	if err := json.Unmarshal(body, &in); err != nil {
		return http.StatusUnprocessableEntity, errBody("body must be a JSON object: " + err.Error())
	}
	if a.assignIDs {
		// The id is the service's to choose: any the body carries is
		// ignored, as a read-only field is.
		id := strconv.FormatInt(a.lastID+1, 10)
		in.ID = &id
	}
	if !validText(in.ID, 128) {
		return http.StatusUnprocessableEntity, errBody("id is required (1-128 characters)")
	}
	if !validText(in.Title, 500) {
		return http.StatusUnprocessableEntity, errBody("title is required (1-500 characters)")
	}
	d := a.data(user)
	if _, exists := d.todos[*in.ID]; exists {
		return a.duplicateStatus, errBody(fmt.Sprintf("todo %q already exists", *in.ID))
	}
	t := &todo{ID: *in.ID, Title: *in.Title, Serial: a.assignIDs, UpdatedAt: a.touched()}
	if a.assignIDs {
		a.lastID++
	}
	if in.Done != nil {
		t.Done = *in.Done
	}
	if in.ListID != nil {
		t.ListID = *in.ListID
	}
	d.todos[t.ID] = t
	d.todoOrder = append(d.todoOrder, t.ID)
	return http.StatusCreated, t
}

func (a *api) updateTodo(user string, r *http.Request, body []byte) (int, any) {
	t, ok := a.data(user).todos[r.PathValue("id")]
	if !ok {
		return http.StatusNotFound, errBody("no such todo")
	}
	var in todoInput
	if err := json.Unmarshal(body, &in); err != nil {
		return http.StatusUnprocessableEntity, errBody("body must be a JSON object: " + err.Error())
	}
	if in.Title != nil && !validText(in.Title, 500) {
		return http.StatusUnprocessableEntity, errBody("title must be 1-500 characters")
	}
	if in.Title != nil {
		t.Title = *in.Title
	}
	if in.Done != nil {
		t.Done = *in.Done
	}
	if in.ListID != nil {
		t.ListID = *in.ListID
	}
	t.UpdatedAt = a.touched()
	return http.StatusOK, t
}

func (a *api) deleteTodo(user string, r *http.Request, _ []byte) (int, any) {
	d := a.data(user)
	return remove(d.todos, &d.todoOrder, r.PathValue("id"), "todo")
}

func (a *api) createList(user string, _ *http.Request, body []byte) (int, any) {
	var in struct {
		ID   *string `json:"id"`
		Name *string `json:"name"`
	}
	if err := json.Unmarshal(body, &in); err != nil || !validText(in.ID, 128) || !validText(in.Name, 200) {
		return http.StatusUnprocessableEntity, errBody("id and name are required")
	}
	d := a.data(user)
	if _, exists := d.lists[*in.ID]; exists {
		return http.StatusConflict, errBody(fmt.Sprintf("list %q already exists", *in.ID))
	}
	l := &list{ID: *in.ID, Name: *in.Name, UpdatedAt: a.touched()}
	d.lists[l.ID] = l
	d.listOrder = append(d.listOrder, l.ID)
	return http.StatusCreated, l
}

func (a *api) deleteList(user string, r *http.Request, _ []byte) (int, any) {
	d := a.data(user)
	return remove(d.lists, &d.listOrder, r.PathValue("id"), "list")
}

// remove deletes id from items and its order: 204, or 404 naming what.
func remove[T any](items map[string]T, order *[]string, id, what string) (int, any) {
	if _, ok := items[id]; !ok {
		return http.StatusNotFound, errBody("no such " + what)
	}
	delete(items, id)
	*order = slices.DeleteFunc(*order, func(x string) bool { return x == id })
	return http.StatusNoContent, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	if p, ok := v.(paged); ok && p.more {
		w.Header().Set("Link", fmt.Sprintf(`<%s>; rel="next"`, p.next()))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
