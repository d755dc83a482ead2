package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

// pullRequest is a Replicache PullRequest (v1).
type pullRequest struct {
	PullVersion   *int            `json:"pullVersion"`
	ProfileID     string          `json:"profileID"`
	ClientGroupID string          `json:"clientGroupID"`
	Cookie        json.RawMessage `json:"cookie"`
	SchemaVersion string          `json:"schemaVersion"`

	cookie    store.Cookie // parsed from Cookie by validate
	exhausted bool         // the cookie's order cannot be exceeded (validate)
}

func (p *pullRequest) version() *int         { return p.PullVersion }
func (p *pullRequest) clientGroupID() string { return p.ClientGroupID }

func (p *pullRequest) validate() *httpError {
	if herr := validID("clientGroupID", p.ClientGroupID); herr != nil {
		return herr
	}
	cookie, err := store.ParseCookie(p.Cookie)
	if errors.Is(err, store.ErrCookieExhausted) {
		p.exhausted = true // answered once the caller is known
		return nil
	}
	if err != nil {
		return errorf(http.StatusBadRequest, "BadRequest", "%v", err)
	}
	p.cookie = cookie
	return nil
}

// pullView is what the pulls answered from one fetch share.
type pullView struct {
	epoch   string           // the database's
	group   string           // the group's tag (store.GroupTag)
	lmids   map[string]int64 // every client of the group
	entries []clientview.Entry
	// change is the view compared with the group's record (diff mode);
	// nil in reset mode.
	change *store.ViewChange
}

// pullAnswer is one pull's answer: the shared view, as a reset or as a
// diff from the version the pull's cookie names.
type pullAnswer struct {
	*pullView
	order int64 // the new cookie's order; 0: the pull's cookie cannot grow
	diff  bool  // answer the entries changed since version since, not a reset
	since int64
	// lost: the cookie names a version of the group's record, or an order,
	// this database never reached: it went back in time (restored from a
	// backup). The client must start over.
	lost bool
}

func (s *Sidecar) handlePull(w http.ResponseWriter, r *http.Request) {
	var req pullRequest
	c, ok := s.begin(w, r, "pull", &req, s.upstream.View)
	if !ok {
		return
	}
	defer c.mem.Release()
	if req.exhausted {
		c.log.Warn("pull with a cookie that cannot grow any further; the client starts over")
		writeClientStateNotFound(w)
		return
	}
	ctx := r.Context()
	if s.tracer != nil { // the view pages' spans name the group
		ctx = upstream.WithSpanAttributes(ctx, attribute.String("replicache.client_group", req.ClientGroupID))
	}
	ans, err := s.pull(ctx, c, &req)
	if err != nil {
		s.failPull(w, c.log, err, req.ClientGroupID)
		return
	}
	if ans.lost {
		c.log.Warn("pull with a cookie this group was issued by another database, or by this one in a history it no longer has (recreated, or restored from a backup); the client starts over",
			"cookie_db", req.cookie.Epoch, "db", ans.epoch, "cookie_order", req.cookie.Order, "cookie_version", req.cookie.Version)
		writeClientStateNotFound(w)
		return
	}
	s.writePull(w, c, ans)
}

// pullFlight is one pull's view fetch that other pulls of the same client
// group, user and credentials may join until it is sealed: right after the
// fetch, before the cookies are issued. A pull that joins arrived before
// the flight's transaction ended, and that transaction held the group's
// lock from before it read the last mutation ids until after the view was
// fetched; so every push that had completed when the joiner arrived is in
// both, and the joiner's answer is exactly as correct as its own fetch
// would have been. Each pull still gets its own cookie, issued in the same
// transaction, strictly increasing for the group, and its own patch: a
// diff from its own cookie's version of the group's record, or a reset.
type pullFlight struct {
	// base is the leader's cookie. A fetch may be conditional (pages
	// answered 304 bring no values) only when the leader's cookie holds the
	// record's current version, and only pulls with the same cookie may
	// then join: so pulls whose cookie names a record join only a flight
	// whose leader's cookie is the same, or names none.
	base store.Cookie
	// gen is the poke hub's generation when the flight began: a pull that
	// comes after a later poke (of a change made elsewhere, maybe after
	// this fetch began) does not join it.
	gen    uint64
	done   chan struct{}
	sealed bool         // guarded by Sidecar.flightsMu
	riders []*pullRider // guarded by Sidecar.flightsMu until sealed
	ans    pullAnswer   // the leader's; set before done closes
	err    error
}

type pullRider struct {
	cookie store.Cookie // the rider's
	ans    pullAnswer   // set before the flight's done closes
}

// pull answers req from its own fetch, or from a running one it may join.
func (s *Sidecar) pull(ctx context.Context, c *call, req *pullRequest) (pullAnswer, error) {
	key := s.flightKey(req.ClientGroupID, c)
	s.flightsMu.Lock()
	gen := s.hub.Generation()
	if f := s.flights[key]; f != nil && !f.sealed && f.gen == gen &&
		(f.base.Record == 0 || f.base.Record == req.cookie.Record && f.base.Version == req.cookie.Version) {
		done, err := s.turns.Ride(req.ClientGroupID)
		if err != nil {
			s.flightsMu.Unlock()
			return pullAnswer{}, err
		}
		defer done()
		rider := &pullRider{cookie: req.cookie}
		f.riders = append(f.riders, rider)
		s.flightsMu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return pullAnswer{}, ctx.Err()
		}
		if f.err != nil {
			return pullAnswer{}, f.err
		}
		if rider.ans.order == 0 && !rider.ans.lost {
			return pullAnswer{}, store.ErrCookieExhausted
		}
		s.metrics.pullsMerged.Inc()
		return rider.ans, nil
	}
	f := &pullFlight{base: req.cookie, gen: gen, done: make(chan struct{})}
	s.flights[key] = f
	s.flightsMu.Unlock()
	// The work goes on if this pull's own client leaves: others may wait
	// for it. The turn, the lock and every upstream call are bounded.
	f.ans, f.err = s.pullLocked(context.WithoutCancel(ctx), c, req, func() []*pullRider { return s.seal(key, f) })
	s.seal(key, f) // when it failed before sealing
	close(f.done)
	if f.err == nil && f.ans.order == 0 && !f.ans.lost {
		return pullAnswer{}, store.ErrCookieExhausted
	}
	return f.ans, f.err
}

// seal closes f to new riders and returns those it has.
func (s *Sidecar) seal(key string, f *pullFlight) []*pullRider {
	s.flightsMu.Lock()
	defer s.flightsMu.Unlock()
	f.sealed = true
	if s.flights[key] == f {
		delete(s.flights, key)
	}
	return f.riders
}

// flightKey: pulls may share a fetch only with the same client group, user
// and forwarded credentials (a token's scope may narrow what the API shows).
func (s *Sidecar) flightKey(groupID string, c *call) string {
	var b strings.Builder
	b.WriteString(groupID)
	b.WriteByte(0)
	b.WriteString(c.userID)
	for _, name := range s.cfg.ForwardHeaders {
		for _, v := range c.fwd.Values(name) {
			b.WriteByte(0)
			b.WriteString(v)
		}
	}
	return b.String()
}

// pullLocked builds the answer while holding the group's lock: the view is
// fetched between reading the last mutation ids and issuing the cookie, so
// no push of the group can slip in between. seal, called once the view is
// fetched, returns the pulls that joined; each gets its cookie and its
// patch here too. In diff mode the view is compared with the group's
// record, and the record's change is written with the cookies.
func (s *Sidecar) pullLocked(ctx context.Context, c *call, req *pullRequest, seal func() []*pullRider) (pullAnswer, error) {
	mapping := s.mapping()
	view := &pullView{}
	var ans pullAnswer
	err := s.locked(ctx, req.ClientGroupID, c.userID, "", func(g *store.GroupTx) error {
		var err error
		if view.lmids, err = g.LastMutationIDs(ctx); err != nil {
			return err
		}
		before, beforeOrder := g.Record(), g.CookieOrder()
		view.epoch, view.group = g.Epoch(), store.GroupTag(req.ClientGroupID)
		var stored []store.ViewPage
		var memos map[clientview.PageKey]*clientview.PageMemo
		if s.cfg.PatchMode == "diff" {
			// Conditional GETs only when this pull (and so every pull that
			// may join it: same cookie) holds the record's current version:
			// a page answered 304 brings no values, and none is needed.
			ck := req.cookie
			conditional := before.ID != 0 && ck.Epoch == g.Epoch() && ck.Group == view.group &&
				ck.Record == before.ID && ck.Version == before.Version
			if stored, err = g.ViewPages(ctx, conditional); err != nil {
				return err
			}
			if conditional {
				memos = pageMemos(stored)
			}
		}
		b := &pullBuild{s: s, c: c, g: g, req: req, view: view, mapping: mapping, stored: stored, seal: seal,
			before: before, beforeOrder: beforeOrder}
		for {
			retry, err := b.run(ctx, memos)
			if err != nil {
				return err
			}
			if !retry {
				break
			}
			// What the remembered pages stood for was not enough (or did not
			// fit): fetch everything in full, once.
			c.log.Info("fetching the client view again without conditional requests", "group", req.ClientGroupID)
			memos = nil
		}
		orders, err := g.IssueCookies(ctx, b.bases, view.change, b.pages)
		if err != nil {
			return err
		}
		for i := range b.answers {
			b.answers[i].order = orders[i]
			if i == 0 {
				ans = b.answers[0]
			} else {
				b.riders[i-1].ans = b.answers[i]
			}
		}
		// The transaction still commits when this pull's own cookie cannot
		// grow (order 0), for the riders' cookies.
		return nil
	})
	if err == nil && view.change != nil {
		s.metrics.recordBytes.Observe(float64(view.change.Bytes))
	}
	return ans, err
}

// addRejections appends an entry per recent rejection of the group's
// clients, under the reserved prefix, so the app can say why a change was
// dropped (SIDECAR_EXPOSE_REJECTIONS).
func (s *Sidecar) addRejections(ctx context.Context, g *store.GroupTx, entries []clientview.Entry) ([]clientview.Entry, error) {
	rs, err := g.RecentRejections(ctx, s.cfg.RejectionTTL)
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		var status any
		if r.Status != 0 {
			status = r.Status
		}
		v, err := json.Marshal(map[string]any{
			"clientID": r.ClientID, "mutationID": r.MutationID, "mutator": r.Mutator,
			"status": status, "reason": r.Reason, "time": r.At.UTC().Format(time.RFC3339Nano),
		})
		if err != nil {
			return nil, err
		}
		entries = append(entries, clientview.Entry{
			Key:   clientview.ReservedPrefix + "rejection/" + r.ClientID + "/" + strconv.FormatInt(r.MutationID, 10),
			Value: v, Hash: clientview.Hash(v),
		})
	}
	return entries, nil
}

// pullBuild is one pull's view, built under the group's lock: what it
// needs, and what it works out for every pull answered from it.
type pullBuild struct {
	s           *Sidecar
	c           *call
	g           *store.GroupTx
	req         *pullRequest
	view        *pullView
	mapping     *Mapping
	stored      []store.ViewPage
	seal        func() []*pullRider
	before      store.ViewRecord
	beforeOrder int64

	riders  []*pullRider
	answers []pullAnswer // but their cookie orders
	bases   []int64      // the orders to issue cookies above, per answer
	pages   *store.PageWrites
}

// run fetches the view (conditionally, with memos), lets the riders in,
// and works out every pull's answer but its cookie order, and what to
// write. retry: the fetch used memos and either failed at a source or left
// an answer without a value it must put; the caller fetches again in full.
func (b *pullBuild) run(ctx context.Context, memos map[clientview.PageKey]*clientview.PageMemo) (retry bool, err error) {
	s, c, view := b.s, b.c, b.view
	res, err := s.fetcher.FetchResult(ctx, b.mapping.View, clientview.Request{UserID: c.userID, Header: c.fwd, Memory: c.mem, Memos: memos})
	if err != nil {
		var se *clientview.SourceError
		return memos != nil && ctx.Err() == nil && errors.As(err, &se), err
	}
	view.entries = res.Entries
	b.riders = b.seal()
	if s.cfg.ExposeRejections {
		if view.entries, err = s.addRejections(ctx, b.g, view.entries); err != nil {
			return false, err
		}
	}
	cookies := make([]store.Cookie, 1+len(b.riders))
	cookies[0] = b.req.cookie
	for i, r := range b.riders {
		cookies[i+1] = r.cookie
	}
	versions := make([]int64, len(cookies))
	for i, ck := range cookies {
		versions[i] = ck.Version
	}
	if s.cfg.PatchMode == "diff" {
		es := view.entries
		view.change, err = b.g.CompareView(ctx, len(es), func(i int) (string, uint64) { return es[i].Key, es[i].Hash },
			versions, func(n int64) error { return c.mem.Grow(ctx, n) })
		if err != nil {
			return false, err
		}
		b.pages = s.pageWrites(b.stored, res.Pages)
	}
	b.answers = make([]pullAnswer, len(cookies))
	b.bases = make([]int64, len(cookies))
	for i, ck := range cookies {
		a := pullAnswer{pullView: view}
		a.lost, a.diff = view.classify(ck, b.before, b.beforeOrder)
		if a.diff {
			a.since = ck.Version
		}
		if !a.lost && !view.complete(a) {
			if memos != nil {
				return true, nil
			}
			return false, fmt.Errorf("pull answer would need values the fetch did not bring (cookie version %d, record %+v)", ck.Version, b.before)
		}
		// A lost cookie's order is not one this group issued: it must not
		// raise the group's order, or the next tab holding the same cookie
		// would no longer be recognised as lost.
		if !a.lost {
			b.bases[i] = ck.Order
		}
		b.answers[i] = a
	}
	return false, nil
}

// classify says how to answer a pull with cookie ck, given the group's
// record and last cookie order before this pull: a diff from the
// cookie's version, a reset (neither), or lost: ClientStateNotFound, for a
// cookie this group was issued by a database that is not this one, or by
// this one in a history it no longer has (restored from a backup: an order
// or record version it never reached, or one it reached differently). A
// cookie issued to another group (a forked group's hand-me-down) is never
// lost: it gets a reset.
func (v *pullView) classify(ck store.Cookie, before store.ViewRecord, beforeOrder int64) (lost, diff bool) {
	ours := ck.Group == v.group
	switch {
	case ck.Epoch != "" && ck.Epoch != v.epoch:
		return ours, false
	case !ours:
		return false, false
	case ck.Order > beforeOrder:
		return true, false
	case v.change == nil || ck.Record == 0:
		return false, false
	case ck.Record != before.ID, v.change.Foreign(before, ck.Record, ck.Version, ck.Tag):
		return true, false
	}
	return false, v.change.Covers(ck.Record, ck.Version, ck.Tag)
}

// complete reports whether every entry a would put has its value (entries
// of pages answered 304 have none).
func (v *pullView) complete(a pullAnswer) bool {
	for i, e := range v.entries {
		if e.Value == nil && (!a.diff || v.change.Versions[i] > a.since) {
			return false
		}
	}
	return true
}

// pageMemos turns the stored view pages into the fetcher's memos.
func pageMemos(stored []store.ViewPage) map[clientview.PageKey]*clientview.PageMemo {
	out := make(map[clientview.PageKey]*clientview.PageMemo, len(stored))
	for _, p := range stored {
		out[clientview.PageKey{Source: p.Source, Page: p.Page}] = &clientview.PageMemo{
			Source: p.Source, Page: p.Page, URL: p.URL, ETag: p.ETag, LastModified: p.LastModified,
			Next: p.Next, Total: p.Total, Keys: p.Keys, Hashes: p.Hashes,
		}
	}
	return out
}

// pageWrites says which remembered pages a fetch changes: pages fetched in
// full with validators whose answer differs from the stored one are
// written, pages without validators (or no longer fetched) are forgotten,
// pages answered 304 stay as they are. It counts the conditional requests.
func (s *Sidecar) pageWrites(stored []store.ViewPage, fetched []clientview.PageResult) *store.PageWrites {
	old := make(map[store.PageKey]store.ViewPage, len(stored))
	for _, p := range stored {
		old[store.PageKey{Source: p.Source, Page: p.Page}] = p
	}
	w := &store.PageWrites{}
	for _, p := range fetched {
		if p.Conditional {
			result := "miss"
			if p.NotModified {
				result = "hit"
			}
			s.metrics.conditional.WithLabelValues(result).Inc()
		}
		k := store.PageKey{Source: p.Source, Page: p.Page}
		prev, had := old[k]
		delete(old, k)
		switch {
		case p.NotModified:
		case !p.PageMemo.Conditional() || !storableURL(p.URL) || !storableURL(p.Next):
			if had {
				w.Drop = append(w.Drop, k)
			}
		default:
			d := p.Digest()
			if had && prev.URL == p.URL && prev.ETag == p.ETag && prev.LastModified == p.LastModified && prev.Total == p.Total && prev.Digest == d {
				continue
			}
			w.Put = append(w.Put, store.ViewPage{Source: p.Source, Page: p.Page, URL: p.URL, ETag: p.ETag, LastModified: p.LastModified,
				Next: p.Next, Total: p.Total, Digest: d, Keys: p.Keys, Hashes: p.Hashes})
		}
	}
	for k := range old {
		w.Drop = append(w.Drop, k)
	}
	return w
}

// storableURL: a page URL the remembered pages can keep (a Postgres text:
// valid UTF-8 without NUL, and not absurdly long). Pages whose URL is not
// are simply fetched in full.
func storableURL(u string) bool {
	return len(u) <= 8192 && utf8.ValidString(u) && !strings.ContainsRune(u, 0)
}

// failPull answers a pull that could not be built: the upstream was
// suspended or could not give the view (502 naming the source), or the
// bookkeeping failed.
func (s *Sidecar) failPull(w http.ResponseWriter, log *slog.Logger, err error, groupID string) {
	var se *clientview.SourceError
	var st *clientview.StatusError // the upstream's answer to a page, if that is what failed
	errors.As(err, &st)
	switch {
	case errors.Is(err, store.ErrCookieExhausted):
		log.Warn("the group's cookie cannot grow any further; the client starts over")
		writeClientStateNotFound(w)
	case errors.Is(err, upstream.ErrCircuitOpen):
		s.fail(w, log, upstreamSuspended(s.upstream.RetryAfter()))
	case errors.Is(err, budget.ErrBusy):
		s.metrics.budgetRefusals.WithLabelValues("pull").Inc()
		s.fail(w, log, budgetError(err, "client view"))
	case errors.As(err, new(*budget.TooLargeError)):
		// Not the upstream's fault: no breaker evidence.
		herr := budgetError(err, "client view")
		herr.Status, herr.Code = http.StatusBadGateway, "ViewTooLarge"
		s.fail(w, log, herr)
	case !errors.As(err, &se):
		s.failStore(w, log, err, groupID)
	case st != nil && st.Status == http.StatusUnauthorized:
		// Expired credentials: 401 makes the Replicache client call getAuth
		// and retry with a fresh token (a 502 would keep the dead one).
		s.fail(w, log, errorf(http.StatusUnauthorized, "Unauthorized",
			"the upstream did not accept the credentials (view source %s answered 401)", se.Source))
	case se.Shifted:
		// Another writer kept moving items between the pages: no mapping
		// error, and the next pull will likely succeed.
		s.fail(w, log, &httpError{Status: http.StatusServiceUnavailable, Code: "ViewShifted", RetryAfter: 1,
			Message: fmt.Sprintf("client view source %s changed while it was read (%s); retry", se.Source, se.Reason),
			Detail:  map[string]any{"source": se.Source, "reason": se.Reason}})
	case st != nil && st.Status >= 300 && st.Status < 400:
		s.mapErrs.report(w.Header().Get("X-Trace-ID"), slog.LevelError, s.mapping().Hash, "view", se.Source, http.MethodGet, st.Path, st.Status, st.Location)
		s.fail(w, log, &httpError{Status: http.StatusBadGateway, Code: "MappingError",
			Message: fmt.Sprintf("mapping error: GET %s answered %d (Location: %q); redirects are never followed: write the canonical path in the mapping",
				st.Path, st.Status, st.Location),
			Detail: map[string]any{"source": se.Source, "reason": se.Reason}})
	default:
		var callErr *upstream.CallError
		if st == nil && !errors.As(err, &callErr) {
			s.upstream.View.BadResponse()
		}
		s.fail(w, log, &httpError{Status: http.StatusBadGateway, Code: "BadGateway", Message: se.Error(),
			Detail: map[string]any{"source": se.Source, "reason": se.Reason}})
	}
}

// writePull sends the answer and accounts for it. The body is written as it
// is encoded: a view is never held twice, once as entries and once as the
// answer's bytes.
func (s *Sidecar) writePull(w http.ResponseWriter, c *call, ans pullAnswer) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	n, ops, err := encodePullResponse(w, ans)
	if err != nil {
		c.log.Info("client went away while the pull was written", "error", err, "bytes", n)
		return
	}
	s.metrics.pullEntries.Observe(float64(ops.put + ops.del))
	s.metrics.pullBytes.Observe(float64(n))
	patch, clears := "diff", 0.0
	if !ans.diff {
		patch, clears = "reset", 1
	}
	s.metrics.patchOps.WithLabelValues("clear").Observe(clears)
	s.metrics.patchOps.WithLabelValues("put").Observe(float64(ops.put))
	s.metrics.patchOps.WithLabelValues("del").Observe(float64(ops.del))
	c.log.Info("pull", "entries", len(ans.entries), "patch", patch, "puts", ops.put, "dels", ops.del,
		"clients", len(ans.lmids), "bytes", n, "cookie", ans.order, "duration", time.Since(c.start))
}

type patchCounts struct{ put, del int }

// encodePullResponse writes the PullResponse by hand: entry values are
// already compact JSON and are copied, not re-encoded. The cookie names
// the database (epoch) and, in diff mode, the record version the client
// will hold. It returns the bytes written and the patch's operations.
func encodePullResponse(dst io.Writer, ans pullAnswer) (int64, patchCounts, error) {
	var ops patchCounts
	cw := &countingWriter{w: dst}
	b := bufio.NewWriterSize(cw, 32<<10)
	b.WriteString(`{"cookie":{"order":`)
	b.WriteString(strconv.FormatInt(ans.order, 10))
	b.WriteString(`,"db":`)
	writeJSONString(b, ans.epoch)
	b.WriteString(`,"g":`)
	writeJSONString(b, ans.group)
	if ans.change != nil {
		b.WriteString(`,"rec":"`)
		b.WriteString(store.FormatID(ans.change.Record.ID))
		b.WriteString(`","v":`)
		b.WriteString(strconv.FormatInt(ans.change.Record.Version, 10))
		b.WriteString(`,"t":"`)
		b.WriteString(store.FormatID(ans.change.Record.Tag))
		b.WriteByte('"')
	}
	b.WriteString(`},"lastMutationIDChanges":{`)
	ids := make([]string, 0, len(ans.lmids))
	for id := range ans.lmids {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		writeJSONString(b, id)
		b.WriteByte(':')
		b.WriteString(strconv.FormatInt(ans.lmids[id], 10))
	}
	b.WriteString(`},"patch":[`)
	sep := false
	op := func(name, key string) { // starts an operation on key
		if sep {
			b.WriteByte(',')
		}
		sep = true
		b.WriteString(`{"op":"`)
		b.WriteString(name)
		b.WriteString(`","key":`)
		writeJSONString(b, key)
	}
	if !ans.diff {
		b.WriteString(`{"op":"clear"}`)
		sep = true
	} else {
		for _, t := range ans.change.Tombstones {
			if t.Version > ans.since {
				op("del", t.Key)
				b.WriteByte('}')
				ops.del++
			}
		}
	}
	for i, e := range ans.entries {
		if ans.diff && ans.change.Versions[i] <= ans.since {
			continue
		}
		op("put", e.Key)
		b.WriteString(`,"value":`)
		b.Write(e.Value)
		b.WriteByte('}')
		ops.put++
	}
	b.WriteString("]}")
	err := b.Flush() // the first write error sticks and shows here
	return cw.n, ops, err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeJSONString writes s as a JSON string. Keys and ids are nearly always
// plain ASCII, written as they are; anything else goes through
// encoding/json's escaping.
func writeJSONString(b *bufio.Writer, s string) {
	plain := true
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	if plain {
		b.WriteByte('"')
		b.WriteString(s)
		b.WriteByte('"')
		return
	}
	q, _ := json.Marshal(s) // a string always encodes
	b.Write(q)
}
