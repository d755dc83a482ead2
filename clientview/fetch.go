package clientview

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/cespare/xxhash/v2"

	"github.com/replicache-sidecar/replicache-sidecar/clientview/jsonwalk"
)

// Doer sends one HTTP request to the upstream and returns its answer. In
// the sidecar it is proxy/upstream's view client, which bounds each call by
// its timeout, never follows redirects (a view must come from the upstream
// itself) and describes a failure to get an answer in its error. The caller
// closes the answer's body.
type Doer interface {
	Do(req *http.Request) (*http.Response, error)
}

// FetcherOptions configures a Fetcher.
type FetcherOptions struct {
	// Base is the upstream's base URL; source paths are appended to it.
	Base *url.URL
	// Upstream sends the requests, one per page.
	Upstream Doer
	// MaxBodyBytes bounds the bytes read for one Fetch: every page of every
	// source together. A larger view fails the fetch instead of exhausting
	// memory.
	MaxBodyBytes int64
	// Logger receives warnings about the mapping seen while fetching (e.g.
	// a cursor field absent from a first page). Nil: discarded.
	Logger *slog.Logger
}

// Fetcher fetches client views. It is safe for concurrent use.
type Fetcher struct {
	base     *url.URL
	prefix   string
	upstream Doer
	maxBody  int64
	log      *slog.Logger
}

// NewFetcher returns a Fetcher for o.
func NewFetcher(o FetcherOptions) *Fetcher {
	return &Fetcher{
		base:     o.Base,
		prefix:   strings.TrimSuffix(o.Base.String(), "/"),
		upstream: o.Upstream,
		maxBody:  o.MaxBodyBytes,
		log:      cmp.Or(o.Logger, slog.New(slog.DiscardHandler)),
	}
}

// Request carries what every upstream GET of one pull needs.
type Request struct {
	UserID string
	// Header is sent with every GET: the headers forwarded from the
	// client's request (e.g. Authorization) and its request id.
	Header http.Header
	// Memory, when set, is charged for every byte read from the upstream
	// (the process-wide in-flight budget); its error fails the fetch, and
	// the caller finds it with errors.Is / errors.As.
	Memory Memory
	// Memos, when set, are the pages remembered from earlier fetches: a
	// page whose URL matches its memo is asked for conditionally, and a 304
	// answer stands for the memo's entries (without values). Nil: every
	// page is fetched in full.
	Memos map[PageKey]*PageMemo

	budget *atomic.Int64 // bytes the fetch may still read
	spent  *atomic.Int64 // bytes this attempt at a source has read
}

// Memory is charged for the bytes a fetch reads.
type Memory interface {
	Reader(ctx context.Context, r io.Reader) io.Reader
}

// Fetch fetches every source of v concurrently and returns their entries in
// source order, then item order. Any failure, or a key produced twice, fails
// the whole fetch with a *SourceError (or ctx's error). The returned slice is
// owned by the caller.
func (f *Fetcher) Fetch(parent context.Context, v *View, r Request) ([]Entry, error) {
	res, err := f.FetchResult(parent, v, r)
	return res.Entries, err
}

// FetchResult is Fetch that also reports, per page fetched, what it
// answered (for conditional requests next time).
func (f *Fetcher) FetchResult(parent context.Context, v *View, r Request) (Result, error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	budget := &atomic.Int64{}
	budget.Store(f.maxBody)
	r.budget = budget
	results := make([][]Entry, len(v.sources))
	pages := make([][]PageResult, len(v.sources))
	errs := make([]error, len(v.sources))
	var wg sync.WaitGroup
	for i, s := range v.sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], pages[i], errs[i] = f.fetchSource(ctx, s, r)
			if errs[i] != nil {
				cancel() // no point finishing the others
			}
		}()
	}
	wg.Wait()
	if err := parent.Err(); err != nil {
		return Result{}, err
	}
	// Report a source that failed for its own reason, not one that was
	// cancelled because another failed.
	var firstErr error
	for _, err := range errs {
		var se *SourceError
		if errors.As(err, &se) {
			return Result{}, err
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return Result{}, firstErr
	}
	if len(results) == 1 { // each source's keys are already known distinct
		return Result{Entries: results[0], Pages: pages[0]}, nil
	}
	n := 0
	for _, es := range results {
		n += len(es)
	}
	out := Result{Entries: make([]Entry, 0, n)}
	var keys keySet
	starts := make([]int, 0, len(results)) // index in out.Entries of each source's first entry
	for i, es := range results {
		starts = append(starts, len(out.Entries))
		out.Entries = append(out.Entries, es...)
		for k := starts[i]; k < len(out.Entries); k++ {
			if j, dup := keys.add(out.Entries, k); dup {
				prev, _ := slices.BinarySearch(starts, j+1) // the source entry j came from, counted from 1
				return Result{}, &SourceError{Source: v.sources[i].path,
					Reason: fmt.Sprintf("duplicate key %q (also produced by %s)", out.Entries[k].Key, v.sources[prev-1].path)}
			}
		}
		out.Pages = append(out.Pages, pages[i]...)
	}
	return out, nil
}

// fetchSource fetches one source. A source whose pages shifted while they
// were read (another writer moved items between two pages) is fetched once
// more; if it shifts again the fetch fails with a *SourceError marked
// Shifted, which is worth retrying, unlike a mapping that does not fit.
func (f *Fetcher) fetchSource(ctx context.Context, s *source, r Request) ([]Entry, []PageResult, error) {
	r.spent = &atomic.Int64{}
	es, pages, err := f.fetchPages(ctx, s, r)
	var first *shiftedError
	if !errors.As(err, &first) {
		return es, pages, err
	}
	// The discarded attempt's bytes are no longer held: give them back.
	r.budget.Add(r.spent.Swap(0))
	f.log.Info("client view source shifted while it was read; fetching it again", "source", s.path, "reason", first.reason)
	r.Memos = nil // in full: a memo may be what does not fit
	es, pages, err = f.fetchPages(ctx, s, r)
	var again *shiftedError
	switch {
	case !errors.As(err, &again):
		return es, pages, err
	case again.reason == first.reason:
		// The very same disagreement twice is no writer moving items: the
		// API does it every time (a capped page size, an ignored page
		// parameter). That is for the mapping to fix, not for a retry.
		return nil, nil, &SourceError{Source: s.path, Reason: again.reason + ", the same on a second fetch"}
	}
	return nil, nil, &SourceError{Source: s.path, Reason: again.reason + ", twice in a row", Shifted: true}
}

// shiftedError: the pages of one fetch of a source do not fit together.
type shiftedError struct{ reason string }

func (e *shiftedError) Error() string { return e.reason }

// fetchPages fetches every page of a source once.
func (f *Fetcher) fetchPages(ctx context.Context, s *source, r Request) ([]Entry, []PageResult, error) {
	fail := func(reason string, err error) ([]Entry, []PageResult, error) {
		return nil, nil, &SourceError{Source: s.path, Reason: reason, Err: err}
	}
	first, err := f.sourceURL(s, r.UserID)
	if err != nil {
		return fail(err.Error(), err)
	}
	first = s.firstPage(first)
	var entries []Entry
	var results []PageResult
	seenURLs := map[string]bool{}
	var keys keySet
	var starts []int // index in entries of each page's first entry
	var prevScan pageScan
	firstTotal := -1
	var firstAnswer *answer // page 1's top-level fields, parsed once (nil: not modified)
	var last *answer        // the last page's, when fetched in full
	lastTotal := -1         // the last page's total, when not modified
	pages := 0
	next := first
	for page := 1; next != nil; page++ {
		if s.paged && page > s.page.MaxPages {
			return fail(fmt.Sprintf("more than %d pages (pagination maxPages)", s.page.MaxPages), nil)
		}
		if seenURLs[next.String()] {
			return fail(fmt.Sprintf("pagination loop: page %s was already fetched", next.RequestURI()), nil)
		}
		seenURLs[next.String()] = true
		memo := r.Memos[PageKey{s.id, page}]
		// The last page of a paged source is always fetched in full: more
		// pages can appear behind it without its body changing (a next link
		// in a header, a full last page), and only a fresh answer tells.
		if memo != nil && (memo.URL != next.String() || !memo.Conditional() || (s.paged && memo.Next == "")) {
			memo = nil
		}
		body, hdr, notModified, err := f.get(ctx, next, r, memo)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, err
			}
			return fail(err.Error(), err)
		}
		var scan pageScan
		res := PageResult{PageMemo: PageMemo{Source: s.id, Page: page, URL: next.String(), Total: -1}, NotModified: notModified, Conditional: memo != nil}
		var got []Entry
		if notModified {
			res.PageMemo = *memo
			res.Source, res.Page = s.id, page
			got = make([]Entry, len(memo.Keys))
			for i, k := range memo.Keys {
				got[i] = Entry{Key: k, Hash: memo.Hashes[i]}
			}
		} else {
			var ok bool
			if scan, ok = scanPage(body, s.items, s.keyFields, &prevScan); !ok {
				return fail("response is not JSON", nil)
			}
			if got, err = s.entries(body, &scan); err != nil {
				return fail(err.Error(), err)
			}
			prevScan = scan // its items are entries now
			res.ETag, res.LastModified = validatorsOf(hdr)
		}
		var a *answer
		if !notModified && s.checksMore() {
			a = &answer{hdr: hdr, body: body, scan: pageScan{top: scan.top}} // not its items: their arrays are reused
		}
		if page == 1 && s.checksMore() {
			firstAnswer = a
			firstTotal = res.Total
			if a != nil {
				firstTotal = s.total(a)
				res.Total = firstTotal
			}
			if firstTotal > len(got) && len(got) > 0 && len(body) > 0 {
				// Room for the reported total at once, rather than a doubling
				// series of copies; but never for more items than the bytes
				// the view may still read could hold, at this page's size
				// per item (a small answer claiming a huge total sizes
				// nothing).
				perItem := max(1, int64(len(body)/len(got)))
				if more := int64(firstTotal - len(entries)); more <= r.budget.Load()/perItem {
					entries = slices.Grow(entries, firstTotal) // entries is still empty: room for all
				}
			}
		}
		starts = append(starts, len(entries))
		entries = append(entries, got...)
		for i := starts[page-1]; i < len(entries); i++ {
			j, seen := keys.add(entries, i)
			if !seen {
				continue
			}
			// The page entries[j] came on: the last page starting at or before it.
			p, _ := slices.BinarySearch(starts, j+1)
			if key := entries[i].Key; p == page {
				return fail(fmt.Sprintf("duplicate key %q (twice on page %d)", key, page), nil)
			} else {
				// The pages overlap: the collection shifted between two
				// requests (or the API ignores the page parameter).
				return nil, nil, &shiftedError{fmt.Sprintf("key %q came on page %d and again on page %d", key, p, page)}
			}
		}
		last, lastTotal, pages = a, res.Total, page
		cur := next
		next = nil
		switch {
		case notModified:
			if res.Next != "" {
				if next, err = url.Parse(res.Next); err != nil {
					return fail("remembered next page URL: "+err.Error(), err)
				}
			}
		case s.paged:
			if next, err = f.nextPage(s, page, len(got), cur, first, body, &scan, hdr); err != nil {
				return fail(err.Error(), err)
			}
		}
		if !notModified {
			if next != nil {
				res.Next = next.String()
			}
			if res.PageMemo.Conditional() {
				// Remembered only for pages with validators: no other page
				// is ever asked for conditionally.
				res.Keys = make([]string, len(got))
				res.Hashes = make([]uint64, len(got))
				for i, e := range got {
					res.Keys[i], res.Hashes[i] = e.Key, e.Hash
				}
			}
		}
		results = append(results, res)
	}
	if !s.checksMore() {
		return entries, results, nil
	}
	if pages == 1 {
		last = firstAnswer
	}
	if last != nil {
		a := last
		lastTotal = s.total(a)
		// Remembered for when this page, the last, answers 304 next time.
		results[len(results)-1].Total = lastTotal
		if reason := s.unfollowed(a); reason != "" {
			return fail(reason+`; map its pagination (or say "pagination": {"type": "none"} if this is all)`, nil)
		}
	}
	if reason, shifted := s.moreThanReceived(lastTotal, firstTotal, len(entries)); shifted {
		return nil, nil, &shiftedError{reason}
	} else if reason != "" {
		return fail(reason+`; map its pagination (or say "pagination": {"type": "none"} if this is all)`, nil)
	}
	return entries, results, nil
}

// keySet finds a key a source produced twice. Keys are held by their
// 64-bit hash, pointing at the entry that holds it (no pointers for the
// collector to scan, a third of a string map's memory); a key whose hash
// another key holds goes to a map by the key itself.
type keySet struct {
	byHash map[uint64]int32
	exact  map[string]int32
}

// add notes entries[i]'s key, or returns the index of the entry that
// already holds it.
func (k *keySet) add(entries []Entry, i int) (int, bool) {
	if k.byHash == nil {
		k.byHash = make(map[uint64]int32, cap(entries)) // sized for the reported total, when entries is
	}
	key := entries[i].Key
	h := xxhash.Sum64String(key)
	j, held := k.byHash[h]
	switch {
	case !held:
		k.byHash[h] = int32(i)
		return 0, false
	case entries[j].Key == key:
		return int(j), true
	}
	if j, ok := k.exact[key]; ok {
		return int(j), true
	}
	if k.exact == nil {
		k.exact = map[string]int32{}
	}
	k.exact[key] = int32(i)
	return 0, false
}

// checksMore: the source's answers are checked for signs of more items
// than received (not for one whole value, nor for "pagination": "none").
func (s *source) checksMore() bool { return s.keyed && s.page.Type != "none" }

// answer is a page's headers and body, kept for the checks of a source's
// first and last pages; parse reads its top-level fields.
type answer struct {
	hdr  http.Header
	body []byte
	scan pageScan // the page's top-level members
}

// field follows a dotted path from the top level; false when a step is
// absent or not an object.
func (a *answer) field(path []string) (json.RawMessage, bool) {
	if a.scan.top == nil {
		return nil, false
	}
	raw, present, err := a.scan.lookup(a.body, path)
	return raw, err == nil && present
}

// total returns the count of all items an answer reports (X-Total-Count,
// the source's Total path, or a top-level count, total, totalCount,
// total_count or totalItems beside the items), or -1.
func (s *source) total(a *answer) int {
	if v := a.hdr.Get("X-Total-Count"); v != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
			return n
		}
	}
	paths := [][]string{s.totalPath}
	if s.totalPath == nil {
		if s.items == nil {
			return -1 // a bare array has nothing beside it
		}
		paths = [][]string{{"count"}, {"total"}, {"totalCount"}, {"total_count"}, {"totalItems"}}
	}
	for _, p := range paths {
		raw, present := a.field(p)
		if !present {
			continue
		}
		var n int
		if json.Unmarshal(raw, &n) == nil && n >= 0 {
			return n
		}
	}
	return -1
}

// unfollowed says why the last page shows that the source has more pages
// than its pagination follows, or "": a Link rel="next" that link
// pagination did not follow, or a next field that cursor or url pagination
// did not follow. Under the Reset Strategy the client would delete what is
// missing.
func (s *source) unfollowed(a *answer) string {
	if s.page.Type != "link" {
		if target := nextLink(a.hdr.Values("Link")); target != "" {
			return fmt.Sprintf("the answer has a Link header with rel=\"next\" (%s), but the source's pagination does not follow it", target)
		}
	}
	if s.page.Type != "cursor" && s.page.Type != "url" {
		for _, p := range [][]string{{"next"}, {"links", "next"}, {"_links", "next"}} {
			if raw, present := a.field(p); present && !emptyJSON(raw) {
				return fmt.Sprintf("the answer has a non-empty %q field, but the source's pagination does not follow it", strings.Join(p, "."))
			}
		}
	}
	return ""
}

// moreThanReceived says why the total the last page reports (-1: none)
// shows that the source holds more than was received, or "": a total other
// than the items received, or one that changed since the first page.
// shifted: a paged source's total disagrees, which another writer explains
// (the rest are mapping errors).
func (s *source) moreThanReceived(total, firstTotal, received int) (reason string, shifted bool) {
	switch {
	case total < 0:
		return "", false
	case s.paged && firstTotal >= 0 && total != firstTotal:
		return fmt.Sprintf("the reported total changed from %d to %d while the pages were read", firstTotal, total), true
	case s.paged && total != received:
		return fmt.Sprintf("the answer reports %d items in all, but %d were received", total, received), true
	case !s.paged && total > received:
		return fmt.Sprintf("the answer reports %d items in all, but %d were received", total, received), false
	}
	return "", false
}

// emptyJSON: null, "", false, {} or [].
func emptyJSON(raw json.RawMessage) bool {
	switch string(bytes.TrimSpace(raw)) {
	case "null", `""`, "false", "{}", "[]":
		return true
	}
	return false
}

// sourceURL renders the source's path for userID, escaping the value as one
// path segment or one query value.
func (f *Fetcher) sourceURL(s *source, userID string) (*url.URL, error) {
	p, q, hasQ := strings.Cut(s.pathTmpl, "?")
	p = strings.ReplaceAll(p, "{userID}", url.PathEscape(userID))
	pq := p
	if hasQ {
		pq += "?" + strings.ReplaceAll(q, "{userID}", url.QueryEscape(userID))
	}
	u, err := url.Parse(f.prefix + pq)
	if err != nil || u.Host != f.base.Host {
		return nil, fmt.Errorf("invalid URL for user %q", userID)
	}
	return u, nil
}

// get fetches u. With memo, it asks conditionally, and notModified reports
// a 304 (no body).
func (f *Fetcher) get(ctx context.Context, u *url.URL, r Request, memo *PageMemo) (body []byte, hdr http.Header, notModified bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, false, err
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
	if memo != nil {
		validators(req.Header, memo)
	}
	resp, err := f.upstream.Do(req)
	if err != nil {
		return nil, nil, false, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode == http.StatusNotModified && memo != nil {
		return nil, resp.Header, true, nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, nil, false, &StatusError{Status: resp.StatusCode, Path: u.RequestURI(), Location: resp.Header.Get("Location")}
	}
	left := r.budget.Load()
	var src io.Reader = io.LimitReader(resp.Body, max(left, 0)+min(1, math.MaxInt64-left)) // left+1, without overflow
	if r.Memory != nil {
		src = r.Memory.Reader(ctx, src)
	}
	if body, err = readAll(src, resp.ContentLength, left); err != nil {
		return nil, nil, false, fmt.Errorf("reading upstream response: %w", err)
	}
	if r.spent != nil {
		r.spent.Add(int64(len(body)))
	}
	if r.budget.Add(-int64(len(body))) < 0 {
		return nil, nil, false, fmt.Errorf("the client view is larger than %d bytes (all pages of all sources)", f.maxBody)
	}
	return body, resp.Header, false, nil
}

// readAll reads r to its end into one buffer of the announced length (when
// the answer announces one no larger than the bytes left to read), instead
// of a doubling series of buffers.
func readAll(r io.Reader, announced, left int64) ([]byte, error) {
	if announced < 0 || announced > left {
		return io.ReadAll(r)
	}
	// Grown as bytes arrive (and are charged to the memory budget), never
	// allocated ahead on the answer's word, but to end at its exact size.
	limit := int(announced) + 1 // +1: reading the end needs room
	b := make([]byte, 0, min(limit, 64<<10))
	for {
		if len(b) == limit {
			// Longer than announced (a lying header): go on the usual way.
			rest, err := io.ReadAll(r)
			return append(b, rest...), err
		}
		if len(b) == cap(b) {
			b = slices.Grow(b, min(2*cap(b), limit)-len(b))
		}
		n, err := r.Read(b[len(b):min(cap(b), limit)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// StatusError is a non-2xx answer to a view request.
type StatusError struct {
	Status   int
	Path     string // the page asked for (path and query)
	Location string // a redirect's target
}

func (e *StatusError) Error() string { return fmt.Sprintf("upstream answered %d", e.Status) }

// nextPage returns the next page's URL, or nil when this was the last page.
// A next-page reference that cannot be followed is an error, never the last
// page: under the Reset Strategy a truncated view deletes on the client
// every entity it lacks.
func (f *Fetcher) nextPage(s *source, page, items int, cur, first *url.URL, body []byte, scan *pageScan, hdr http.Header) (*url.URL, error) {
	switch s.page.Type {
	case "link":
		target := nextLink(hdr.Values("Link"))
		if target == "" {
			return nil, nil
		}
		return f.follow(cur, target, "next link")
	case "url":
		raw, present, err := scan.lookup(body, s.nextPath)
		if err != nil {
			return nil, fmt.Errorf("next URL field %q cannot be followed: %w", s.page.Next, err)
		}
		if !present || isNull(raw) {
			return nil, nil
		}
		var target string
		if err := json.Unmarshal(raw, &target); err != nil {
			return nil, fmt.Errorf("next URL field %q is not a string", s.page.Next)
		}
		if target == "" {
			return nil, nil
		}
		return f.follow(cur, target, "next URL")
	case "offset":
		if items < s.page.Limit {
			return nil, nil // a short page is the last
		}
		return withQuery(cur, s.page.Param, strconv.Itoa(atoi(cur.Query().Get(s.page.Param))+items)), nil
	case "page":
		if items == 0 || (s.page.Size > 0 && items < s.page.Size) {
			return nil, nil // an empty (or short) page is the last
		}
		return withQuery(cur, s.page.Param, strconv.Itoa(atoi(cur.Query().Get(s.page.Param))+1)), nil
	default: // cursor
		raw, present, err := scan.lookup(body, s.nextPath)
		if err != nil {
			return nil, fmt.Errorf("cursor field %q cannot be followed: %w", s.page.Next, err)
		}
		if !present {
			// The last page, or a typo in the mapping that shows only page
			// one forever: say so once per mapping load.
			if page == 1 && s.warnedAbsent.CompareAndSwap(false, true) {
				f.log.Warn("cursor field absent from the first page; is the mapping's pagination.next right?",
					"source", s.path, "field", s.page.Next)
			}
			return nil, nil
		}
		if isNull(raw) {
			return nil, nil
		}
		cursor, ok := scalar(raw)
		if !ok {
			return nil, fmt.Errorf("cursor field %q is not a string or number", s.page.Next)
		}
		if cursor == "" {
			return nil, nil
		}
		u := *first
		q := u.Query()
		q.Set(s.page.Param, cursor)
		u.RawQuery = q.Encode()
		return &u, nil
	}
}

// follow resolves a next-page reference against the page it came from and
// refuses one that leaves the upstream: the sidecar fetches nothing else.
func (f *Fetcher) follow(cur *url.URL, target, what string) (*url.URL, error) {
	u, err := cur.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("invalid %s %q", what, target)
	}
	if u.Scheme != f.base.Scheme || u.Host != f.base.Host {
		return nil, fmt.Errorf("%s %q points to another host", what, u.Redacted())
	}
	if u.User != nil {
		// Userinfo would make the sidecar send credentials of the API's
		// choosing (Authorization: Basic).
		return nil, fmt.Errorf("%s %q carries credentials", what, u.Redacted())
	}
	if prefix := strings.TrimSuffix(f.base.Path, "/"); prefix != "" && u.Path != prefix && !strings.HasPrefix(u.Path, prefix+"/") {
		return nil, fmt.Errorf("%s %q leaves the upstream's path prefix %s", what, u.Redacted(), prefix)
	}
	return u, nil
}

// firstPage adds what the first page of an offset or page source asks for.
func (s *source) firstPage(u *url.URL) *url.URL {
	switch s.page.Type {
	case "offset":
		u = withQuery(u, s.page.LimitParam, strconv.Itoa(s.page.Limit))
		return withQuery(u, s.page.Param, "0")
	case "page":
		if s.page.SizeParam != "" {
			u = withQuery(u, s.page.SizeParam, strconv.Itoa(s.page.Size))
		}
		return withQuery(u, s.page.Param, strconv.Itoa(s.start))
	}
	return u
}

// withQuery returns a copy of u with query parameter k set to v. The rest
// of the query stays byte for byte as the mapping wrote it: some APIs are
// strict about their filters' spelling.
func withQuery(u *url.URL, k, v string) *url.URL {
	c := *u
	var kept []string
	for _, kv := range strings.Split(c.RawQuery, "&") {
		name, _, _ := strings.Cut(kv, "=")
		if un, err := url.QueryUnescape(name); kv == "" || (err == nil && un == k) {
			continue
		}
		kept = append(kept, kv)
	}
	c.RawQuery = strings.Join(append(kept, url.QueryEscape(k)+"="+url.QueryEscape(v)), "&")
	return &c
}

// atoi reads a number this package wrote into a query.
func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// nextLink finds the target of rel="next" in Link header values (RFC 8288).
func nextLink(values []string) string {
	for _, v := range values {
		for v != "" {
			v = strings.TrimLeft(v, " \t,")
			if !strings.HasPrefix(v, "<") {
				return ""
			}
			end := strings.IndexByte(v, '>')
			if end < 0 {
				return ""
			}
			target := v[1:end]
			v = v[end+1:]
			// Parameters run to the next comma that is outside quotes.
			params, rest := splitLinkParams(v)
			v = rest
			for _, p := range strings.Split(params, ";") {
				k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
				if !strings.EqualFold(strings.TrimSpace(k), "rel") {
					continue
				}
				for _, rel := range strings.Fields(strings.Trim(strings.TrimSpace(val), `"`)) {
					if strings.EqualFold(rel, "next") {
						return target
					}
				}
			}
		}
	}
	return ""
}

func splitLinkParams(v string) (params, rest string) {
	inQuote := false
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '"':
			inQuote = !inQuote
		case ',':
			if !inQuote {
				return v[:i], v[i+1:]
			}
		}
	}
	return v, ""
}

// entries turns one page's body into entries.
func (s *source) entries(body []byte, scan *pageScan) ([]Entry, error) {
	if sel := jsonwalk.Trim(scan.selected); len(sel) > 0 && sel[0] == '[' && s.keyed {
		return s.scannedEntries(scan)
	}
	// Not an array of items (or one whole value): the path is walked again
	// for the exact error, or the value.
	selected := json.RawMessage(body)
	if s.items != nil {
		var err error
		if selected, err = selectPath(body, s.items); err != nil {
			return nil, err
		}
		if selected == nil {
			return nil, fmt.Errorf("items path %q not found in the response", strings.Join(s.items, "."))
		}
	}
	if !s.keyed {
		v := compact(selected)
		return []Entry{{Key: s.key[0].literal, Value: v, Hash: Hash(v)}}, nil
	}
	selected = jsonwalk.Trim(selected)
	if len(selected) == 0 || selected[0] != '[' {
		return nil, errors.New("selected value is not an array")
	}
	var out []Entry
	for item, spaced := range jsonwalk.Elements(selected) {
		key, err := s.keyOf(item)
		if err == nil {
			err = checkKey(key)
		}
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", len(out), err)
		}
		v := json.RawMessage(item)
		if spaced {
			v = compact(item)
		}
		out = append(out, Entry{Key: key, Value: v, Hash: Hash(v)})
	}
	return out, nil
}

// scannedEntries makes the entries of the items the scan found.
func (s *source) scannedEntries(scan *pageScan) ([]Entry, error) {
	out := make([]Entry, len(scan.items))
	nf := len(s.keyFields)
	for i, it := range scan.items {
		key, err := s.keyFrom(it.raw, scan.fields[i*nf:(i+1)*nf])
		if err == nil {
			err = checkKey(key)
		}
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		v := json.RawMessage(it.raw)
		if it.spaced {
			v = compact(it.raw)
		}
		out[i] = Entry{Key: key, Value: v, Hash: Hash(v)}
	}
	return out, nil
}

// keyFrom is keyOf with the item's top-level key fields already found by
// the scan; anything else (a nested field, a field absent or not a scalar)
// takes keyOf's walk, and its exact error.
func (s *source) keyFrom(item []byte, fields [][]byte) (string, error) {
	// Sized first, then written once: one allocation per key.
	n := 0
	for _, p := range s.key {
		if p.field == nil {
			n += len(p.literal)
			continue
		}
		v, ok := plainScalar(fields[p.first])
		if len(p.field) != 1 || !ok {
			return s.keyOf(item) // nested, absent, escaped or not a scalar
		}
		n += len(v)
	}
	var b strings.Builder
	b.Grow(n)
	for _, p := range s.key {
		if p.field == nil {
			b.WriteString(p.literal)
		} else {
			v, _ := plainScalar(fields[p.first])
			b.Write(v)
		}
	}
	return b.String(), nil
}

// plainScalar returns the key text of a non-empty string without escapes
// (valid UTF-8), a number or a bool, as bytes of the page; false for
// anything else, which scalar decides.
func plainScalar(raw []byte) ([]byte, bool) {
	raw = jsonwalk.Trim(raw)
	if len(raw) == 0 {
		return nil, false
	}
	switch raw[0] {
	case '"':
		inner := raw[1 : len(raw)-1]
		if len(inner) == 0 || bytes.IndexByte(inner, '\\') >= 0 || !utf8.Valid(inner) {
			return nil, false
		}
		return inner, true
	case '{', '[', 'n':
		return nil, false
	default: // number, true, false
		return raw, true
	}
}

// MaxKeyBytes bounds a client view key: the sidecar's record indexes keys,
// and nothing the Replicache client needs comes near it.
const MaxKeyBytes = 1024

// checkKey refuses keys the sidecar cannot keep: too long, or under the
// prefix reserved for its own entries (an item's field can make one).
func checkKey(key string) error {
	switch {
	case len(key) > MaxKeyBytes:
		return fmt.Errorf("key %.40q… is longer than %d bytes", key, MaxKeyBytes)
	case strings.HasPrefix(key, ReservedPrefix):
		return fmt.Errorf("key %q starts with %s, which is reserved for the sidecar's own entries", key, ReservedPrefix)
	}
	return nil
}

func (s *source) keyOf(item json.RawMessage) (string, error) {
	var b strings.Builder
	for _, p := range s.key {
		if p.field == nil {
			b.WriteString(p.literal)
			continue
		}
		raw, err := selectPath(item, p.field)
		if err != nil {
			return "", err
		}
		v, ok := scalar(raw)
		if raw == nil || !ok || v == "" {
			return "", fmt.Errorf("missing key field %q", strings.Join(p.field, "."))
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

// compact removes insignificant whitespace so values are stored and sent in
// their smallest form. raw must be valid JSON.
func compact(raw json.RawMessage) json.RawMessage {
	raw = jsonwalk.Trim(raw)
	if _, spaced := jsonwalk.SkipValue(raw, 0); !spaced {
		return raw
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}
