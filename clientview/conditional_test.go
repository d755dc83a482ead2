package clientview

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
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

// etagAPI serves a collection by Link pagination, three items a page
// (/items?page=N), and the first page alone with a reported total
// (/one), each answer with an ETag of its body (not of its Link header,
// as many APIs do); it answers 304 to a
// matching If-None-Match and notes which requests carried one.
type etagAPI struct {
	srv *httptest.Server
	mu  sync.Mutex
	// items are the collection's ids; total is what /one reports.
	items []string
	total int
	asked map[string]bool // request URI → it carried If-None-Match
}

func newETagAPI(t *testing.T, n int) *etagAPI {
	t.Helper()
	a := &etagAPI{asked: map[string]bool{}}
	for i := range n {
		a.items = append(a.items, fmt.Sprintf("i%02d", i))
	}
	a.total = n
	a.srv = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *etagAPI) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	page := max(atoi(r.URL.Query().Get("page")), 1)
	var objs []string
	for i := (page - 1) * 3; i < min(page*3, len(a.items)); i++ {
		objs = append(objs, fmt.Sprintf(`{"id":%q}`, a.items[i]))
	}
	body := "[" + strings.Join(objs, ",") + "]"
	switch r.URL.Path {
	case "/items":
		if page*3 < len(a.items) {
			w.Header().Set("Link", fmt.Sprintf(`</items?page=%d>; rel="next"`, page+1))
		}
	case "/one":
		body = fmt.Sprintf(`{"items":%s,"total":%d}`, body, a.total)
	default:
		http.NotFound(w, r)
		return
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(body)) // the body only: a new Link keeps the ETag
	etag := fmt.Sprintf(`"%x"`, h.Sum64())
	w.Header().Set("ETag", etag)
	inm := r.Header.Get("If-None-Match")
	a.asked[r.URL.RequestURI()] = inm != ""
	if inm == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	_, _ = w.Write([]byte(body))
}

// askedConditionally returns, in request order of the URIs given, whether
// each was last asked for with If-None-Match ("-" when never asked).
func (a *etagAPI) askedConditionally(uris ...string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, u := range uris {
		c, ok := a.asked[u]
		switch {
		case !ok:
			out = append(out, "-")
		case c:
			out = append(out, "cond")
		default:
			out = append(out, "full")
		}
	}
	clear(a.asked)
	return strings.Join(out, " ")
}

func fetchResult(t *testing.T, srv *httptest.Server, memos map[PageKey]*PageMemo, src Source) (Result, error) {
	t.Helper()
	v, err := Compile([]Source{src})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	u, _ := url.Parse(srv.URL)
	up := upstream.New(upstream.Options{Base: u, Timeout: time.Second, Registerer: prometheus.NewRegistry(), Namespace: "test"})
	f := NewFetcher(FetcherOptions{Base: u, Upstream: up.View, MaxBodyBytes: 1 << 20})
	return f.FetchResult(context.Background(), v, Request{UserID: "u", Memos: memos})
}

// mustFetch is fetchResult for a fetch that must succeed.
func mustFetch(t *testing.T, srv *httptest.Server, memos map[PageKey]*PageMemo, src Source) Result {
	t.Helper()
	res, err := fetchResult(t, srv, memos, src)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// memosOf turns a fetch's page results into the memos of the next fetch,
// as the sidecar stores and reads them.
func memosOf(res Result) map[PageKey]*PageMemo {
	m := map[PageKey]*PageMemo{}
	for _, p := range res.Pages {
		memo := p.PageMemo
		m[PageKey{memo.Source, memo.Page}] = &memo
	}
	return m
}

// pagesOf describes each page result: its number, whether it was asked
// conditionally and answered 304, its next page, total and keys.
func pagesOf(res Result) string {
	var out []string
	for _, p := range res.Pages {
		next := p.Next
		if i := strings.Index(next, "/items"); i >= 0 {
			next = next[i:]
		}
		out = append(out, fmt.Sprintf("%d cond=%v 304=%v next=%q total=%d keys=%v etag=%v",
			p.Page, p.Conditional, p.NotModified, next, p.Total, p.Keys, p.ETag != ""))
	}
	return strings.Join(out, "\n")
}

// entriesOf lists keys, with the values of entries that carry one.
func entriesOf(es []Entry) string {
	var out []string
	for _, e := range es {
		if e.Hash != Hash(e.Value) && e.Value != nil {
			out = append(out, e.Key+"=BADHASH")
			continue
		}
		out = append(out, e.Key+"="+string(e.Value))
	}
	return strings.Join(out, " ")
}

// TestConditionalFetch: what a fetch remembers of each page, and how the
// next fetch uses it. Pages answered 304 stand for their remembered keys
// and hashes (no values); the last page of a paginated source is always
// fetched in full; a remembered page that no longer fits is never taken on
// trust.
func TestConditionalFetch(t *testing.T) {
	items := Source{Path: "/items", Key: "x/{id}", Pagination: &Pagination{Type: "link"}}
	one := Source{Path: "/one", Items: "items", Key: "x/{id}"}
	pageURIs := []string{"/items", "/items?page=2", "/items?page=3"}

	t.Run("a first fetch remembers every page", func(t *testing.T) {
		api := newETagAPI(t, 7)
		res := mustFetch(t, api.srv, nil, items)
		want := `1 cond=false 304=false next="/items?page=2" total=-1 keys=[x/i00 x/i01 x/i02] etag=true
2 cond=false 304=false next="/items?page=3" total=-1 keys=[x/i03 x/i04 x/i05] etag=true
3 cond=false 304=false next="" total=-1 keys=[x/i06] etag=true`
		if got := pagesOf(res); got != want {
			t.Errorf("pages:\n%s\nwant\n%s", got, want)
		}
		if got := api.askedConditionally(pageURIs...); got != "full full full" {
			t.Errorf("requests %s, want every page in full", got)
		}
	})

	t.Run("unchanged pages answer 304 but the last is fetched in full", func(t *testing.T) {
		api := newETagAPI(t, 7)
		first := mustFetch(t, api.srv, nil, items)
		api.askedConditionally()
		res := mustFetch(t, api.srv, memosOf(first), items)
		if got := api.askedConditionally(pageURIs...); got != "cond cond full" {
			t.Errorf("requests %s, want the first two conditional, the last in full", got)
		}
		want := `1 cond=true 304=true next="/items?page=2" total=-1 keys=[x/i00 x/i01 x/i02] etag=true
2 cond=true 304=true next="/items?page=3" total=-1 keys=[x/i03 x/i04 x/i05] etag=true
3 cond=false 304=false next="" total=-1 keys=[x/i06] etag=true`
		if got := pagesOf(res); got != want {
			t.Errorf("pages:\n%s\nwant\n%s", got, want)
		}
		if got, want := entriesOf(res.Entries), `x/i00= x/i01= x/i02= x/i03= x/i04= x/i05= x/i06={"id":"i06"}`; got != want {
			t.Errorf("entries %s, want %s", got, want)
		}
		for i, e := range res.Entries {
			if e.Hash != first.Entries[i].Hash {
				t.Errorf("entry %s: hash %x, the first fetch's %x", e.Key, e.Hash, first.Entries[i].Hash)
			}
		}
	})

	t.Run("a page that grew brings the pages behind it in full", func(t *testing.T) {
		// An item added on page 3 (the last): pages 1 and 2 answer 304,
		// page 3 is new and now leads to a page 4.
		api := newETagAPI(t, 9)
		first := mustFetch(t, api.srv, nil, items)
		api.set(func() { api.items = append(api.items, "i09") })
		res := mustFetch(t, api.srv, memosOf(first), items)
		if got := api.askedConditionally(append(pageURIs, "/items?page=4")...); got != "cond cond full full" {
			t.Errorf("requests %s", got)
		}
		if got := len(res.Entries); got != 10 {
			t.Errorf("%d entries, want 10", got)
		}
	})

	t.Run("a changed page is answered in full", func(t *testing.T) {
		api := newETagAPI(t, 7)
		first := mustFetch(t, api.srv, nil, items)
		api.set(func() { api.items[4] = "new" })
		res := mustFetch(t, api.srv, memosOf(first), items)
		want := `1 cond=true 304=true next="/items?page=2" total=-1 keys=[x/i00 x/i01 x/i02] etag=true
2 cond=true 304=false next="/items?page=3" total=-1 keys=[x/i03 x/new x/i05] etag=true
3 cond=false 304=false next="" total=-1 keys=[x/i06] etag=true`
		if got := pagesOf(res); got != want {
			t.Errorf("pages:\n%s\nwant\n%s", got, want)
		}
		if got, want := entriesOf(res.Entries), `x/i00= x/i01= x/i02= x/i03={"id":"i03"} x/new={"id":"new"} x/i05={"id":"i05"} x/i06={"id":"i06"}`; got != want {
			t.Errorf("entries %s, want %s", got, want)
		}
	})

	t.Run("a memo of another URL or without validators is not used", func(t *testing.T) {
		api := newETagAPI(t, 7)
		first := mustFetch(t, api.srv, nil, items)
		memos := memosOf(first)
		memos[PageKey{first.Pages[0].Source, 1}].URL += "?stale=1"
		memos[PageKey{first.Pages[1].Source, 2}].ETag = ""
		mustFetch(t, api.srv, memos, items)
		if got := api.askedConditionally(pageURIs...); got != "full full full" {
			t.Errorf("requests %s, want every page in full", got)
		}
	})

	t.Run("a one-page source answered 304 keeps its remembered total", func(t *testing.T) {
		api := newETagAPI(t, 3)
		first := mustFetch(t, api.srv, nil, one)
		if got := pagesOf(first); got != `1 cond=false 304=false next="" total=3 keys=[x/i00 x/i01 x/i02] etag=true` {
			t.Errorf("pages: %s", got)
		}
		res, err := fetchResult(t, api.srv, memosOf(first), one)
		if err != nil || len(res.Entries) != 3 || !res.Pages[0].NotModified {
			t.Fatalf("second fetch: %s, %v", pagesOf(res), err)
		}
		// A remembered total above the remembered keys is checked like a
		// fresh one: the view would be cut.
		memos := memosOf(first)
		memos[PageKey{first.Pages[0].Source, 1}].Total = 4
		_, err = fetchResult(t, api.srv, memos, one)
		var se *SourceError
		if !errors.As(err, &se) || !strings.Contains(se.Reason, "reports 4 items in all, but 3 were received") {
			t.Errorf("err = %v, want the remembered total refused", err)
		}
	})

	t.Run("a source that shifted is fetched again without memos", func(t *testing.T) {
		// Page 1's memo claims a key that page 2 now holds: the pages
		// overlap, so the source is fetched again, every page in full.
		api := newETagAPI(t, 7)
		first := mustFetch(t, api.srv, nil, items)
		memos := memosOf(first)
		m := memos[PageKey{first.Pages[0].Source, 1}]
		m.Keys = append([]string(nil), m.Keys...)
		m.Keys[2] = "x/i03"
		res := mustFetch(t, api.srv, memos, items)
		if got := api.askedConditionally(pageURIs...); got != "full full full" {
			t.Errorf("last requests %s, want the second attempt in full", got)
		}
		for _, p := range res.Pages {
			if p.NotModified || p.Conditional {
				t.Errorf("page %d of the second attempt: conditional %v, 304 %v", p.Page, p.Conditional, p.NotModified)
			}
		}
		if len(res.Entries) != 7 {
			t.Errorf("%d entries, want 7", len(res.Entries))
		}
		for _, e := range res.Entries {
			if e.Value == nil {
				t.Errorf("entry %s has no value: taken from a memo", e.Key)
			}
		}
	})
}

func (a *etagAPI) set(f func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f()
}
