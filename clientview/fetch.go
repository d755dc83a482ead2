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
	// Plans say how to read each source, by its fingerprint: in full (the
	// default, for a source without one), by its changes, or not at all.
	Plans map[string]Plan
	// Pages, when set, is given each page's entries as soon as the page is
	// read and fits the pages before it: for an answer written while the
	// view is read (see PageSink).
	Pages PageSink

	budget *atomic.Int64 // bytes the fetch may still read
	spent  *atomic.Int64 // bytes this attempt at a source has read
	sinkMu *sync.Mutex   // the sources take turns at Pages
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
	if r.Pages != nil {
		r.sinkMu = &sync.Mutex{}
	}
	results := make([][]Entry, len(v.sources))
	pages := make([][]PageResult, len(v.sources))
	reads := make([]SourceResult, len(v.sources))
	errs := make([]error, len(v.sources))
	var wg sync.WaitGroup
	for i, s := range v.sources {
		plan := r.Plans[s.id]
		reads[i] = SourceResult{Source: s.id, Path: s.path, Mode: plan.Mode}
		if plan.Mode == Skip {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], pages[i], errs[i] = f.fetchSource(ctx, s, r, plan, &reads[i])
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
		return Result{Entries: results[0], Pages: pages[0], Sources: reads}, nil
	}
	n := 0
	for _, es := range results {
		n += len(es)
	}
	out := Result{Entries: make([]Entry, 0, n), Sources: reads}
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

// fetchSource fetches one source as plan says (in full or by its changes)
// and fills in what it read. A source whose pages shifted while they
// were read (another writer moved items between two pages) is fetched once
// more; if it shifts again the fetch fails with a *SourceError marked
// Shifted, which is worth retrying, unlike a mapping that does not fit.
// The pages of a read by changes are not reported: their URLs carry a
// bound that moves, so none is ever asked for conditionally again.
func (f *Fetcher) fetchSource(ctx context.Context, s *source, r Request, plan Plan, read *SourceResult) ([]Entry, []PageResult, error) {
	var sent *mark
	if plan.Mode == Delta && s.changes != nil {
		if m, err := s.changes.since(plan.Since); err == nil {
			sent = &m
			read.Sent = m.text
		}
	}
	if sent == nil {
		read.Mode = Full // no changes to read by, or no usable watermark
	}
	r.spent = &atomic.Int64{}
	es, pages, err := f.readSource(ctx, s, r, sent, read)
	read.Bytes += r.spent.Load()
	if err == nil && sent != nil {
		pages = nil
	}
	return es, pages, err
}

// readSource is fetchSource's read: the pages, and once more when they
// did not fit together. What the sink was given of the first read and the
// second lacks stays in the result when the sink says it sent it on: the
// client holds it.
func (f *Fetcher) readSource(ctx context.Context, s *source, r Request, sent *mark, read *SourceResult) ([]Entry, []PageResult, error) {
	es, pages, err := f.fetchPages(ctx, s, r, sent, read)
	var first *shiftedError
	if !errors.As(err, &first) {
		return es, pages, err
	}
	// The discarded attempt's bytes are no longer held: give them back.
	spent := r.spent.Swap(0)
	r.budget.Add(spent)
	read.Bytes += spent
	f.log.Info("client view source shifted while it was read; fetching it again", "source", s.path, "reason", first.reason)
	var kept []Entry
	if len(first.given) > 0 && r.again(s) {
		kept = first.given
	}
	r.Memos = nil // in full: a memo may be what does not fit
	es, pages, err = f.fetchPages(ctx, s, r, sent, read)
	var again *shiftedError
	switch {
	case err == nil && kept != nil:
		es = withKept(es, kept)
		read.Entries = len(es)
		return es, pages, nil
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

// withKept appends to es the entries of kept whose key es lacks.
func withKept(es, kept []Entry) []Entry {
	have := make(map[string]struct{}, len(es))
	for _, e := range es {
		have[e.Key] = struct{}{}
	}
	for _, e := range kept {
		if _, ok := have[e.Key]; !ok {
			es = append(es, e)
		}
	}
	return es
}

// shiftedError: the pages of one fetch of a source do not fit together.
// given is what the sink (Request.Pages) was given of them.
type shiftedError struct {
	reason string
	given  []Entry
}

func (e *shiftedError) Error() string { return e.reason }

// fetchPages fetches every page of a source once (by what changed since
// sent, when set). It returns the entries of every page and what each page
// answered, or an error and nothing: a *SourceError, a *shiftedError (the
// pages do not fit together, so fetchSource tries once more) or, when ctx
// ended, ctx's error. It notes in read whether a full read's pages are
// known to fit together.
//
// Pages are read one after the other (each may say where the next is),
// in a pipeline: the next page is asked for as soon as its URL is known,
// while this one is still being read (at once for a Link header or a next
// field before the items, peekNext; else once the page is scanned); and
// while one page is scanned, the page before it is checked against the
// others and handed on (pageTaker, on a goroutine of its own). So the
// upstream's answer, the scan and the rest overlap; one request per source
// is still in flight at a time, and errors come out as if the pages were
// read one by one (an earlier page's first).
func (f *Fetcher) fetchPages(ctx context.Context, s *source, r Request, sent *mark, read *SourceResult) ([]Entry, []PageResult, error) {
	first, err := f.sourceURL(s, r.UserID)
	if err != nil {
		return nil, nil, s.fail(err.Error(), err)
	}
	if sent != nil {
		first = s.changes.filtered(first, sent.text)
	}
	first = s.firstPage(first)
	t := &pageTaker{s: s, r: r, sent: sent}
	var (
		seen  = map[string]bool{} // the URLs fetched
		reuse pageScan            // the last page's scan, whose arrays the next one reuses
		// For the signs of more items than received (s.checksMore): the
		// totals the first and the last page report (-1: none), and the
		// last page's answer (nil when it answered 304).
		firstTotal, lastTotal = -1, -1
		last                  *answer
		ahead                 *pageGet // the next page, asked for early
	)
	defer func() { ahead.discard(r) }()
	// aheadOf asks for u, page number page, unless it will not be fetched.
	aheadOf := func(page int, u *url.URL) {
		if u != nil && ahead == nil && !(s.paged && page > s.page.MaxPages) && !seen[u.String()] {
			ahead = f.start(ctx, s, r, page, u)
		}
	}
	pages := t.run()
	// stop ends the taker and returns the first error: the taker's (it
	// was of an earlier page), else err.
	stop := func(err error) ([]Entry, []PageResult, error) {
		if terr := t.stop(pages); terr != nil {
			return nil, nil, terr
		}
		return nil, nil, err
	}
	for page, next := 1, first; next != nil && !t.failed.Load(); page++ {
		switch {
		case s.paged && page > s.page.MaxPages:
			return stop(s.fail(fmt.Sprintf("more than %d pages (pagination maxPages)", s.page.MaxPages), nil))
		case seen[next.String()]:
			return stop(s.fail(fmt.Sprintf("pagination loop: page %s was already fetched", next.RequestURI()), nil))
		}
		seen[next.String()] = true
		read.Requests++
		g := ahead
		ahead = nil
		if g == nil || g.url != next.String() {
			g.discard(r) // not the page the answer leads to after all
			g = f.start(ctx, s, r, page, next)
		}
		g.wait()
		if g.err == nil && !g.notModified {
			aheadOf(page+1, s.peekNext(f, g.body, g.hdr, next, first))
		}
		p, err := f.readPage(ctx, s, page, next, g, &reuse)
		if err != nil {
			return stop(err)
		}
		if s.checksMore() {
			last = p.answer()
			if page == 1 {
				if last != nil {
					p.res.Total = s.total(last)
				}
				firstTotal = p.res.Total // a 304's is the remembered one
				// Before the taker has the first page: it is the taker's then.
				t.collected.reserve(firstTotal, len(p.entries), len(p.body), r.budget.Load())
			}
			lastTotal = p.res.Total
		}
		cur := next
		next, err = f.pageAfter(s, page, p, cur, first)
		if err == nil {
			aheadOf(page+1, next)
		}
		pages <- takenPage{p: p, page: page, next: next, nextErr: err}
	}
	if terr := t.stop(pages); terr != nil {
		return nil, nil, terr
	}
	// What the source holds: the items read but those its changes say
	// are deleted.
	done := func() ([]Entry, []PageResult, error) {
		es := t.collected.entries
		if s.changes != nil {
			es = t.changes.finish(es, read)
		}
		read.Entries = len(es)
		return es, t.results, nil
	}
	// One answer, or cursor (keyset) pages, cannot skip an item; other
	// pages can, when a writer moves items between two requests, unless a
	// reported total matched what was read.
	read.Provable = !s.paged || s.page.Type == "cursor"
	if !s.checksMore() {
		return done()
	}
	if last != nil {
		lastTotal = s.total(last)
		// Remembered for when this page, the last, answers 304 next time.
		t.results[len(t.results)-1].Total = lastTotal
		if reason := s.unfollowed(last); reason != "" {
			return nil, nil, s.fail(reason+mapPagination, nil)
		}
	}
	if reason, shifted := s.moreThanReceived(lastTotal, firstTotal, len(t.collected.entries)); shifted {
		return nil, nil, &shiftedError{reason: reason, given: t.changes.without(t.collected.entries[:t.given])}
	} else if reason != "" {
		return nil, nil, s.fail(reason+mapPagination, nil)
	}
	read.Provable = read.Provable || firstTotal >= 0 && lastTotal >= 0
	return done()
}

// pageTaker is fetchPages' second stage: it takes each page read, in
// order, checks it against the pages before (a key twice), reads what
// the source's changes say of it, hands it to the sink and keeps it.
type pageTaker struct {
	s    *source
	r    Request
	sent *mark

	collected pageEntries
	results   []PageResult
	changes   changeRead
	given     int // collected.entries[:given] went to r.Pages

	failed atomic.Bool // err is set: fetchPages reads no more pages
	err    error       // read once the taker has stopped
	done   chan struct{}
}

// takenPage is one page for the taker: the page read, and the URL of the
// next (or why it cannot be followed).
type takenPage struct {
	p       *fetchedPage
	page    int
	next    *url.URL
	nextErr error
}

// run starts the taker on its own goroutine and returns where the pages
// go.
func (t *pageTaker) run() chan<- takenPage {
	pages := make(chan takenPage, 1)
	t.done = make(chan struct{})
	go func() {
		defer close(t.done)
		for tp := range pages {
			if t.err == nil {
				if t.err = t.take(tp); t.err != nil {
					t.failed.Store(true)
				}
			}
		}
	}()
	return pages
}

// stop waits for the taker to take every page sent and returns its error.
func (t *pageTaker) stop(pages chan<- takenPage) error {
	close(pages)
	<-t.done
	return t.err
}

func (t *pageTaker) take(tp takenPage) error {
	s, p := t.s, tp.p
	if err := t.collected.add(s, tp.page, p.entries); err != nil {
		return withGiven(err, t.changes.without(t.collected.entries[:t.given]))
	}
	if tp.nextErr != nil {
		return tp.nextErr
	}
	at := len(t.collected.entries) - len(p.entries)
	kept := t.collected.entries[at:]
	if s.changes != nil {
		kept = t.changes.page(s.changes, t.sent, kept, at)
	}
	if t.r.Pages != nil {
		if err := t.r.give(s, kept, t.collected.entries[at:]); err != nil {
			return err
		}
		t.given = len(t.collected.entries)
	}
	p.remember(tp.next)
	t.results = append(t.results, p.res)
	return nil
}

// mapPagination ends the reason of a source that shows more items than its
// pagination follows.
const mapPagination = `; map its pagination (or say "pagination": {"type": "none"} if this is all)`

// fail returns the *SourceError of s for reason.
func (s *source) fail(reason string, err error) error {
	return &SourceError{Source: s.path, Reason: reason, Err: err}
}

// fetchedPage is one page of a source, fetched and turned into entries.
type fetchedPage struct {
	res     PageResult // what the page answered; res.Next and res.Keys are filled in by remember
	entries []Entry
	// The answer fetched in full (all nil after a 304). scan's arrays of
	// items are reused by the next page's scan: nothing of it may be kept
	// but its top-level members.
	hdr  http.Header
	body []byte
	scan pageScan
}

// pageGet is one page's GET, running on its own goroutine so that it can
// start before the page before it is read (fetchPages).
type pageGet struct {
	url    string
	memo   *PageMemo // the page was asked for conditionally with it
	cancel context.CancelFunc
	done   chan struct{}
	// Set when done is closed.
	body        []byte
	hdr         http.Header
	notModified bool
	err         error
}

// start asks for page number page of s at u (conditionally, when r.Memos
// holds a memo the page can be asked for with).
func (f *Fetcher) start(ctx context.Context, s *source, r Request, page int, u *url.URL) *pageGet {
	gctx, cancel := context.WithCancel(ctx)
	g := &pageGet{url: u.String(), memo: s.memoFor(r.Memos, page, u), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		g.body, g.hdr, g.notModified, g.err = f.get(gctx, u, r, g.memo)
	}()
	return g
}

// wait waits for the answer.
func (g *pageGet) wait() {
	<-g.done
	g.cancel()
}

// discard ends a GET whose page will not be read (nil: none), and gives
// back to the fetch's byte budget what it read.
func (g *pageGet) discard(r Request) {
	if g == nil {
		return
	}
	g.cancel()
	<-g.done
	if n := int64(len(g.body)); n > 0 {
		r.budget.Add(n)
		if r.spent != nil {
			r.spent.Add(-n)
		}
	}
}

// readPage turns the answer to page number page of s at u into entries:
// the answer's items, or the memo's keys and hashes after a 304. reuse is
// the last page's scan, whose arrays the scan of this page takes over.
// Its errors are fetchPages'.
func (f *Fetcher) readPage(ctx context.Context, s *source, page int, u *url.URL, g *pageGet, reuse *pageScan) (*fetchedPage, error) {
	if err := g.err; err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, s.fail(err.Error(), err)
	}
	memo, body, hdr := g.memo, g.body, g.hdr
	p := &fetchedPage{res: PageResult{
		PageMemo:    PageMemo{Source: s.id, Page: page, URL: u.String(), Total: -1},
		NotModified: g.notModified,
		Conditional: memo != nil,
	}}
	if g.notModified {
		p.res.PageMemo = *memo
		p.res.Source, p.res.Page = s.id, page
		p.entries = make([]Entry, len(memo.Keys))
		for i, k := range memo.Keys {
			p.entries[i] = Entry{Key: k, Hash: memo.Hashes[i]}
		}
		return p, nil
	}
	scan, ok := scanPage(body, s.items, s.keyFields, reuse)
	if !ok {
		return nil, s.fail("response is not JSON", nil)
	}
	var err error
	if p.entries, err = s.entries(body, &scan); err != nil {
		return nil, s.fail(err.Error(), err)
	}
	*reuse = scan // its items are entries now
	p.hdr, p.body, p.scan = hdr, body, scan
	p.res.ETag, p.res.LastModified = validatorsOf(hdr)
	return p, nil
}

// memoFor returns the memo to ask for page of s at u with: one made for
// the same URL, with validators, and not of the last page of a paginated
// source. That one is always fetched in full: more pages can appear behind
// it without its body changing (a next link in a header, a full last
// page), and only a fresh answer tells.
func (s *source) memoFor(memos map[PageKey]*PageMemo, page int, u *url.URL) *PageMemo {
	memo := memos[PageKey{s.id, page}]
	if memo == nil || memo.URL != u.String() || !memo.Conditional() || (s.paged && memo.Next == "") {
		return nil
	}
	return memo
}

// answer returns the page's answer for the checks of a source's first and
// last pages: its headers, body and top-level members; nil after a 304.
func (p *fetchedPage) answer() *answer {
	if p.res.NotModified {
		return nil
	}
	return &answer{hdr: p.hdr, body: p.body, scan: pageScan{top: p.scan.top}}
}

// pageAfter returns the URL of the page after p, which is page number page
// at cur; nil when p is the last. After a 304 it is the one remembered;
// otherwise the source's pagination finds it in the answer.
func (f *Fetcher) pageAfter(s *source, page int, p *fetchedPage, cur, first *url.URL) (*url.URL, error) {
	switch {
	case p.res.NotModified:
		if p.res.Next == "" {
			return nil, nil
		}
		next, err := url.Parse(p.res.Next)
		if err != nil {
			return nil, s.fail("remembered next page URL: "+err.Error(), err)
		}
		return next, nil
	case s.paged:
		next, err := f.nextPage(s, page, len(p.entries), cur, first, p.body, &p.scan, p.hdr)
		if err != nil {
			return nil, s.fail(err.Error(), err)
		}
		return next, nil
	}
	return nil, nil
}

// remember completes the memo of a page fetched in full: where it leads,
// and, when it has validators, its keys and hashes (no other page is ever
// asked for conditionally). A 304's memo is the stored one, unchanged.
func (p *fetchedPage) remember(next *url.URL) {
	if p.res.NotModified {
		return
	}
	if next != nil {
		p.res.Next = next.String()
	}
	if p.res.PageMemo.Conditional() {
		p.res.Keys = make([]string, len(p.entries))
		p.res.Hashes = make([]uint64, len(p.entries))
		for i, e := range p.entries {
			p.res.Keys[i], p.res.Hashes[i] = e.Key, e.Hash
		}
	}
}

// pageEntries gathers the entries of a source's pages, in order, and finds
// a key that comes twice.
type pageEntries struct {
	entries []Entry
	starts  []int // index in entries of each page's first entry
	keys    keySet
}

// reserve makes room for the total of items the first page reports at
// once, rather than a doubling series of copies, when it is above the
// page's own; but never for more items than the bytes the view may still
// read (budget) could hold, at this page's size per item: a small answer
// claiming a huge total sizes nothing. It must come before the first add,
// which sizes the key set by it.
func (pe *pageEntries) reserve(total, items, pageBytes int, budget int64) {
	if total <= items || items == 0 || pageBytes == 0 {
		return
	}
	perItem := max(1, int64(pageBytes/items))
	if more := int64(total - len(pe.entries)); more <= budget/perItem {
		pe.entries = slices.Grow(pe.entries, total)
	}
}

// add appends the entries of page (numbered from 1, in order). A key twice
// on this page fails the source; a key that came on an earlier page too
// means the pages overlap: the collection shifted between two requests
// (or the API ignores the page parameter), a *shiftedError.
func (pe *pageEntries) add(s *source, page int, es []Entry) error {
	pe.starts = append(pe.starts, len(pe.entries))
	pe.entries = append(pe.entries, es...)
	for i := pe.starts[page-1]; i < len(pe.entries); i++ {
		j, seen := pe.keys.add(pe.entries, i)
		if !seen {
			continue
		}
		// The page entries[j] came on: the last page starting at or before it.
		p, _ := slices.BinarySearch(pe.starts, j+1)
		key := pe.entries[i].Key
		if p == page {
			return s.fail(fmt.Sprintf("duplicate key %q (twice on page %d)", key, page), nil)
		}
		return &shiftedError{reason: fmt.Sprintf("key %q came on page %d and again on page %d", key, p, page)}
	}
	return nil
}
