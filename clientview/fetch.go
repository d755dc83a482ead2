package clientview

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
