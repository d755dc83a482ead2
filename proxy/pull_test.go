package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestPullResetStrategy(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_PATCH_MODE": "reset"})
	sc := h.start()
	var muts []mut
	for i, id := range []string{"a", "b", "c", "d", "e"} { // two pages of the legacy API
		muts = append(muts, create("c1", int64(i+1), id))
	}
	muts = append(muts, create("c2", 1, "f"), mut{"c2", 2, "deleteTodo", map[string]any{"id": "b"}})
	if r := sc.push(t, "alice", "g", muts...); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	r, p := sc.pull(t, "alice", "g", nil)
	if r.status != http.StatusOK || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("pull = %d %s", r.status, r.raw)
	}
	if got, want := p.keys(t), []string{"todo/a", "todo/c", "todo/d", "todo/e", "todo/f", "me"}; !slices.Equal(got, want) {
		t.Errorf("patch keys = %v, want %v", got, want)
	}
	if p.Patch[1].Key == "todo/a" && string(p.Patch[1].Value) != `{"id":"a","title":"t a"}` {
		t.Errorf("todo/a value = %s", p.Patch[1].Value)
	}
	if want := map[string]int64{"c1": 5, "c2": 2}; !mapsEqual(p.LastMutationIDChanges, want) {
		t.Errorf("lastMutationIDChanges = %v, want %v", p.LastMutationIDChanges, want)
	}
	if p.Cookie.Order != 1 {
		t.Errorf("first cookie order = %d, want 1", p.Cookie.Order)
	}
	// The cookie field must always be present, as an object with an order
	// and the database's epoch; in reset mode it names no view record.
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(r.raw, &raw)
	if !regexp.MustCompile(`^\{"order":1,"db":"[0-9a-f]{16}","g":"[0-9a-f]{16}"\}$`).Match(raw["cookie"]) {
		t.Errorf("cookie = %s, want {\"order\":1,\"db\":<epoch>}", raw["cookie"])
	}
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestPullCookieIsMonotonic(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	steps := []struct {
		name   string
		cookie any
		want   int64
	}{
		{"first pull", nil, 1},
		{"next pull", map[string]any{"order": 1}, 2},
		// A group forked from an older one carries its parent's cookie on
		// its first pull; the answer must be greater, not 1.
		{"request ahead of the group", map[string]any{"order": 41}, 42},
		{"stale request cookie", map[string]any{"order": 3}, 43},
		{"number cookie", 7, 44},
		{"string order", map[string]any{"order": "100"}, 101},
		{"string cookie", "5", 102},
	}
	for _, st := range steps {
		r, p := sc.pull(t, "alice", "g", st.cookie)
		if r.status != http.StatusOK || p.Cookie.Order != st.want {
			t.Fatalf("%s: pull = %d, order %d; want %d (%s)", st.name, r.status, p.Cookie.Order, st.want, r.raw)
		}
	}
	// A new group whose first pull carries a cookie is answered normally.
	r, p := sc.pull(t, "alice", "forked", map[string]any{"order": 500})
	if r.status != http.StatusOK || p.Cookie.Order != 501 || p.keys(t) == nil {
		t.Fatalf("forked group's first pull = %d %s; want 200 with order 501", r.status, r.raw)
	}
	// Across instances (and restarts) the order keeps growing: it lives in
	// the database.
	other := h.start()
	if _, p := other.pull(t, "alice", "g", nil); p.Cookie.Order != 103 {
		t.Errorf("pull through another instance: order %d, want 103", p.Cookie.Order)
	}
}

func TestPullBadInput(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_MAX_BODY_BYTES": "1024"})
	sc := h.start()
	tests := []struct {
		name   string
		body   string
		status int
		code   string
		msg    string
	}{
		{"malformed", `{"pullVersion":1,"clientGroupID":`, 400, "BadRequest", "truncated"},
		{"missing version", `{"clientGroupID":"g"}`, 400, "BadRequest", "pullVersion is required"},
		{"missing group", `{"pullVersion":1,"cookie":null}`, 400, "BadRequest", "clientGroupID is required"},
		{"unorderable cookie", `{"pullVersion":1,"clientGroupID":"g","cookie":{"order":"abc"}}`, 400, "BadRequest", `"abc" is not a number`},
		{"cookie object without order", `{"pullVersion":1,"clientGroupID":"g","cookie":{"x":1}}`, 400, "BadRequest", "order"},
		{"negative cookie", `{"pullVersion":1,"clientGroupID":"g","cookie":-4}`, 400, "BadRequest", "out of range"},
		// An order that can never be exceeded: the client must start over, not
		// be refused for ever (issue 16 §5; this case answered 400 before).
		{"huge cookie", `{"pullVersion":1,"clientGroupID":"g","cookie":1e300}`, 200, "ClientStateNotFound", ""},
		{"array cookie", `{"pullVersion":1,"clientGroupID":"g","cookie":[1]}`, 400, "BadRequest", "cookie must be"},
		{"oversize", `{"pullVersion":1,"clientGroupID":"` + strings.Repeat("g", 2000) + `"}`, 413, "PayloadTooLarge", "1024"},
		{"version 0", `{"pullVersion":0,"clientID":"c","cookie":null}`, 200, "VersionNotSupported", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := sc.post(t, "/replicache/pull", "Bearer alice", tc.body)
			if r.status != tc.status || r.str("error") != tc.code || !strings.Contains(r.str("message"), tc.msg) {
				t.Fatalf("got %d %s; want %d %s %q", r.status, r.raw, tc.status, tc.code, tc.msg)
			}
			if tc.code == "VersionNotSupported" && r.str("versionType") != "pull" {
				t.Errorf("versionType = %q, want pull", r.str("versionType"))
			}
		})
	}
}

func TestPullSourceFailureIsNeverPartial(t *testing.T) { //nolint:tparallel // the cases share one sidecar and its data, in order
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	sc.push(t, "alice", "g", create("c1", 1, "a"))
	cases := []struct {
		name   string
		fault  func(r *http.Request) int
		reason string
	}{
		{"todos source fails", func(r *http.Request) int {
			if r.URL.Path == "/api/todos" {
				return 500
			}
			return 0
		}, "upstream answered 500"},
		{"second page fails", func(r *http.Request) int {
			if r.URL.Query().Get("page") == "2" {
				return 503
			}
			return 0
		}, "upstream answered 503"},
	}
	for i := 2; i <= 4; i++ { // a second page exists
		sc.push(t, "alice", "g", create("c1", int64(i), "x"+itoa(int64(i))))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.up.SetFault(tc.fault)
			defer h.up.SetFault(nil)
			r, _ := sc.pull(t, "alice", "g", nil)
			if r.status != http.StatusBadGateway || r.str("source") != "/api/todos" || !strings.Contains(r.str("message"), tc.reason) {
				t.Fatalf("pull = %d %s; want 502 naming /api/todos and %q", r.status, r.raw, tc.reason)
			}
		})
	}
	// Failed pulls issued no cookie.
	if _, p := sc.pull(t, "alice", "g", nil); p.Cookie.Order != 1 || len(p.keys(t)) != 5 {
		t.Errorf("pull after recovery: order %d, %d keys; want order 1 and 5 keys", p.Cookie.Order, len(p.keys(t)))
	}
}

// TestPullCursorThatCannotBeFollowed: an API whose cursor path meets a
// string (here "meta" is a string, not an object) fails the pull with 502
// naming the source, instead of answering page one as the whole view, which
// would make the client delete every entity of the later pages.
func TestPullCursorThatCannotBeFollowed(t *testing.T) {
	t.Parallel()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"items":[{"id":"a"},{"id":"b"}],"meta":"more pages follow"}`)
	}))
	t.Cleanup(api.Close)
	mapping := filepath.Join(t.TempDir(), "cursor.json")
	err := os.WriteFile(mapping, []byte(`{"clientView":[{"path":"/items","items":"items","key":"item/{id}",
		"pagination":{"type":"cursor","param":"after","next":"meta.next"}}]}`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": mapping, "SIDECAR_AUTH_PATH": ""})
	r, _ := h.start().pull(t, "alice", "g", nil)
	if r.status != http.StatusBadGateway || r.str("source") != "/items" || !strings.Contains(r.str("reason"), `cursor field "meta.next" cannot be followed`) {
		t.Fatalf("pull = %d %s; want 502 naming /items and the cursor field", r.status, r.raw)
	}
}

func TestUsersSeeOnlyTheirOwnData(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	sc.push(t, "alice", "ga", create("ca", 1, "alice-todo"))
	sc.push(t, "bob", "gb", create("cb", 1, "bob-todo"))
	_, pa := sc.pull(t, "alice", "ga", nil)
	_, pb := sc.pull(t, "bob", "gb", nil)
	if got := pa.keys(t); !slices.Equal(got, []string{"todo/alice-todo", "me"}) {
		t.Errorf("alice sees %v", got)
	}
	if got := pb.keys(t); !slices.Equal(got, []string{"todo/bob-todo", "me"}) {
		t.Errorf("bob sees %v", got)
	}
	if r, _ := sc.pull(t, "", "ga", nil); r.status != http.StatusUnauthorized {
		t.Errorf("pull without credentials = %d %s, want 401", r.status, r.raw)
	}
}

func TestDeletedGroupGetsClientStateNotFound(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	sc.push(t, "alice", "g", create("c1", 1, "a"))
	if _, err := sc.pool.Exec(context.Background(), "UPDATE "+pgx.Identifier{h.schema}.Sanitize()+".client_groups SET deleted_at = now() WHERE id = 'g'"); err != nil {
		t.Fatal(err)
	}
	// Both answers must be HTTP 200: the client ignores them otherwise.
	r, _ := sc.pull(t, "alice", "g", map[string]any{"order": 1})
	if r.status != http.StatusOK || string(r.raw) != `{"error":"ClientStateNotFound"}` {
		t.Errorf("pull = %d %s, want 200 ClientStateNotFound", r.status, r.raw)
	}
	r = sc.push(t, "alice", "g", create("c1", 2, "b"))
	if r.status != http.StatusOK || string(r.raw) != `{"error":"ClientStateNotFound"}` {
		t.Errorf("push = %d %s, want 200 ClientStateNotFound", r.status, r.raw)
	}
	if got := h.up.TodoIDs("alice"); !slices.Equal(got, []string{"a"}) {
		t.Errorf("upstream todos = %v, want [a]", got)
	}
}

// TestPullThroughBodyPagination: a pull through the sidecar pages a Django
// REST Framework-style collection (next page's URL in the body) and an
// offset/limit one, and answers every item.
func TestPullThroughBodyPagination(t *testing.T) {
	t.Parallel()
	const n = 25
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		item := func(prefix string, i int) string { return fmt.Sprintf(`{"id":"%s%d"}`, prefix, i) }
		switch r.URL.Path {
		case "/drf/todos/":
			page, _ := strconv.Atoi(q.Get("page"))
			page = max(page, 1)
			var items []string
			for i := (page - 1) * 10; i < min(page*10, n); i++ {
				items = append(items, item("t", i))
			}
			next := "null"
			if page*10 < n {
				next = fmt.Sprintf(`"http://%s/drf/todos/?page=%d"`, r.Host, page+1)
			}
			_, _ = fmt.Fprintf(w, `{"count":%d,"next":%s,"results":[%s]}`, n, next, strings.Join(items, ","))
		case "/lists":
			off, _ := strconv.Atoi(q.Get("offset"))
			limit, _ := strconv.Atoi(q.Get("limit"))
			var items []string
			for i := off; i < min(off+limit, n); i++ {
				items = append(items, item("l", i))
			}
			_, _ = fmt.Fprintf(w, `{"items":[%s]}`, strings.Join(items, ","))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(api.Close)
	mapping := filepath.Join(t.TempDir(), "paged.json")
	err := os.WriteFile(mapping, []byte(`{"clientView":[
		{"path":"/drf/todos/","items":"results","key":"todo/{id}","pagination":{"type":"url"}},
		{"path":"/lists","items":"items","key":"list/{id}","pagination":{"type":"offset","limit":7}}]}`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": mapping, "SIDECAR_AUTH_PATH": ""})
	r, p := h.start().pull(t, "alice", "g", nil)
	if r.status != 200 {
		t.Fatalf("pull = %d %s", r.status, r.raw)
	}
	if keys := p.keys(t); len(keys) != 2*n {
		t.Errorf("pull answered %d entries, want %d (every page of both sources)", len(keys), 2*n)
	}
}

// TestPullCookieNearTheLimit: the sidecar never issues a cookie it would
// refuse. The largest safe order is issued once; a pull carrying it (or of
// a group that reached it) answers ClientStateNotFound with HTTP 200, so
// the client starts over instead of being refused for ever.
func TestPullCookieNearTheLimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	r, p := sc.pull(t, "alice", "g", map[string]any{"order": 9007199254740990})
	if r.status != 200 || p.Cookie.Order != 9007199254740991 {
		t.Fatalf("pull at max-1 = %d %s; want order 2^53-1", r.status, r.raw)
	}
	for _, cookie := range []any{map[string]any{"order": 9007199254740991}, nil, 1e20} {
		r, _ := sc.pull(t, "alice", "g", cookie)
		if r.status != 200 || string(r.raw) != `{"error":"ClientStateNotFound"}` {
			t.Errorf("pull with cookie %v = %d %s; want 200 ClientStateNotFound", cookie, r.status, r.raw)
		}
	}
}

// TestPullNeverAnswersAPartialView: a source mapped without pagination at
// an API that paginates in the body fails with 502 naming the source and
// what was seen; a paged collection that another writer shrinks between
// two pages (the reported total changes) is fetched again, and one that
// keeps changing answers 503 with Retry-After instead of a view missing an
// item that existed throughout.
func TestPullNeverAnswersAPartialView(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	items := []string{}
	for i := range 12 {
		items = append(items, fmt.Sprint("t", i))
	}
	var shrinkEvery atomic.Int64 // after every Nth page served, delete the last item (0: never)
	var served atomic.Int64
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		page = max(page, 1)
		mu.Lock()
		var out []string
		for i := (page - 1) * 5; i < min(page*5, len(items)); i++ {
			out = append(out, fmt.Sprintf(`{"id":%q}`, items[i]))
		}
		next := "null"
		if page*5 < len(items) {
			next = fmt.Sprintf(`"/drf/?page=%d"`, page+1)
		}
		_, _ = fmt.Fprintf(w, `{"count":%d,"next":%s,"results":[%s]}`, len(items), next, strings.Join(out, ","))
		if n := shrinkEvery.Load(); n > 0 && served.Add(1)%n == 0 && len(items) > 0 {
			items = items[:len(items)-1] // another device deletes one
		}
		mu.Unlock()
	}))
	t.Cleanup(api.Close)
	write := func(mapping string) string {
		f := filepath.Join(t.TempDir(), "m.json")
		if err := os.WriteFile(f, []byte(mapping), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	env := func(mapping string) map[string]string {
		return map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_MAPPING_FILE": write(mapping), "SIDECAR_AUTH_PATH": ""}
	}

	unpaged := newHarness(t, env(`{"clientView":[{"path":"/drf/","items":"results","key":"todo/{id}"}]}`)).start()
	if r, _ := unpaged.pull(t, "alice", "g", nil); r.status != http.StatusBadGateway || r.str("source") != "/drf/" ||
		!strings.Contains(r.str("reason"), `non-empty "next" field`) {
		t.Errorf("unpaginated source at a paginating API = %d %s; want 502 naming the source and the next field", r.status, r.raw)
	}

	paged := newHarness(t, env(`{"clientView":[{"path":"/drf/","items":"results","key":"todo/{id}","pagination":{"type":"url"}}]}`)).start()
	// Exactly the next page served (the first fetch's first page) is
	// followed by a delete: the count changes between pages once.
	shrinkEvery.Store(100)
	served.Store(99)
	r, p := paged.pull(t, "alice", "g", nil)
	if r.status != 200 || len(p.keys(t)) != 11 {
		t.Errorf("pull with one shrink = %d, %d keys; want the refetched 11", r.status, len(p.Patch)-1)
	}
	shrinkEvery.Store(1) // every page served: it keeps shifting
	r, _ = paged.pull(t, "alice", "g", nil)
	if r.status != http.StatusServiceUnavailable || r.str("error") != "ViewShifted" || r.header.Get("Retry-After") == "" {
		t.Errorf("pull of a collection that keeps shifting = %d %s; want 503 ViewShifted with Retry-After", r.status, r.raw)
	}
}
