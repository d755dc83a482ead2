package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestTodoAPI(t *testing.T) {
	mux := http.NewServeMux()
	newAPI(2).routes(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	call := func(method, path, user, key, body string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if user != "" {
			req.Header.Set("Authorization", "Bearer "+user)
		}
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b)), resp.Header
	}
	steps := []struct {
		method, path, user, key, body string
		status                        int
		contains                      string
	}{
		{"GET", "/api/me", "", "", "", 401, "bearer"},
		{"GET", "/api/me", "alice", "", "", 200, `"id":"alice"`},
		{"POST", "/api/todos", "alice", "k1", `{"id":"a","title":"milk"}`, 201, `"title":"milk"`},
		// The same key again: replayed, not a 409.
		{"POST", "/api/todos", "alice", "k1", `{"id":"a","title":"milk"}`, 201, `"title":"milk"`},
		{"POST", "/api/todos", "alice", "k2", `{"id":"a","title":"milk"}`, 409, "already exists"},
		{"POST", "/api/todos", "alice", "", `{"id":"b"}`, 422, "title is required"},
		{"POST", "/api/todos", "alice", "", `[]`, 422, "JSON object"},
		{"POST", "/api/todos", "alice", "", `{"id":"b","title":"bread"}`, 201, ""},
		{"POST", "/api/todos", "alice", "", `{"id":"c","title":"eggs"}`, 201, ""},
		{"PATCH", "/api/todos/a", "alice", "k3", `{"done":true}`, 200, `"done":true`},
		{"PATCH", "/api/todos/zz", "alice", "", `{"done":true}`, 404, ""},
		{"PATCH", "/api/todos/a", "alice", "", `{"title":""}`, 422, ""},
		{"GET", "/api/todos/a", "bob", "", "", 404, ""}, // bob can't see alice's todo
		{"DELETE", "/api/todos/b", "alice", "k4", "", 204, ""},
		{"DELETE", "/api/todos/b", "alice", "k4", "", 204, ""}, // replay
		{"DELETE", "/api/todos/b", "alice", "k5", "", 404, ""},
		{"POST", "/api/lists", "alice", "", `{"id":"l1","name":"groceries"}`, 201, ""},
		{"GET", "/api/lists", "alice", "", "", 200, `"lists":[{"id":"l1","name":"groceries","updated_at":"`},
	}
	for i, s := range steps {
		status, body, _ := call(s.method, s.path, s.user, s.key, s.body)
		if status != s.status || !strings.Contains(body, s.contains) {
			t.Fatalf("step %d %s %s: %d %s; want %d containing %q", i, s.method, s.path, status, body, s.status, s.contains)
		}
	}
	// Pagination: 2 per page, Link to the next.
	call("POST", "/api/todos", "alice", "", `{"id":"d","title":"x"}`)
	status, body, hdr := call("GET", "/api/todos", "alice", "", "")
	var page struct {
		Todos []todo `json:"todos"`
		Total int    `json:"total"`
	}
	_ = json.Unmarshal([]byte(body), &page)
	if status != 200 || len(page.Todos) != 2 || page.Total != 3 || hdr.Get("Link") != `</api/todos?page=2>; rel="next"` {
		t.Fatalf("page 1 = %d %s (Link %q)", status, body, hdr.Get("Link"))
	}
	_, body, hdr = call("GET", "/api/todos?page=2", "alice", "", "")
	if !strings.Contains(body, `"id":"d"`) || hdr.Get("Link") != "" {
		t.Fatalf("page 2 = %s (Link %q)", body, hdr.Get("Link"))
	}
	// Conditional GETs: the page's ETag in If-None-Match answers 304 until
	// the page changes.
	etag := hdr.Get("ETag")
	conditional := func() int {
		req, _ := http.NewRequest("GET", srv.URL+"/api/todos?page=2", nil)
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("If-None-Match", etag)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if etag == "" || conditional() != http.StatusNotModified {
		t.Fatalf("page 2 ETag %q; a conditional GET did not answer 304", etag)
	}
	call("PATCH", "/api/todos/d", "alice", "", `{"done":true}`)
	if got := conditional(); got != http.StatusOK {
		t.Errorf("conditional GET of a changed page = %d, want 200", got)
	}
	// The token may come in a cookie (a browser's EventSource sends no
	// Authorization header).
	req, _ := http.NewRequest("GET", srv.URL+"/api/me", nil)
	req.AddCookie(&http.Cookie{Name: "demo_token", Value: "bob"})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"id":"bob"`) {
		t.Errorf("GET /api/me with the token in a cookie = %d %s", resp.StatusCode, b)
	}
}

func TestTodoAPIStateSurvivesRestart(t *testing.T) {
	path := t.TempDir() + "/state.json"
	serve := func() *httptest.Server {
		a := newAPI(10)
		if err := a.load(path); err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		a.routes(mux)
		return httptest.NewServer(mux)
	}
	post := func(srv *httptest.Server) (int, string) {
		req, _ := http.NewRequest("POST", srv.URL+"/api/todos", strings.NewReader(`{"id":"a","title":"milk"}`))
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("Idempotency-Key", "c:1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Idempotent-Replayed")
	}
	first := serve()
	if code, replay := post(first); code != 201 || replay != "" {
		t.Fatalf("first create = %d (replayed %q)", code, replay)
	}
	first.Close()
	second := serve() // a restart
	defer second.Close()
	if code, replay := post(second); code != 201 || replay != "true" {
		t.Fatalf("create after restart = %d (replayed %q), want the replayed 201", code, replay)
	}
	req, _ := http.NewRequest("GET", second.URL+"/api/todos/a", nil)
	req.Header.Set("Authorization", "Bearer alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("todo lost across restart: %v %v", err, resp)
	}
	_ = resp.Body.Close()
}

// TestExpiringTokens: "<user>~<unix ms>" is that user until then, and 401
// afterwards; a create of an existing id answers -duplicate-status.
func TestExpiringTokens(t *testing.T) {
	a := newAPI(10)
	a.duplicateStatus = http.StatusInternalServerError
	mux := http.NewServeMux()
	a.routes(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	call := func(method, path, token, body string) int {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	live := fmt.Sprintf("alice~%d", time.Now().Add(time.Hour).UnixMilli())
	dead := fmt.Sprintf("alice~%d", time.Now().Add(-time.Second).UnixMilli())
	for _, c := range []struct {
		method, path, token, body string
		want                      int
	}{
		{"POST", "/api/todos", live, `{"id":"a","title":"x"}`, 201},
		{"GET", "/api/todos/a", "alice", "", 200}, // the same user
		{"GET", "/api/me", dead, "", 401},
		{"GET", "/api/me", "alice~soon", "", 401},
		{"POST", "/api/todos", live, `{"id":"a","title":"again"}`, 500},
	} {
		if got := call(c.method, c.path, c.token, c.body); got != c.want {
			t.Errorf("%s %s with %q = %d, want %d", c.method, c.path, c.token, got, c.want)
		}
	}
}

// TestUpdatedAfter: ?updated_after= answers only the items changed after
// that time (strictly), paged like the whole list with the filter kept in
// the next page's link; a time it cannot read is 400.
func TestUpdatedAfter(t *testing.T) {
	mux := http.NewServeMux()
	newAPI(2).routes(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	call := func(method, path, body string) (int, []byte, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer alice")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, resp.Header
	}
	stamps := map[string]string{}
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		_, b, _ := call("POST", "/api/todos", `{"id":"`+id+`","title":"x"}`)
		var got todo
		if err := json.Unmarshal(b, &got); err != nil || got.UpdatedAt == "" {
			t.Fatalf("create %s answered %s: no updated_at", id, b)
		}
		stamps[id] = got.UpdatedAt
	}
	if !(stamps["a"] < stamps["b"] && stamps["b"] < stamps["c"]) {
		t.Fatalf("updated_at does not grow: %v", stamps)
	}
	for _, id := range []string{"a", "d", "e"} {
		call("PATCH", "/api/todos/"+id, `{"done":true}`)
	}
	// After c's creation: a, d and e (changed since), not b or c; two per page.
	var ids []string
	path := "/api/todos?updated_after=" + url.QueryEscape(stamps["c"])
	for path != "" {
		status, b, hdr := call("GET", path, "")
		var page struct {
			Todos []todo `json:"todos"`
		}
		if err := json.Unmarshal(b, &page); status != 200 || err != nil {
			t.Fatalf("GET %s = %d %s", path, status, b)
		}
		for _, td := range page.Todos {
			ids = append(ids, td.ID)
		}
		path = ""
		if l := hdr.Get("Link"); l != "" {
			path = strings.TrimSuffix(strings.TrimPrefix(l, "<"), `>; rel="next"`)
			if !strings.Contains(path, "updated_after=") {
				t.Fatalf("the next page's link %q dropped the filter", l)
			}
		}
	}
	if strings.Join(ids, ",") != "a,d,e" {
		t.Errorf("changed after c's creation: %v, want a,d,e", ids)
	}
	// Strictly after: e's own stamp leaves nothing.
	_, b, _ := call("GET", "/api/todos?updated_after="+url.QueryEscape(stamps["e"]), "")
	var last struct {
		Todos []todo `json:"todos"`
	}
	_ = json.Unmarshal(b, &last)
	for _, td := range last.Todos {
		if td.ID == "b" || td.ID == "c" {
			t.Errorf("updated_after=%s answered %s", stamps["e"], td.ID)
		}
	}
	if status, b, _ := call("GET", "/api/todos?updated_after=yesterday", ""); status != 400 || !strings.Contains(string(b), "updated_after") {
		t.Errorf("an unreadable time = %d %s, want 400 naming updated_after", status, b)
	}
}

// TestAssignedIDs (-assign-ids): the service chooses each todo's id, an
// integer written as a JSON number, from a sequence shared by every user;
// an id in the create's body is ignored; a replayed create answers the
// same id; the ids and the sequence survive a restart; an id the service
// never gave (a client's temporary one) is 404.
func TestAssignedIDs(t *testing.T) {
	path := t.TempDir() + "/state.json"
	serve := func() *httptest.Server {
		a := newAPI(10)
		a.assignIDs = true
		if err := a.load(path); err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		a.routes(mux)
		return httptest.NewServer(mux)
	}
	stamp := regexp.MustCompile(`,"updated_at":"[^"]*"`)
	call := func(srv *httptest.Server, method, path, user, key, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+user)
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, stamp.ReplaceAllString(strings.TrimSpace(string(b)), "")
	}
	srv := serve()
	for i, s := range []struct {
		method, path, user, key, body string
		status                        int
		want                          string // the answer, without updated_at
	}{
		{"POST", "/api/todos", "alice", "k1", `{"id":"tmp-1","title":"milk"}`, 201, `{"id":1,"title":"milk","done":false}`},
		{"POST", "/api/todos", "alice", "k1", `{"id":"tmp-1","title":"milk"}`, 201, `{"id":1,"title":"milk","done":false}`}, // replayed
		{"POST", "/api/todos", "bob", "k2", `{"title":"bread"}`, 201, `{"id":2,"title":"bread","done":false}`},
		{"PATCH", "/api/todos/tmp-1", "alice", "", `{"done":true}`, 404, `{"error":"no such todo"}`},
		{"PATCH", "/api/todos/1", "alice", "", `{"done":true}`, 200, `{"id":1,"title":"milk","done":true}`},
	} {
		if status, body := call(srv, s.method, s.path, s.user, s.key, s.body); status != s.status || body != s.want {
			t.Fatalf("step %d %s %s: %d %s; want %d %s", i, s.method, s.path, status, body, s.status, s.want)
		}
	}
	srv.Close()
	srv = serve() // a restart
	defer srv.Close()
	if status, body := call(srv, "POST", "/api/todos", "alice", "", `{"title":"eggs"}`); status != 201 || body != `{"id":3,"title":"eggs","done":false}` {
		t.Errorf("create after a restart = %d %s, want id 3", status, body)
	}
	if status, body := call(srv, "GET", "/api/todos", "alice", "", ""); status != 200 ||
		!strings.Contains(body, `"todos":[{"id":1,"title":"milk","done":true},{"id":3,"title":"eggs","done":false}]`) {
		t.Errorf("list after a restart = %d %s", status, body)
	}
}

// TestFaultSwitch: with the fault switch, a GET of one page of a list
// answers the status set, other pages and lists are served, and clearing
// it serves that page again; bad settings are refused.
func TestFaultSwitch(t *testing.T) {
	mux := http.NewServeMux()
	a := newAPI(1)
	a.routes(mux)
	a.faultRoutes(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	call := func(method, path string) int {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer alice")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	for _, id := range []string{"a", "b", "c"} {
		req, _ := http.NewRequest("POST", srv.URL+"/api/todos", strings.NewReader(`{"id":"`+id+`","title":"x"}`))
		req.Header.Set("Authorization", "Bearer alice")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 201 {
			t.Fatalf("create %s: %v %v", id, err, resp)
		}
		_ = resp.Body.Close()
	}
	if got := call("PUT", "/test/fault?path=/api/todos&page=2&status=503"); got != 204 {
		t.Fatalf("setting the fault: %d", got)
	}
	for _, c := range []struct {
		path string
		want int
	}{{"/api/todos", 200}, {"/api/todos?page=2", 503}, {"/api/todos?page=3", 200}, {"/api/lists?page=2", 200}} {
		if got := call("GET", c.path); got != c.want {
			t.Errorf("GET %s with the fault set = %d, want %d", c.path, got, c.want)
		}
	}
	if got := call("DELETE", "/test/fault"); got != 204 {
		t.Fatalf("clearing the fault: %d", got)
	}
	if got := call("GET", "/api/todos?page=2"); got != 200 {
		t.Errorf("GET page 2 after the fault cleared = %d, want 200", got)
	}
	for _, bad := range []string{"path=/api/todos&page=0&status=503", "path=/api/todos&page=2&status=200", "path=/etc&page=2&status=503"} {
		if got := call("PUT", "/test/fault?"+bad); got != 400 {
			t.Errorf("PUT /test/fault?%s = %d, want 400", bad, got)
		}
	}
}
