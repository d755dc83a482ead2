package clientview

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// changingAPI holds items with an updated_at (RFC 3339, its own clock) and
// a soft-delete flag, pages them four at a time by Link header, and filters
// by ?updated_after= (strictly after), or by PocketBase's
// filter=(updated>'…') with its space-separated times; ignore makes it
// ignore the filter, as an API with a mistyped parameter does.
type changingAPI struct {
	mu     sync.Mutex
	items  map[string]map[string]any // by id
	order  []string
	clock  time.Time
	ignore bool
	asked  []string // the request URIs
}

func newChangingAPI(t *testing.T) (*changingAPI, *httptest.Server) {
	a := &changingAPI{items: map[string]map[string]any{}, clock: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return a, srv
}

func (a *changingAPI) put(id, title string, deleted bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.clock = a.clock.Add(time.Second)
	if _, ok := a.items[id]; !ok {
		a.order = append(a.order, id)
	}
	a.items[id] = map[string]any{"id": id, "title": title, "updated_at": a.clock.Format(time.RFC3339Nano), "deleted": deleted}
}

func (a *changingAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.asked = append(a.asked, r.URL.RequestURI())
	q := r.URL.Query()
	var after time.Time
	if s := q.Get("updated_after"); s != "" {
		after, _ = time.Parse(time.RFC3339Nano, s)
	}
	if f := q.Get("filter"); f != "" { // (updated>'2026-12-01 10:00:00.000Z')
		s := strings.TrimSuffix(strings.TrimPrefix(f, "(updated>'"), "')")
		after, _ = time.Parse("2006-01-02 15:04:05.999999999Z07:00", s)
	}
	var list []map[string]any
	for _, id := range a.order {
		it := a.items[id]
		t, _ := time.Parse(time.RFC3339Nano, it["updated_at"].(string))
		if a.ignore || after.IsZero() || t.After(after) {
			list = append(list, it)
		}
	}
	page, _ := strconv.Atoi(q.Get("page"))
	page = max(page, 1)
	lo, hi := min((page-1)*4, len(list)), min(page*4, len(list))
	if hi < len(list) {
		q.Set("page", strconv.Itoa(page+1))
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, q.Encode()))
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"items": list[lo:hi]})
}

func (a *changingAPI) lastAsked() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.asked[len(a.asked)-1]
}

func compileOne(t *testing.T, src string) (*View, string) {
	t.Helper()
	var s Source
	if err := json.Unmarshal([]byte(src), &s); err != nil {
		t.Fatal(err)
	}
	v, err := Compile([]Source{s})
	if err != nil {
		t.Fatal(err)
	}
	return v, v.Sources()[0].ID
}

// TestDeltaReads: a full read finds the watermark (the greatest
// updated_at, as the API wrote it); a delta read asks for what changed
// since it less the overlap, with the source's usual pagination, brings
// only that, drops soft-deleted items into Deleted, and a re-read item
// with the same content is an entry like any other (the record's hash
// tells it unchanged). An API that ignores the filter is noticed.
func TestDeltaReads(t *testing.T) {
	api, srv := newChangingAPI(t)
	for i := range 6 {
		api.put(fmt.Sprint("t", i), fmt.Sprint("todo ", i), false)
	}
	base, _ := url.Parse(srv.URL)
	f := NewFetcher(FetcherOptions{Base: base, Upstream: http.DefaultClient, MaxBodyBytes: 1 << 20})
	v, id := compileOne(t, `{"path": "/todos", "items": "items", "key": "todo/{id}", "pagination": {"type": "link"},
		"changes": {"param": "updated_after", "field": "updated_at", "deleted": "deleted", "overlap": "1s"}}`)
	ctx := context.Background()

	full, err := f.FetchResult(ctx, v, Request{})
	if err != nil {
		t.Fatal(err)
	}
	r := full.Sources[0]
	if r.Mode != Full || r.Entries != 6 || r.Watermark != "2026-12-01T10:00:06Z" || r.Provable {
		t.Fatalf("full read: %+v; want 6 entries, watermark 10:00:06, not provable (link pages, no total)", r)
	}
	if len(full.Pages) != 2 {
		t.Errorf("a full read reported %d pages, want 2 (for conditional requests)", len(full.Pages))
	}

	api.put("t2", "todo 2, renamed", false) // 10:00:07
	api.put("t6", "new", false)             // 10:00:08
	api.put("t4", "todo 4", true)           // 10:00:09, soft-deleted
	delta, err := f.FetchResult(ctx, v, Request{Plans: map[string]Plan{id: {Mode: Delta, Since: r.Watermark}}})
	if err != nil {
		t.Fatal(err)
	}
	d := delta.Sources[0]
	var keys []string
	for _, e := range delta.Entries {
		keys = append(keys, e.Key)
	}
	// The bound is the watermark less the overlap (1 s): t5, written at
	// 10:00:06, is read again.
	if d.Mode != Delta || d.Sent != "2026-12-01T10:00:05Z" || !strings.Contains(api.lastAsked(), "updated_after=2026-12-01T10%3A00%3A05Z") {
		t.Errorf("delta read: %+v, asked %s; want the bound 10:00:05 sent as updated_after", d, api.lastAsked())
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"todo/t2", "todo/t5", "todo/t6"}) || !slices.Equal(d.Deleted, []string{"todo/t4"}) {
		t.Errorf("delta read brought %v, deleted %v; want t5 (the overlap), t2, t6, and t4 deleted", keys, d.Deleted)
	}
	if d.Watermark != "2026-12-01T10:00:09Z" || d.FilterIgnored || len(delta.Pages) != 0 {
		t.Errorf("delta read: watermark %q, ignored %v, %d pages remembered", d.Watermark, d.FilterIgnored, len(delta.Pages))
	}

	// Skip: nothing asked.
	n := len(api.asked)
	if res, err := f.FetchResult(ctx, v, Request{Plans: map[string]Plan{id: {Mode: Skip}}}); err != nil || len(res.Entries) != 0 || res.Sources[0].Mode != Skip || len(api.asked) != n {
		t.Errorf("skip: %v entries, %+v, %d requests", len(res.Entries), res.Sources, len(api.asked)-n)
	}

	// The API ignores the filter: the whole collection comes back; noticed.
	api.ignore = true
	ign, err := f.FetchResult(ctx, v, Request{Plans: map[string]Plan{id: {Mode: Delta, Since: d.Watermark}}})
	if err != nil || !ign.Sources[0].FilterIgnored {
		t.Errorf("an API that ignores the filter: %v, %+v; want FilterIgnored", err, ign.Sources)
	}
	api.ignore = false

	// A watermark that is no time or number: read in full.
	if res, err := f.FetchResult(ctx, v, Request{Plans: map[string]Plan{id: {Mode: Delta, Since: "garbage"}}}); err != nil || res.Sources[0].Mode != Full || res.Sources[0].Entries != 6 {
		t.Errorf("delta with an unusable watermark: %v %+v; want a full read", err, res.Sources)
	}
}

// TestDeltaQueryTemplate: an API that filters by an expression
// (PocketBase) gets the template with the bound written as its own times
// are (a space between date and time), escaped as a query value.
func TestDeltaQueryTemplate(t *testing.T) {
	api, srv := newChangingAPI(t)
	api.put("a", "A", false)
	api.put("b", "B", false)
	base, _ := url.Parse(srv.URL)
	f := NewFetcher(FetcherOptions{Base: base, Upstream: http.DefaultClient, MaxBodyBytes: 1 << 20})
	v, id := compileOne(t, `{"path": "/todos", "items": "items", "key": "todo/{id}", "pagination": {"type": "link"},
		"changes": {"query": "filter=(updated>'{since}')", "field": "updated_at", "overlap": "0s"}}`)
	res, err := f.FetchResult(context.Background(), v, Request{Plans: map[string]Plan{id: {Mode: Delta, Since: "2026-12-01 10:00:01.000Z"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := api.lastAsked(); got != "/todos?filter=%28updated%3E%272026-12-01+10%3A00%3A01.000Z%27%29" {
		t.Errorf("asked %s", got)
	}
	if len(res.Entries) != 1 || res.Entries[0].Key != "todo/b" {
		t.Errorf("entries %v, want todo/b only", res.Entries)
	}
}

// TestChangesMapping: what the mapping may say, and every problem at once.
func TestChangesMapping(t *testing.T) {
	for _, tc := range []struct {
		name, src, problem string
	}{
		{"no field", `{"path":"/t","items":"i","key":"t/{id}","changes":{"param":"since"}}`, "changes.field is required"},
		{"neither param nor query", `{"path":"/t","items":"i","key":"t/{id}","changes":{"field":"u"}}`, "give param"},
		{"both", `{"path":"/t","items":"i","key":"t/{id}","changes":{"field":"u","param":"a","query":"b={since}"}}`, "give param"},
		{"query without since", `{"path":"/t","items":"i","key":"t/{id}","changes":{"field":"u","query":"filter=x"}}`, "has no {since}"},
		{"bad overlap", `{"path":"/t","items":"i","key":"t/{id}","changes":{"field":"u","param":"a","overlap":"soon"}}`, "changes.overlap"},
		{"bad fullEvery", `{"path":"/t","items":"i","key":"t/{id}","changes":{"field":"u","param":"a","fullEvery":"-1s"}}`, "changes.fullEvery"},
		{"whole-value key", `{"path":"/me","key":"me","changes":{"field":"u","param":"a"}}`, "key with a placeholder"},
		{"bad maxAge", `{"path":"/t","key":"me","maxAge":"often"}`, "maxAge"},
		{"shared per user", `{"path":"/u/{userID}","key":"me","shared":true}`, "shared"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s Source
			if err := json.Unmarshal([]byte(tc.src), &s); err != nil {
				t.Fatal(err)
			}
			if _, err := Compile([]Source{s}); err == nil || !strings.Contains(err.Error(), tc.problem) {
				t.Errorf("Compile = %v, want a problem naming %q", err, tc.problem)
			}
		})
	}
}

// TestOwnership: which source a record key belongs to, by the literal
// start of the key templates; a view where that cannot be told apart is
// not Distinct.
func TestOwnership(t *testing.T) {
	v, err := Compile([]Source{{Path: "/todos", Key: "todo/{id}"}, {Path: "/lists", Key: "list/{id}"}, {Path: "/me", Key: "me"}})
	if err != nil {
		t.Fatal(err)
	}
	ids := v.Sources()
	for key, want := range map[string]string{"todo/1": ids[0].ID, "list/x": ids[1].ID, "me": ids[2].ID, "mess": "", "_sidecar/rejection/c/1": ""} {
		if got, _ := v.Owner(key); got != want {
			t.Errorf("Owner(%q) = %q, want %q", key, got, want)
		}
	}
	if !v.Distinct() {
		t.Error("todo/, list/ and me are distinct")
	}
	for _, srcs := range [][]Source{
		{{Path: "/a", Key: "{id}"}, {Path: "/b", Key: "b/{id}"}},     // no literal start
		{{Path: "/a", Key: "t/{id}"}, {Path: "/b", Key: "t/x/{id}"}}, // one start begins the other
	} {
		v, err := Compile(srcs)
		if err != nil {
			t.Fatal(err)
		}
		if v.Distinct() {
			t.Errorf("%v: Distinct, want not", srcs)
		}
	}
}

// TestMarks: watermarks compare as times or numbers, never as text.
func TestMarks(t *testing.T) {
	for _, tc := range []struct{ a, b, want string }{
		{"2026-12-01T10:00:09Z", "2026-12-01T10:00:10Z", "2026-12-01T10:00:10Z"},
		{"2026-12-01T10:00:09.5+01:00", "2026-12-01T09:00:09Z", "2026-12-01T10:00:09.5+01:00"}, // an hour ahead in its zone, half a second later
		{"9", "10", "10"},        // numbers, not text
		{"", "7", "7"},           // no watermark yet
		{"7", "not a mark", "7"}, // an unreadable one never wins
		{"1e3", "999", "1e3"},
	} {
		if got := MaxMark(tc.a, tc.b); got != tc.want {
			t.Errorf("MaxMark(%q, %q) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
	}
}
