package clientview

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

// fakeAPI is a small legacy API: /todos paginates by Link header two items
// a page, /cursor paginates by a cursor field, everything else is a table of
// canned answers.
func fakeAPI(t *testing.T, canned map[string]string) *httptest.Server {
	t.Helper()
	todos := []string{`{"id":"a","title":"A"}`, `{"id":"b","title":"B"}`, `{"id":"c","title":"C"}`, `{"id":5,"title":"five"}`, `{"id":"e","title":"E"}`}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer alice" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/todos":
			page, _ := strconv.Atoi(r.URL.Query().Get("page"))
			if page == 0 {
				page = 1
			}
			lo, hi := (page-1)*2, min(page*2, len(todos))
			if hi < len(todos) {
				// A relative link, as many APIs send.
				w.Header().Add("Link", fmt.Sprintf(`</todos?page=%d>; rel="next", </todos?page=1>; rel="first"`, page+1))
			}
			_, _ = fmt.Fprintf(w, `{"todos": [%s], "total": %d}`, strings.Join(todos[lo:hi], ","), len(todos))
		case "/cursor":
			cur, _ := strconv.Atoi(r.URL.Query().Get("after"))
			next := "null"
			if cur+2 < len(todos) {
				next = strconv.Itoa(cur + 2)
			}
			_, _ = fmt.Fprintf(w, `{"data":{"items":[%s]},"meta":{"next":%s}}`, strings.Join(todos[cur:min(cur+2, len(todos))], ","), next)
		default:
			body, ok := canned[r.URL.RequestURI()]
			if !ok {
				http.NotFound(w, r)
				return
			}
			if code, rest, found := strings.Cut(body, " "); found && len(code) == 3 {
				if n, err := strconv.Atoi(code); err == nil {
					w.Header().Set("Link", r.Header.Get("X-Test-Link"))
					w.WriteHeader(n)
					body = rest
				}
			}
			_, _ = w.Write([]byte(body))
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func fetch(t *testing.T, srv *httptest.Server, maxBody int64, srcs ...Source) ([]Entry, error) {
	t.Helper()
	v, err := Compile(srcs)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	u, _ := url.Parse(srv.URL)
	up := upstream.New(upstream.Options{Base: u, Timeout: 500 * time.Millisecond, Registerer: prometheus.NewRegistry(), Namespace: "test"})
	f := NewFetcher(FetcherOptions{Base: u, Upstream: up.View, MaxBodyBytes: maxBody})
	return f.Fetch(context.Background(), v, Request{UserID: "alice/x", Header: http.Header{"Authorization": {"Bearer alice"}}})
}

func keys(es []Entry) string {
	var ks []string
	for _, e := range es {
		ks = append(ks, e.Key+"="+string(e.Value))
	}
	return strings.Join(ks, " ")
}

func TestFetch(t *testing.T) {
	srv := fakeAPI(t, map[string]string{
		"/me":                    `{"id": "alice", "name": "Alice"}`,
		"/users/alice%2Fx/lists": `[{"id":1,"name":"L1"},{"id":2,"name":"L2"}]`,
		"/nested":                `{"a":{"b":[{"k":{"id":"x"}}]}}`,
		"/empty":                 `{"todos":[]}`,
		"/search?user=alice%2Fx": `[{"id":"s"}]`,
	})
	tests := []struct {
		name string
		srcs []Source
		want string
	}{
		{"whole response as one entry", []Source{{Path: "/me", Key: "me"}},
			`me={"id":"alice","name":"Alice"}`},
		{"array response, userID escaped as one segment", []Source{{Path: "/users/{userID}/lists", Key: "list/{id}"}},
			`list/1={"id":1,"name":"L1"} list/2={"id":2,"name":"L2"}`},
		{"userID escaped in a query", []Source{{Path: "/search?user={userID}", Key: "s/{id}"}}, `s/s={"id":"s"}`},
		{"dotted items and key fields", []Source{{Path: "/nested", Items: "a.b", Key: "n/{k.id}"}}, `n/x={"k":{"id":"x"}}`},
		{"empty list", []Source{{Path: "/empty", Items: "todos", Key: "todo/{id}"}}, ``},
		{"link pagination follows every page", []Source{{Path: "/todos", Items: "todos", Key: "todo/{id}", Pagination: &Pagination{Type: "link"}}},
			`todo/a={"id":"a","title":"A"} todo/b={"id":"b","title":"B"} todo/c={"id":"c","title":"C"} todo/5={"id":5,"title":"five"} todo/e={"id":"e","title":"E"}`},
		{"cursor pagination", []Source{{Path: "/cursor", Items: "data.items", Key: "t/{id}", Pagination: &Pagination{Type: "cursor", Param: "after", Next: "meta.next"}}},
			`t/a={"id":"a","title":"A"} t/b={"id":"b","title":"B"} t/c={"id":"c","title":"C"} t/5={"id":5,"title":"five"} t/e={"id":"e","title":"E"}`},
		{"several sources keep source order", []Source{{Path: "/me", Key: "me"}, {Path: "/users/{userID}/lists", Key: "list/{id}"}},
			`me={"id":"alice","name":"Alice"} list/1={"id":1,"name":"L1"} list/2={"id":2,"name":"L2"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			es, err := fetch(t, srv, 1<<20, tc.srcs...)
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if got := keys(es); got != tc.want {
				t.Errorf("entries:\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestFetchFailsWhole(t *testing.T) {
	srv := fakeAPI(t, map[string]string{
		"/broken":    `500 {"error":"db down"}`,
		"/html":      `<html>oops</html>`,
		"/nokey":     `[{"id":"a"},{"title":"no id"}]`,
		"/objkey":    `[{"id":{"x":1}}]`,
		"/dup":       `[{"id":"a"},{"id":"a"}]`,
		"/a":         `[{"id":"same"}]`,
		"/b":         `[{"id":"same"}]`,
		"/notarray":  `{"todos":{"id":"a"}}`,
		"/big":       `[` + strings.Repeat(`{"id":"x"},`, 100) + `{"id":"y"}]`,
		"/redirect":  `302 []`,
		"/noitems":   `{"other":[]}`,
		"/badcursor": `{"items":[{"id":"q"}],"next":{"x":1}}`,
		"/metastr":   `{"items":[{"id":"q"}],"meta":"end"}`,
		"/metaarr":   `{"items":[{"id":"q"}],"meta":[{"next":"2"}]}`,
	})
	tests := []struct {
		name   string
		srcs   []Source
		reason string
	}{
		{"non-2xx", []Source{{Path: "/broken", Key: "x/{id}"}}, "upstream answered 500"},
		{"unauthorized is not an empty view", []Source{{Path: "/missing", Key: "x/{id}"}}, "upstream answered 404"},
		{"non-JSON", []Source{{Path: "/html", Key: "x/{id}"}}, "not JSON"},
		{"missing key field", []Source{{Path: "/nokey", Key: "x/{id}"}}, `item 1: missing key field "id"`},
		{"object as key field", []Source{{Path: "/objkey", Key: "x/{id}"}}, `missing key field "id"`},
		{"duplicate key in one source", []Source{{Path: "/dup", Key: "x/{id}"}}, `duplicate key "x/a"`},
		{"duplicate key across sources", []Source{{Path: "/a", Key: "x/{id}"}, {Path: "/b", Key: "x/{id}"}}, `duplicate key "x/same" (also produced by /a)`},
		{"items not an array", []Source{{Path: "/notarray", Items: "todos", Key: "x/{id}"}}, "not an array"},
		{"items path absent", []Source{{Path: "/noitems", Items: "todos", Key: "x/{id}"}}, `items path "todos" not found`},
		{"oversize response", []Source{{Path: "/big", Key: "x/{id}"}}, "larger than 1000 bytes"},
		{"redirect not followed", []Source{{Path: "/redirect", Key: "x/{id}"}}, "upstream answered 302"},
		{"bad cursor", []Source{{Path: "/badcursor", Items: "items", Key: "x/{id}", Pagination: &Pagination{Type: "cursor"}}}, "not a string or number"},
		// A cursor path that meets a non-object must not end the view
		// early: a truncated reset view deletes entities on the client.
		{"cursor path through a string", []Source{{Path: "/metastr", Items: "items", Key: "x/{id}", Pagination: &Pagination{Type: "cursor", Next: "meta.next"}}},
			`cursor field "meta.next" cannot be followed: meta is not an object`},
		{"cursor path through an array", []Source{{Path: "/metaarr", Items: "items", Key: "x/{id}", Pagination: &Pagination{Type: "cursor", Next: "meta.next"}}},
			`cursor field "meta.next" cannot be followed: meta is not an object`},
		{"page limit", []Source{{Path: "/todos", Items: "todos", Key: "todo/{id}", Pagination: &Pagination{Type: "link", MaxPages: 2}}}, "more than 2 pages"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			es, err := fetch(t, srv, 1000, tc.srcs...)
			var se *SourceError
			if !errors.As(err, &se) {
				t.Fatalf("want *SourceError, got %v (entries %s)", err, keys(es))
			}
			if es != nil {
				t.Errorf("a failed fetch returned entries: %s", keys(es))
			}
			if !strings.Contains(se.Reason, tc.reason) {
				t.Errorf("reason = %q, want it to contain %q", se.Reason, tc.reason)
			}
			if se.Source != tc.srcs[len(tc.srcs)-1].Path && se.Source != tc.srcs[0].Path {
				t.Errorf("source = %q, not one of the sources", se.Source)
			}
		})
	}
}

func TestLinkPaginationGuards(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		switch r.URL.Path {
		case "/loop": // every page points back at the first
			w.Header().Set("Link", `</loop>; rel="next"`)
		case "/offhost":
			w.Header().Set("Link", `<http://evil.example/steal>; rel="next"`)
		}
		_, _ = w.Write([]byte(`[{"id":"` + r.URL.Path + `"}]`))
	}))
	defer srv.Close()
	for path, reason := range map[string]string{"/loop": "pagination loop", "/offhost": "points to another host"} {
		_, err := fetch(t, srv, 1<<20, Source{Path: path, Key: "x/{id}", Pagination: &Pagination{Type: "link"}})
		if err == nil || !strings.Contains(err.Error(), reason) {
			t.Errorf("%s: err = %v, want %q", path, err, reason)
		}
	}
	if n := hits.Load(); n > 3 {
		t.Errorf("upstream was called %d times; the guards should stop after the first page of each", n)
	}
}

func TestNextLink(t *testing.T) {
	tests := map[string]string{
		`<https://a/x?page=2>; rel="next"`:                       "https://a/x?page=2",
		`<https://a/1>; rel="prev", <https://a/3>; rel="next"`:   "https://a/3",
		`<https://a/1>; rel="first"`:                             "",
		`<https://a/1>; title="a, b"; rel="next"`:                "https://a/1",
		`<https://a/1>; rel="prefetch next"`:                     "https://a/1",
		`<https://a/1>; REL=NEXT`:                                "https://a/1",
		`garbage`:                                                "",
		`<https://a/1>; rel="next-ish", <https://a/2>; rel=next`: "https://a/2",
	}
	for in, want := range tests {
		if got := nextLink([]string{in}); got != want {
			t.Errorf("nextLink(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	_, err := Compile([]Source{
		{Path: "", Key: "x"},
		{Path: "/a/{user}", Key: "x/{id}"},
		{Path: "/b"},
		{Path: "/c", Key: "whole", Pagination: &Pagination{Type: "link"}},
		{Path: "/d", Key: "d/{id}", Pagination: &Pagination{Type: "pages"}},
		// An array answer has nowhere to hold a cursor: page one forever.
		{Path: "/e", Key: "e/{id}", Pagination: &Pagination{Type: "cursor"}},
	})
	if err == nil {
		t.Fatal("Compile accepted broken sources")
	}
	for _, want := range []string{"path is required", "only the {userID} placeholder", "key is required", "needs a key with a placeholder", `pagination type "pages"`,
		"cursor pagination needs items"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// TestFetchBoundsTheWholeView: every page is small, but together they pass
// the limit: the fetch fails rather than piling up memory.
func TestFetchBoundsTheWholeView(t *testing.T) {
	srv := fakeAPI(t, map[string]string{})
	src := Source{Path: "/todos", Items: "todos", Key: "todo/{id}", Pagination: &Pagination{Type: "link"}}
	if _, err := fetch(t, srv, 1000, src); err != nil {
		t.Fatalf("the whole view fits in 1000 bytes: %v", err)
	}
	// Pages are about 80 bytes each; five todos come in three pages.
	_, err := fetch(t, srv, 150, src)
	var se *SourceError
	if !errors.As(err, &se) || !strings.Contains(se.Reason, "larger than 150 bytes (all pages") {
		t.Fatalf("want a SourceError about the view's size, got %v", err)
	}
}

// TestAbsentCursorFieldWarnsOncePerLoad: a cursor field missing from a
// source's first page (likely a typo in the mapping) is the last page, and
// is logged at warn level, naming the field, once per compiled mapping.
// An explicit null is an ordinary last page and says nothing.
func TestAbsentCursorFieldWarnsOncePerLoad(t *testing.T) {
	srv := fakeAPI(t, map[string]string{
		"/typo": `{"items":[{"id":"q"}],"nextCursor":"abc"}`,
		"/null": `{"items":[{"id":"r"}],"next":null}`,
	})
	base, _ := url.Parse(srv.URL)
	var logs proxytest.Buffer
	f := NewFetcher(FetcherOptions{
		Base: base, MaxBodyBytes: 1 << 20,
		Upstream: upstream.New(upstream.Options{Base: base, Timeout: time.Second, Registerer: prometheus.NewRegistry(), Namespace: "test"}).View,
		Logger:   slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	compile := func() *View {
		v, err := Compile([]Source{
			{Path: "/typo", Items: "items", Key: "x/{id}", Pagination: &Pagination{Type: "cursor"}},
			{Path: "/null", Items: "items", Key: "y/{id}", Pagination: &Pagination{Type: "cursor"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	req := Request{UserID: "alice", Header: http.Header{"Authorization": {"Bearer alice"}}}
	warnings := func() int { return strings.Count(logs.String(), `"level":"WARN"`) }
	v := compile()
	for i := range 3 {
		es, err := f.Fetch(context.Background(), v, req)
		if err != nil || keys(es) != `x/q={"id":"q"} y/r={"id":"r"}` {
			t.Fatalf("fetch %d: %s, %v", i, keys(es), err)
		}
	}
	if n := warnings(); n != 1 || !strings.Contains(logs.String(), `"field":"next"`) || !strings.Contains(logs.String(), `"source":"/typo"`) {
		t.Fatalf("after 3 fetches of one load: %d warnings, want 1 naming the field and source:\n%s", n, logs.String())
	}
	if _, err := f.Fetch(context.Background(), compile(), req); err != nil {
		t.Fatal(err)
	}
	if n := warnings(); n != 2 {
		t.Errorf("a reloaded mapping warned %d times in all, want 2 (once per load)", n)
	}
}
