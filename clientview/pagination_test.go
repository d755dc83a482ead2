package clientview

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

// pagedAPI serves one collection in the pagination style of a real API
// family, three items a page. Tests change the collection between pages
// through onPage, which runs after each page is served.
type pagedAPI struct {
	srv     *httptest.Server
	mu      sync.Mutex
	items   []string // ids, in order
	onPage  func(n int)
	pages   int
	written int // bytes of every answer so far
	// offHost makes the url style's next link point elsewhere.
	offHost string
}

const pageSize = 3

func newPagedAPI(t *testing.T, n int) *pagedAPI {
	t.Helper()
	a := &pagedAPI{}
	for i := range n {
		a.items = append(a.items, fmt.Sprintf("i%02d", i))
	}
	a.srv = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *pagedAPI) slice(from, size int) []map[string]string {
	out := []map[string]string{}
	for i := from; i < min(from+size, len(a.items)); i++ {
		out = append(out, map[string]string{"id": a.items[i]})
	}
	return out
}

func (a *pagedAPI) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	q := r.URL.Query()
	var body any
	switch r.URL.Path {
	case "/drf/": // Django REST Framework: absolute next URL, results, count
		page := max(atoi(q.Get("page")), 1)
		var next any
		if page*pageSize < len(a.items) {
			next = fmt.Sprintf("http://%s/drf/?page=%d", r.Host, page+1)
			if a.offHost != "" {
				next = fmt.Sprintf("http://%s/drf/?page=%d", a.offHost, page+1)
			}
		}
		body = map[string]any{"count": len(a.items), "next": next, "results": a.slice((page-1)*pageSize, pageSize)}
	case "/jsonapi": // JSON:API: relative links.next, data
		page := max(atoi(q.Get("page[number]")), 1)
		links := map[string]any{"self": r.URL.RequestURI()}
		if page*pageSize < len(a.items) {
			links["next"] = fmt.Sprintf("/jsonapi?page[number]=%d", page+1)
		}
		body = map[string]any{"data": a.slice((page-1)*pageSize, pageSize), "links": links}
	case "/offset": // offset and limit, items in the answer's "items"
		limit := atoi(q.Get("limit"))
		body = map[string]any{"items": a.slice(atoi(q.Get("offset")), limit)}
	case "/pages": // page numbers from 1 and per_page, a bare array
		size := atoi(q.Get("per_page"))
		body = a.slice((atoi(q.Get("page"))-1)*size, size)
	case "/pages0": // page numbers from 0, server's own page size, until empty
		body = a.slice(atoi(q.Get("p"))*pageSize, pageSize)
	default:
		a.mu.Unlock()
		http.NotFound(w, r)
		return
	}
	a.pages++
	b, _ := json.Marshal(body)
	a.written += len(b)
	n, hook := a.pages, a.onPage
	a.mu.Unlock()
	_, _ = w.Write(b)
	if hook != nil {
		hook(n)
	}
}

func (a *pagedAPI) set(f func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f()
}

// TestPaginationStyles: each style pages through a collection of 7 (3 a
// page) and through an empty one; a collection that shifts between pages
// (an item inserted at the front, so one is served twice) fails the fetch
// rather than answering a wrong view; a next URL on another host fails it.
func TestPaginationStyles(t *testing.T) {
	zero := 0
	styles := []struct {
		name string
		src  Source
	}{
		{"url (Django REST Framework)", Source{Path: "/drf/", Items: "results", Key: "x/{id}", Pagination: &Pagination{Type: "url"}}},
		{"url (JSON:API links.next, relative)", Source{Path: "/jsonapi", Items: "data", Key: "x/{id}", Pagination: &Pagination{Type: "url", Next: "links.next"}}},
		{"offset", Source{Path: "/offset", Items: "items", Key: "x/{id}", Pagination: &Pagination{Type: "offset", Limit: pageSize}}},
		{"page with size", Source{Path: "/pages", Key: "x/{id}", Pagination: &Pagination{Type: "page", SizeParam: "per_page", Size: pageSize}}},
		{"page from 0 until empty", Source{Path: "/pages0", Key: "x/{id}", Pagination: &Pagination{Type: "page", Param: "p", Start: &zero}}},
	}
	for _, st := range styles {
		t.Run(st.name, func(t *testing.T) {
			t.Run("whole collection", func(t *testing.T) {
				api := newPagedAPI(t, 7)
				es, err := fetch(t, api.srv, 1<<20, st.src)
				if err != nil {
					t.Fatal(err)
				}
				var ids []string
				for _, e := range es {
					ids = append(ids, strings.TrimPrefix(e.Key, "x/"))
				}
				if got := strings.Join(ids, " "); got != "i00 i01 i02 i03 i04 i05 i06" {
					t.Errorf("keys %s, want all 7 in order", got)
				}
			})
			t.Run("empty collection", func(t *testing.T) {
				api := newPagedAPI(t, 0)
				es, err := fetch(t, api.srv, 1<<20, st.src)
				if err != nil || len(es) != 0 {
					t.Errorf("empty collection: %d entries, %v", len(es), err)
				}
			})
			t.Run("collection shifting between pages", func(t *testing.T) {
				// An item inserted at the front after the first page: one
				// item comes twice. The source is fetched again, and the
				// second fetch, undisturbed, is whole.
				api := newPagedAPI(t, 7)
				api.onPage = func(n int) {
					if n == 1 {
						api.set(func() { api.items = append([]string{"new"}, api.items...) })
					}
				}
				es, err := fetch(t, api.srv, 1<<20, st.src)
				if err != nil || len(es) != 8 || es[0].Key != "x/new" {
					t.Errorf("shifted once: %d entries (%v), err %v; want the refetched 8", len(es), keys(es), err)
				}
			})
			t.Run("collection that keeps shifting", func(t *testing.T) {
				api := newPagedAPI(t, 7)
				api.onPage = func(n int) {
					if n%2 == 1 { // after every first page
						api.set(func() { api.items = append([]string{fmt.Sprint("new", n)}, api.items...) })
					}
				}
				_, err := fetch(t, api.srv, 1<<20, st.src)
				var se *SourceError
				if !errors.As(err, &se) || !se.Shifted || !strings.Contains(se.Reason, "twice in a row") {
					t.Errorf("err = %v; want a Shifted SourceError", err)
				}
			})
		})
	}
	t.Run("next URL on another host", func(t *testing.T) {
		api := newPagedAPI(t, 7)
		api.offHost = "127.0.0.1:1"
		_, err := fetch(t, api.srv, 1<<20, styles[0].src)
		var se *SourceError
		if !errors.As(err, &se) || se.Source != "/drf/" || !strings.Contains(se.Reason, "points to another host") {
			t.Errorf("err = %v; want a SourceError naming /drf/ and the other host", err)
		}
	})
	t.Run("a page-number API that ignores the page", func(t *testing.T) {
		// Every page is the first: the keys repeat, and the fetch fails
		// instead of looping to maxPages or answering page one.
		api := newPagedAPI(t, 7)
		src := Source{Path: "/drf/", Items: "results", Key: "x/{id}", Pagination: &Pagination{Type: "page", Param: "ignored"}}
		_, err := fetch(t, api.srv, 1<<20, src)
		var se *SourceError
		if !errors.As(err, &se) || !strings.Contains(se.Reason, "came on page 1 and again on page 2") {
			t.Errorf("err = %v, want the overlap named", err)
		}
	})
}

func TestPaginationCompileErrors(t *testing.T) {
	neg := -1
	_, err := Compile([]Source{
		{Path: "/a", Key: "a/{id}", Pagination: &Pagination{Type: "url"}},
		{Path: "/b", Key: "b/{id}", Pagination: &Pagination{Type: "offset", Limit: -5}},
		{Path: "/c", Key: "c/{id}", Pagination: &Pagination{Type: "page", SizeParam: "size"}},
		{Path: "/d", Key: "d/{id}", Pagination: &Pagination{Type: "page", Start: &neg}},
		{Path: "/e", Key: "e/{id}", Pagination: &Pagination{Type: "offset", Param: "x", LimitParam: "x"}},
	})
	if err == nil {
		t.Fatal("Compile accepted broken pagination")
	}
	for _, want := range []string{
		"url pagination needs items", "limit must be positive", "sizeParam and size go together",
		"start must not be negative", "param and limitParam must differ",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

// TestWithQueryKeepsTheMappingsQuery: paging sets its own parameter and
// leaves the rest of the query as written.
func TestWithQueryKeepsTheMappingsQuery(t *testing.T) {
	u, _ := url.Parse("http://api/items?filter[status]=open&sort=-id,name&page=1")
	got := withQuery(u, "page", "2").RawQuery
	if want := "filter[status]=open&sort=-id,name&page=2"; got != want {
		t.Errorf("query = %q, want %q", got, want)
	}
}

// TestSignsOfMorePages: a source whose answer shows there is more than it
// received (a Link rel="next", a next field, a total above the items) fails
// instead of answering a cut view, unless the mapping says "none".
func TestSignsOfMorePages(t *testing.T) {
	items := func(n int) string {
		var b []string
		for i := range n {
			b = append(b, fmt.Sprintf(`{"id":%d}`, i))
		}
		return "[" + strings.Join(b, ",") + "]"
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/drf":
			_, _ = fmt.Fprintf(w, `{"count":120,"next":"http://%s/drf?page=2","results":%s}`, r.Host, items(25))
		case "/linked":
			w.Header().Set("Link", `</linked?page=2>; rel="next"`)
			_, _ = io.WriteString(w, items(3))
		case "/counted":
			w.Header().Set("X-Total-Count", "40")
			_, _ = io.WriteString(w, items(30))
		case "/pocketbase":
			_, _ = fmt.Fprintf(w, `{"page":1,"perPage":1000,"totalItems":1500,"items":%s}`, items(10))
		case "/custom":
			_, _ = fmt.Fprintf(w, `{"meta":{"total_count":50},"data":%s}`, items(10))
		case "/exact":
			_, _ = fmt.Fprintf(w, `{"count":5,"next":null,"results":%s}`, items(5))
		case "/bodypaged": // next page in the body, but mapped as link pagination
			_, _ = fmt.Fprintf(w, `{"next":"/bodypaged?page=2","results":%s}`, items(5))
		}
	}))
	t.Cleanup(srv.Close)
	none := &Pagination{Type: "none"}
	for _, tc := range []struct {
		name   string
		src    Source
		reason string // "" when the fetch must succeed
	}{
		{"DRF without pagination", Source{Path: "/drf", Items: "results", Key: "x/{id}"}, `non-empty "next" field`},
		{"DRF said to be one page", Source{Path: "/drf", Items: "results", Key: "x/{id}", Pagination: none}, ""},
		{"Link header without pagination", Source{Path: "/linked", Key: "x/{id}"}, `rel="next"`},
		{"X-Total-Count above the items", Source{Path: "/counted", Key: "x/{id}"}, "reports 40 items in all, but 30"},
		{"PocketBase capping perPage", Source{Path: "/pocketbase", Items: "items", Key: "x/{id}"}, "reports 1500 items"},
		{"a total where the mapping says", Source{Path: "/custom", Items: "data", Key: "x/{id}", Total: "meta.total_count"}, "reports 50 items"},
		{"everything received", Source{Path: "/exact", Items: "results", Key: "x/{id}"}, ""},
		{"body pagination mapped as link", Source{Path: "/bodypaged", Items: "results", Key: "x/{id}", Pagination: &Pagination{Type: "link"}}, `non-empty "next" field`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fetch(t, srv, 1<<20, tc.src)
			var se *SourceError
			switch {
			case tc.reason == "" && err != nil:
				t.Errorf("err = %v, want success", err)
			case tc.reason != "" && (!errors.As(err, &se) || !strings.Contains(se.Reason, tc.reason) || se.Shifted):
				t.Errorf("err = %v, want a SourceError naming %q", err, tc.reason)
			}
		})
	}
}

// TestRefetchGivesBackItsBudget: the bytes of an attempt discarded because
// its source shifted do not count against the view's size bound: a view of
// well over half the bound survives one shift.
func TestRefetchGivesBackItsBudget(t *testing.T) {
	src := Source{Path: "/offset", Items: "items", Key: "x/{id}", Pagination: &Pagination{Type: "offset", Limit: pageSize}}
	calm := newPagedAPI(t, 8)
	if _, err := fetch(t, calm.srv, 1<<20, src); err != nil {
		t.Fatal(err)
	}
	size := calm.written // one whole fetch
	api := newPagedAPI(t, 7)
	api.onPage = func(n int) {
		if n == 1 {
			api.set(func() { api.items = append([]string{"new"}, api.items...) })
		}
	}
	es, err := fetch(t, api.srv, int64(size+size/2), src)
	if err != nil || len(es) != 8 {
		t.Errorf("a view of %d bytes within a %d-byte bound, shifted once: %d entries, %v", size, size+size/2, len(es), err)
	}
}

// TestNextPagesStayOnTheUpstream: a next link carrying credentials, or one
// that leaves the upstream URL's path prefix, fails the pull.
func TestNextPagesStayOnTheUpstream(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/userinfo":
			w.Header().Set("Link", fmt.Sprintf(`<http://u:p@%s/v1/userinfo?page=2>; rel="next"`, r.Host))
		case "/v1/escape":
			w.Header().Set("Link", `</admin/secrets>; rel="next"`)
		}
		_, _ = io.WriteString(w, `[{"id":"p`+r.URL.RawQuery+`"}]`)
	}))
	t.Cleanup(srv.Close)
	base, _ := url.Parse(srv.URL + "/v1")
	f := NewFetcher(FetcherOptions{Base: base, MaxBodyBytes: 1 << 20,
		Upstream: upstream.New(upstream.Options{Base: base, Timeout: time.Second, Registerer: prometheus.NewRegistry(), Namespace: "t"}).View})
	for path, reason := range map[string]string{"/userinfo": "carries credentials", "/escape": "leaves the upstream's path prefix /v1"} {
		v, err := Compile([]Source{{Path: path, Key: "x/{id}", Pagination: &Pagination{Type: "link"}}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.Fetch(context.Background(), v, Request{})
		if err == nil || !strings.Contains(err.Error(), reason) || strings.Contains(err.Error(), ":p@") {
			t.Errorf("%s: err = %v; want it to say it %s, without the password", path, err, reason)
		}
	}
}

// TestTotalChangingWhileRead: items added behind the pages already read do
// not overlap any page, but the count the API reports moves: the first
// page's and the last page's totals disagree, which is a shift (fetched
// again), however many items came.
func TestTotalChangingWhileRead(t *testing.T) {
	drf := Source{Path: "/drf/", Items: "results", Key: "x/{id}", Pagination: &Pagination{Type: "url"}}
	for _, tc := range []struct {
		name   string
		after  map[int]bool // the server's page counts after which an item is appended
		want   int          // entries, when the fetch must succeed
		reason string       // else the error's reason
	}{
		// Attempt 1 reads 7 then 8 (pages 1-3); attempt 2, undisturbed, 8.
		{"once", map[int]bool{1: true}, 8, ""},
		// Attempt 2 (pages 4-6) sees 8 then 9: another writer, twice.
		{"twice", map[int]bool{1: true, 4: true}, 0, "the reported total changed from 8 to 9 while the pages were read, twice in a row"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := newPagedAPI(t, 7)
			api.onPage = func(n int) {
				if tc.after[n] {
					api.set(func() { api.items = append(api.items, fmt.Sprint("new", n)) })
				}
			}
			es, err := fetch(t, api.srv, 1<<20, drf)
			if tc.reason == "" {
				if err != nil || len(es) != tc.want {
					t.Fatalf("%d entries, %v; want %d", len(es), err, tc.want)
				}
				return
			}
			var se *SourceError
			if !errors.As(err, &se) || !se.Shifted || se.Reason != tc.reason {
				t.Fatalf("err = %v; want a Shifted SourceError %q", err, tc.reason)
			}
		})
	}
}
