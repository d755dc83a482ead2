package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// fitTodo is a todo of the APIs below; Changed is its modification time
// as the API writes it.
type fitTodo struct {
	ID, Title string
	at        time.Time
}

// fitAPI keeps the todos of the APIs shaped like Directus and Django REST
// Framework below: per user, in creation order, each with its own
// modification time, and the writes it was sent, in order.
type fitAPI struct {
	mu     sync.Mutex
	todos  map[string][]*fitTodo
	clock  time.Time
	writes []string
}

func newFitAPI() *fitAPI {
	a := &fitAPI{todos: map[string][]*fitTodo{}, clock: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}
	for i := range 5 {
		a.put("alice", fmt.Sprintf("t%d", i+1), fmt.Sprintf("todo %d", i+1))
	}
	return a
}

// put creates or replaces a todo; a.mu is held (or the API not serving).
func (a *fitAPI) put(user, id, title string) *fitTodo {
	a.clock = a.clock.Add(1500 * time.Millisecond)
	for _, td := range a.todos[user] {
		if td.ID == id {
			td.Title, td.at = title, a.clock
			return td
		}
	}
	td := &fitTodo{ID: id, Title: title, at: a.clock}
	a.todos[user] = append(a.todos[user], td)
	return td
}

func (a *fitAPI) find(user, id string) int {
	return slices.IndexFunc(a.todos[user], func(td *fitTodo) bool { return td.ID == id })
}

// Writes returns the writes sent so far, "METHOD path" each.
func (a *fitAPI) Writes() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.writes)
}

// list returns the user's todos changed after after (zero: all).
func (a *fitAPI) list(user string, after time.Time) []*fitTodo {
	var out []*fitTodo
	for _, td := range a.todos[user] {
		if after.IsZero() || td.at.After(after) {
			out = append(out, td)
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// directusAPI behaves like Directus 11 as issue 29 met it: {"data": …}
// envelopes, GET /users/me, /items/todos paged by limit and offset, with
// meta=filter_count asking for the count, filter[date_updated][_gt] for
// what changed, 400 for a failed validation and 403 for an item that does
// not exist. Unknown query parameters are ignored, as Directus ignores
// most. Tokens: "alice" (five todos) and "nobody" (none).
func directusAPI(t *testing.T) (*httptest.Server, *fitAPI) {
	a := newFitAPI()
	users := map[string]string{"Bearer alice": "alice", "Bearer nobody": "nobody"}
	uuids := map[string]string{"alice": "8f1c2d3e-0000-4000-8000-00000000a11c", "nobody": "8f1c2d3e-0000-4000-8000-000000000000"}
	forbidden := map[string]any{"errors": []any{map[string]any{"message": "You don't have permission to access this.", "extensions": map[string]any{"code": "FORBIDDEN"}}}}
	item := func(td *fitTodo) map[string]any {
		return map[string]any{"id": td.ID, "title": td.Title, "date_updated": td.at.Format("2006-01-02T15:04:05.000Z")}
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, ok := users[r.Header.Get("Authorization")]
		if !ok {
			writeJSON(w, http.StatusUnauthorized, map[string]any{"errors": []any{map[string]any{"message": "Invalid user credentials."}}})
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		id, hasID := strings.CutPrefix(r.URL.Path, "/items/todos/")
		switch {
		case r.URL.Path == "/users/me":
			writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{"id": uuids[user], "email": user + "@example.com",
				"role": map[string]any{"id": "role-editor", "name": "Editor"}}})
		case r.URL.Path == "/items/todos" && r.Method == http.MethodGet:
			q := r.URL.Query()
			var after time.Time
			if s := q.Get("filter[date_updated][_gt]"); s != "" {
				var err error
				if after, err = time.Parse(time.RFC3339Nano, s); err != nil {
					writeJSON(w, http.StatusBadRequest, map[string]any{"errors": []any{map[string]any{"message": "Invalid query: date_updated"}}})
					return
				}
			}
			list := a.list(user, after)
			limit, offset := 100, 0
			if n, err := strconv.Atoi(q.Get("limit")); err == nil {
				limit = n
			}
			if n, err := strconv.Atoi(q.Get("offset")); err == nil {
				offset = n
			}
			page := []map[string]any{}
			for i := offset; i < min(offset+limit, len(list)); i++ {
				page = append(page, item(list[i]))
			}
			out := map[string]any{"data": page}
			if q.Get("meta") == "filter_count" {
				out["meta"] = map[string]any{"filter_count": len(list)}
			}
			writeJSON(w, http.StatusOK, out)
		case r.URL.Path == "/items/todos" && r.Method == http.MethodPost:
			var in struct{ ID, Title string }
			_ = json.NewDecoder(r.Body).Decode(&in)
			a.writes = append(a.writes, "POST "+r.URL.Path)
			if in.Title == "" {
				writeJSON(w, http.StatusBadRequest, map[string]any{"errors": []any{map[string]any{
					"message": `Validation failed for field "title". Value is required.`, "extensions": map[string]any{"code": "FAILED_VALIDATION"}}}})
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"data": item(a.put(user, in.ID, in.Title))})
		case hasID && r.Method == http.MethodPatch:
			a.writes = append(a.writes, "PATCH "+r.URL.Path)
			var in struct{ Title string }
			_ = json.NewDecoder(r.Body).Decode(&in)
			if a.find(user, id) < 0 {
				writeJSON(w, http.StatusForbidden, forbidden)
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"data": item(a.put(user, id, in.Title))})
		case hasID && r.Method == http.MethodDelete:
			a.writes = append(a.writes, "DELETE "+r.URL.Path)
			i := a.find(user, id)
			if i < 0 {
				writeJSON(w, http.StatusForbidden, forbidden)
				return
			}
			a.todos[user] = slices.Delete(a.todos[user], i, i+1)
			w.WriteHeader(http.StatusNoContent)
		default:
			writeJSON(w, http.StatusForbidden, forbidden) // Directus answers 403 for a route it does not have
		}
	}))
	t.Cleanup(srv.Close)
	return srv, a
}

// directusMapping maps todos on the Directus-like API; source is the
// client view source.
func directusMapping(t *testing.T, source string) string {
	return writeMapping(t, `{
  "mutators": {
    "createTodo": {"method": "POST", "path": "/items/todos"},
    "updateTodo": {"method": "PATCH", "path": "/items/todos/{args.id}", "body": {"title": "{args.title}"}},
    "deleteTodo": {"method": "DELETE", "path": "/items/todos/{args.id}"}
  },
  "clientView": [`+source+`]}`)
}

const directusSource = `{"path": "/items/todos?meta=filter_count", "items": "data", "key": "todo/{id}",
  "pagination": {"type": "offset", "limit": 2}, "total": "meta.filter_count"`

// TestCheckDirectusIdentityOneLevelDown: Directus answers /users/me with
// {"data": {"id": …}}; the check said "give the credentials of a real
// user". It names the setting and the path, and checks the rest as the
// user the answer names.
func TestCheckDirectusIdentityOneLevelDown(t *testing.T) {
	api, _ := directusAPI(t)
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_AUTH_PATH": "/users/me",
		"SIDECAR_MAPPING_FILE": directusMapping(t, directusSource+`}`)}
	code, out, errOut := check(t, env, "--header", "Authorization: Bearer alice")
	want := `its answer holds an id at data.id ("8f1c2d3e-0000-4000-8000-00000000a11c"): set SIDECAR_AUTH_USER_FIELD=data.id (other id-like fields: data.role.id)`
	if code != 1 || !strings.Contains(out, want) || strings.Contains(out, "give the credentials of a real user") {
		t.Errorf("exit %d, want 1 and the setting named:\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "as user 8f1c2d3e-0000-4000-8000-00000000a11c") || !sourceRow(out, "/items/todos?meta=filter_count", "offset", 3, 5) {
		t.Errorf("the rest was not checked as the user the answer names:\n%s", out)
	}
	env["SIDECAR_AUTH_USER_FIELD"] = "data.id"
	if code, out, _ := check(t, env, "--header", "Authorization: Bearer alice"); code != 0 || !strings.Contains(out, "Nothing to fix.") {
		t.Errorf("with SIDECAR_AUTH_USER_FIELD=data.id: exit %d\n%s", code, out)
	}
	// Wrong credentials are still what they are.
	if code, out, _ := check(t, env, "--header", "Authorization: Bearer mallory"); code != 1 || !strings.Contains(out, "give the credentials of a real user") {
		t.Errorf("bad credentials: exit %d\n%s", code, out)
	}
}

// sourceRow: the text report has the row of source path with its
// pagination, pages and entities.
func sourceRow(out, path, pagination string, pages, entities int) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == path && f[1] == pagination && f[2] == strconv.Itoa(pages) && f[3] == strconv.Itoa(entities) {
			return true
		}
	}
	return false
}

// TestCheckDirectusOffsetWithoutTotal: offset pages with no total and no
// sort can skip an item; the answer counts its items at
// meta.filter_count, which the warning points at with the source field
// that would use it. A warning does not fail the check, but is not
// "Nothing to fix" either.
func TestCheckDirectusOffsetWithoutTotal(t *testing.T) {
	api, _ := directusAPI(t)
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_AUTH_PATH": "/users/me", "SIDECAR_AUTH_USER_FIELD": "data.id"}
	for _, tc := range []struct {
		name, source string
		want         string // "" for no warning
	}{
		// The count is in the answer; the mapping does not name it.
		{"count unnamed", `{"path": "/items/todos?meta=filter_count", "items": "data", "key": "todo/{id}", "pagination": {"type": "offset", "limit": 2}}`,
			`offset pagination with no total and no sort`},
		// The count is named: pages that shift are seen.
		{"total named", directusSource + `}`, ""},
		// A sort in the path: the pages' order is the API's to keep.
		{"sorted", `{"path": "/items/todos?sort=id", "items": "data", "key": "todo/{id}", "pagination": {"type": "offset", "limit": 2}}`, ""},
		// No count in the answer: say how to get one.
		{"no count", `{"path": "/items/todos", "items": "data", "key": "todo/{id}", "pagination": {"type": "offset", "limit": 2}}`,
			`add meta=filter_count to the path and say "total": "meta.filter_count"`},
		// A total named where the answer has none.
		{"total misnamed", `{"path": "/items/todos?meta=filter_count", "items": "data", "key": "todo/{id}", "pagination": {"type": "offset", "limit": 2}, "total": "meta.count"}`,
			`"total": "meta.count" names no count in the answer; the answer counts its items at meta.filter_count`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env["SIDECAR_MAPPING_FILE"] = directusMapping(t, tc.source)
			code, out, errOut := check(t, env, "--header", "Authorization: Bearer alice")
			if code != 0 {
				t.Fatalf("exit %d, want 0 (a warning does not fail the check)\n%s%s", code, out, errOut)
			}
			if tc.want == "" {
				if strings.Contains(out, "! ") || !strings.Contains(out, "Nothing to fix.") {
					t.Errorf("want no warning:\n%s", out)
				}
				return
			}
			if !strings.Contains(out, "! /items/todos") || !strings.Contains(out, tc.want) ||
				!strings.Contains(out, "No problems, but 1 warning") || strings.Contains(out, "Nothing to fix") {
				t.Errorf("want a warning containing %q:\n%s", tc.want, out)
			}
		})
	}
	// The exact fix for the case issue 29 met.
	env["SIDECAR_MAPPING_FILE"] = directusMapping(t, `{"path": "/items/todos?meta=filter_count", "items": "data", "key": "todo/{id}", "pagination": {"type": "offset", "limit": 2}}`)
	_, out, _ := check(t, env, "--header", "Authorization: Bearer alice")
	if !strings.Contains(out, `the answer counts its items at meta.filter_count: say "total": "meta.filter_count" on the source`) {
		t.Errorf("the fix is not named:\n%s", out)
	}
}

// TestCheckDirectusExamples: examples are sent in the order given (in name
// order the update hit the todo the delete had removed, answered 403 and
// nobody was told); an example the API rejects is a problem naming what
// the API said, unless it is marked as expected to be rejected.
func TestCheckDirectusExamples(t *testing.T) {
	api, fit := directusAPI(t)
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_AUTH_PATH": "/users/me", "SIDECAR_AUTH_USER_FIELD": "data.id",
		"SIDECAR_MAPPING_FILE": directusMapping(t, directusSource+`}`)}
	code, out, errOut := check(t, env, "--header", "Authorization: Bearer alice", "--write",
		"--example", `createTodo={"id":"c1","title":"from check"}`,
		"--example", `updateTodo={"id":"c1","title":"renamed"}`,
		"--example", `deleteTodo={"id":"c1"}`)
	if code != 0 {
		t.Errorf("create, update, delete: exit %d, want 0\n%s%s", code, out, errOut)
	}
	want := []string{"POST /items/todos", "PATCH /items/todos/c1", "DELETE /items/todos/c1"}
	if got := fit.Writes(); !slices.Equal(got, want) {
		t.Errorf("the API saw %q, want %q (the order given)", got, want)
	}

	// The same from an examples file (YAML), with a rejection expected.
	file := filepath.Join(t.TempDir(), "examples.yaml")
	if err := os.WriteFile(file, []byte(`
- {mutator: createTodo, args: {id: c2, title: two}}
- {mutator: deleteTodo, args: {id: c2}}
- {mutator: deleteTodo, args: {id: c2}, expect: rejected}   # gone by now: Directus answers 403
- {mutator: updateTodo, args: {id: c2, title: x}, expect: 403}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := check(t, env, "--header", "Authorization: Bearer alice", "--write", "--examples", file); code != 0 ||
		!strings.Contains(out, "rejected (403), expected rejected") {
		t.Errorf("examples file with expected rejections: exit %d, want 0\n%s%s", code, out, errOut)
	}

	for _, tc := range []struct {
		name    string
		example string
		want    string
	}{
		// A validation error: what the API said, and how to mark it.
		{"rejected", `createTodo={"id":"c3"}`, `✗ createTodo: answered 400 ({"errors":[{"extensions":{"code":"FAILED_VALIDATION"},"message":"Validation failed for field \"title\". Value is required."}]}): the API rejected the example`},
		{"forbidden", `updateTodo={"id":"nope","title":"x"}`, `✗ updateTodo: answered 403 ({"errors":[{"extensions":{"code":"FORBIDDEN"},"message":"You don't have permission to access this."}]}): the API rejected the example; the credentials given may not do this, or the item it names does not exist`},
		// Marked as expected to be rejected, but applied.
		{"applied unexpectedly", `createTodo:rejected={"id":"c4","title":"fine"}`, `✗ createTodo: expected rejected, but the API applied it (200)`},
		// Expected one status, answered another.
		{"another status", `deleteTodo:404={"id":"nope"}`, `✗ deleteTodo: expected 404, but the API answered 403`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := check(t, env, "--header", "Authorization: Bearer alice", "--write", "--example", tc.example)
			if code != 1 || !strings.Contains(out, tc.want) || strings.Contains(out, "Nothing to fix") {
				t.Errorf("exit %d, want 1 and %s\n%s%s", code, tc.want, out, errOut)
			}
		})
	}
	_, out, _ = check(t, env, "--header", "Authorization: Bearer alice", "--write", "--example", `createTodo={"id":"c5"}`)
	if !strings.Contains(out, `--example createTodo:400='{…}', or "expect": "400" in an examples file`) {
		t.Errorf("the marking is not shown:\n%s", out)
	}
}

// TestCheckEmptyCollectionVerifiesNothing: a key template typo against a
// user with no items said "Nothing to fix"; an empty collection verified
// nothing, and the check says so, naming the source and what to do.
func TestCheckEmptyCollectionVerifiesNothing(t *testing.T) {
	api, _ := directusAPI(t)
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_AUTH_PATH": "/users/me", "SIDECAR_AUTH_USER_FIELD": "data.id",
		"SIDECAR_MAPPING_FILE": directusMapping(t, `{"path": "/items/todos?meta=filter_count", "items": "data", "key": "todo/{idd}", "total": "meta.filter_count",
		  "pagination": {"type": "offset"}, "changes": {"query": "filter[date_updated][_gt]={since}", "field": "date_updated"}}`)}
	code, out, errOut := check(t, env, "--header", "Authorization: Bearer nobody")
	if code != 0 || strings.Contains(out, "Nothing to fix") ||
		!strings.Contains(out, "! /items/todos?meta=filter_count: answered no items for user 8f1c2d3e-0000-4000-8000-000000000000, so nothing of the items was verified (its key template, its changes)") ||
		!strings.Contains(out, "give the credentials of a user who has items") {
		t.Errorf("exit %d, want 0 with a warning naming the source and what to do\n%s%s", code, out, errOut)
	}
	// The same typo against a user with items is a problem.
	if code, out, _ := check(t, env, "--header", "Authorization: Bearer alice"); code != 1 || !strings.Contains(out, `missing key field "idd"`) {
		t.Errorf("with items: exit %d\n%s", code, out)
	}
}

// TestCheckDirectusDeltaQuery: a changes query Directus honours, and one
// naming a field it does not filter by (Directus-like: the filter is
// ignored).
func TestCheckDirectusDeltaQuery(t *testing.T) {
	api, _ := directusAPI(t)
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_AUTH_PATH": "/users/me", "SIDECAR_AUTH_USER_FIELD": "data.id"}
	env["SIDECAR_MAPPING_FILE"] = directusMapping(t, directusSource+`, "changes": {"query": "filter[date_updated][_gt]={since}", "field": "date_updated"}}`)
	code, out, errOut := check(t, env, "--header", "Authorization: Bearer alice")
	if code != 0 || !strings.Contains(out, `✓ /items/todos?meta=filter_count: the API honours the changes filter (changes.query "filter[date_updated][_gt]={since}"): after the newest date_updated it answered 0 items, since before the oldest 5 of 5`) {
		t.Errorf("honoured filter: exit %d\n%s%s", code, out, errOut)
	}
	env["SIDECAR_MAPPING_FILE"] = directusMapping(t, directusSource+`, "changes": {"query": "filter[date_update][_gt]={since}", "field": "date_updated"}}`)
	code, out, errOut = check(t, env, "--header", "Authorization: Bearer alice")
	want := `✗ /items/todos?meta=filter_count: the API ignores the changes filter: asked for what changed after 2024-05-01T10:00:07.500Z (the newest date_updated read) ` +
		`with filter[date_update][_gt]=2024-05-01T10:00:07.501Z, it answered 5 items (the collection has 5)`
	if code != 1 || !strings.Contains(out, want) || !strings.Contains(out, `check changes.query "filter[date_update][_gt]={since}" against the API's own filter`) {
		t.Errorf("ignored filter: exit %d, want 1 and %s\n%s%s", code, want, out, errOut)
	}
}

// drfAPI behaves like Django REST Framework: the user at /api/me/ as
// {"pk": …} (dj-rest-auth), LimitOffsetPagination with a count,
// django-filter's updated_at__gt, microsecond timestamps. Tokens: "Token
// alice" (five todos), "Token nobody" (none).
func drfAPI(t *testing.T) *httptest.Server {
	a := newFitAPI()
	users := map[string]string{"Token alice": "alice", "Token nobody": "nobody"}
	pks := map[string]int{"alice": 7, "nobody": 8}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, ok := users[r.Header.Get("Authorization")]
		if !ok {
			writeJSON(w, http.StatusUnauthorized, map[string]any{"detail": "Invalid token."})
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		switch r.URL.Path {
		case "/api/me/":
			writeJSON(w, http.StatusOK, map[string]any{"pk": pks[user], "username": user, "email": user + "@example.com"})
		case "/api/todos/":
			q := r.URL.Query()
			var after time.Time
			if s := q.Get("updated_at__gt"); s != "" {
				var err error
				if after, err = time.Parse(time.RFC3339Nano, s); err != nil {
					writeJSON(w, http.StatusBadRequest, map[string]any{"updated_at__gt": []string{"Enter a valid date/time."}})
					return
				}
			}
			list := a.list(user, after)
			limit, offset := 100, 0
			if n, err := strconv.Atoi(q.Get("limit")); err == nil {
				limit = n
			}
			if n, err := strconv.Atoi(q.Get("offset")); err == nil {
				offset = n
			}
			results := []map[string]any{}
			for i := offset; i < min(offset+limit, len(list)); i++ {
				results = append(results, map[string]any{"id": list[i].ID, "title": list[i].Title, "updated_at": list[i].at.Format("2006-01-02T15:04:05.000000Z")})
			}
			var next any
			if offset+limit < len(list) {
				q.Set("offset", strconv.Itoa(offset+limit))
				next = "http://" + r.Host + r.URL.Path + "?" + q.Encode()
			}
			writeJSON(w, http.StatusOK, map[string]any{"count": len(list), "next": next, "previous": nil, "results": results})
		default:
			writeJSON(w, http.StatusNotFound, map[string]any{"detail": "Not found."})
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func drfMapping(t *testing.T, source string) string {
	return writeMapping(t, `{"mutators": {"createTodo": {"method": "POST", "path": "/api/todos/"}}, "clientView": [`+source+`]}`)
}

// TestCheckDRF: the same findings on a Django REST Framework-shaped API:
// the id at pk, offset pages whose count is read (no warning), and the
// delta read: honoured, a mistyped parameter, a mistyped field, a field
// that holds no time, and a soft-delete field never seen.
func TestCheckDRF(t *testing.T) {
	api := drfAPI(t)
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_AUTH_PATH": "/api/me/"}
	const page = `"path": "/api/todos/", "items": "results", "key": "todo/{id}", "pagination": {"type": "offset", "limit": 2}`
	env["SIDECAR_MAPPING_FILE"] = drfMapping(t, `{`+page+`}`)
	code, out, _ := check(t, env, "--header", "Authorization: Token alice")
	if code != 1 || !strings.Contains(out, `its answer holds an id at pk ("7"): set SIDECAR_AUTH_USER_FIELD=pk; the rest was checked as that user`) {
		t.Errorf("the id at pk: exit %d\n%s", code, out)
	}
	env["SIDECAR_AUTH_USER_FIELD"] = "pk"
	if code, out, _ := check(t, env, "--header", "Authorization: Token alice"); code != 0 || !strings.Contains(out, "Nothing to fix.") || !sourceRow(out, "/api/todos/", "offset", 3, 5) {
		t.Errorf("offset pages with DRF's count (read as the total): exit %d, want 0 without a warning\n%s", code, out)
	}

	for _, tc := range []struct {
		name    string
		changes string
		code    int
		want    string
	}{
		{"honoured", `{"param": "updated_at__gt", "field": "updated_at"}`, 0,
			`✓ /api/todos/: the API honours the changes filter (changes.param "updated_at__gt"): after the newest updated_at it answered 0 items, since before the oldest 5 of 5`},
		{"mistyped param", `{"param": "updated__gt", "field": "updated_at"}`, 1,
			`✗ /api/todos/: the API ignores the changes filter: asked for what changed after 2024-05-01T10:00:07.500000Z (the newest updated_at read) with updated__gt=2024-05-01T10:00:07.500001Z, ` +
				`it answered 5 items (the collection has 5), some changed before it; every pull would read the whole collection and call it a delta: check changes.param "updated__gt"`},
		{"mistyped field", `{"param": "updated_at__gt", "field": "updatedat"}`, 1,
			`✗ /api/todos/: no item has changes.field "updatedat" (did you mean "updated_at"?)`},
		{"not a time", `{"param": "updated_at__gt", "field": "title"}`, 1,
			`✗ /api/todos/: changes.field "title" holds "todo 1", neither an RFC 3339 time nor a number, in every item`},
		{"deleted never seen", `{"param": "updated_at__gt", "field": "updated_at", "deleted": "is_deleted"}`, 0,
			`! /api/todos/: changes.deleted "is_deleted" appears in no item read, in full or by changes`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env["SIDECAR_MAPPING_FILE"] = drfMapping(t, `{`+page+`, "changes": `+tc.changes+`}`)
			code, out, errOut := check(t, env, "--header", "Authorization: Token alice")
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, want %d and %s\n%s%s", code, tc.code, tc.want, out, errOut)
			}
		})
	}
	// A key typo against a user with none: a warning, not "Nothing to fix".
	env["SIDECAR_MAPPING_FILE"] = drfMapping(t, `{"path": "/api/todos/", "items": "results", "key": "todo/{pk}", "pagination": {"type": "url"}}`)
	if code, out, _ := check(t, env, "--header", "Authorization: Token nobody"); code != 0 || strings.Contains(out, "Nothing to fix") ||
		!strings.Contains(out, "! /api/todos/: answered no items for user 8") {
		t.Errorf("empty collection: exit %d\n%s", code, out)
	}
}

// TestCheckDeltaChangingAPI: against the API the sidecar's delta reads are
// tested with (proxytest.ChangingAPI): honoured, ignored (its
// IgnoreFilter), and soft deletes that show only to a filtered read are
// seen by the check's delta read.
func TestCheckDeltaChangingAPI(t *testing.T) {
	api := proxytest.NewChangingAPI(t)
	for i := range 4 {
		api.Put("alice", fmt.Sprintf("t%d", i), "todo")
	}
	env := map[string]string{"SIDECAR_UPSTREAM_URL": api.Server.URL, "SIDECAR_AUTH_PATH": "/api/me",
		"SIDECAR_MAPPING_FILE": writeMapping(t, `{"clientView": [{"path": "/api/todos", "items": "todos", "key": "todo/{id}", "pagination": {"type": "link"},
		  "changes": {"param": "updated_after", "field": "updated_at", "deleted": "deleted"}}]}`)}
	code, out, errOut := check(t, env, "--header", "Authorization: Bearer alice")
	if code != 0 || !strings.Contains(out, "✓ /api/todos: the API honours the changes filter") || !strings.Contains(out, `changes.deleted "deleted" appears in no item read`) {
		t.Errorf("honoured, no delete seen: exit %d\n%s%s", code, out, errOut)
	}
	api.SoftDelete = true
	api.Delete("alice", "t0") // shown, deleted: true, to a filtered read only
	if code, out, _ := check(t, env, "--header", "Authorization: Bearer alice"); code != 0 || strings.Contains(out, "changes.deleted") {
		t.Errorf("a soft delete shown to the delta read: exit %d, want no warning\n%s", code, out)
	}
	api.IgnoreFilter = true
	if code, out, _ := check(t, env, "--header", "Authorization: Bearer alice"); code != 1 ||
		!strings.Contains(out, `the API ignores the changes filter`) || !strings.Contains(out, `check changes.param "updated_after"`) {
		t.Errorf("IgnoreFilter: exit %d, want 1 naming the parameter\n%s", code, out)
	}
}

// TestCheckUnknownFields: every unknown field of the mapping, with its
// place and the name meant, in the text and the JSON report, for JSON and
// YAML mappings alike.
func TestCheckUnknownFields(t *testing.T) {
	want := []string{
		`mutator "createTodo": unknown field "methd" (did you mean "method"?)`,
		`clientView[0] (/api/todos): unknown field "itmes" (did you mean "items"?)`,
		`clientView[0] (/api/todos): unknown field "nxt" in pagination (did you mean "next"?)`,
	}
	docs := map[string]string{
		"mapping.json": `{"mutators": {"createTodo": {"methd": "POST", "path": "/api/todos"}},
		  "clientView": [{"path": "/api/todos", "itmes": "todos", "key": "todo/{id}", "pagination": {"type": "url", "nxt": "next"}}]}`,
		"mapping.yaml": "mutators:\n  createTodo: {methd: POST, path: /api/todos}\nclientView:\n" +
			"  - {path: /api/todos, itmes: todos, key: \"todo/{id}\", pagination: {type: url, nxt: next}}\n",
	}
	for name, doc := range docs {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), name)
			if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{"SIDECAR_UPSTREAM_URL": "http://127.0.0.1:1", "SIDECAR_MAPPING_FILE": file}
			code, out, _ := check(t, env)
			for _, w := range want {
				if !strings.Contains(out, "SIDECAR_MAPPING_FILE: "+w+"\n") {
					t.Errorf("text report lacks %s", w)
				}
			}
			if code != 1 || strings.Contains(out, "json:") {
				t.Errorf("exit %d, want 1, without json:\n%s", code, out)
			}
			_, out, _ = check(t, env, "--json")
			var rep struct {
				Problems []string `json:"configurationProblems"`
			}
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatal(err)
			}
			for _, w := range want {
				if !slices.Contains(rep.Problems, "SIDECAR_MAPPING_FILE: "+w) {
					t.Errorf("JSON report lacks %s: %q", w, rep.Problems)
				}
			}
		})
	}
}
