package pull

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/flight"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/mapping"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/plan"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/tracing"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// What a pull adds to the view it fetched, and what it remembers of it:
// the entries of rejected mutations, and the view pages kept for
// conditional GETs (the fetcher's memos and the store's rows of the same
// pages).

// addRejections appends an entry per recent rejection of the group's
// clients, under the reserved prefix, so the app can say why a change was
// dropped (SIDECAR_EXPOSE_REJECTIONS).
func (s *Engine) addRejections(ctx context.Context, g *store.GroupTx, entries []clientview.Entry) ([]clientview.Entry, error) {
	rs, err := g.RecentRejections(ctx, s.Cfg.RejectionTTL)
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
//
// Only the pages of sources read in full are weighed: what is remembered of
// a source read by its changes, or not at all, stays.
func (s *Engine) pageWrites(stored []store.ViewPage, fetched []clientview.PageResult, reads []clientview.SourceResult) *store.PageWrites {
	full := make(map[string]bool, len(reads))
	for _, r := range reads {
		full[r.Source] = r.Mode == clientview.Full
	}
	old := make(map[store.PageKey]store.ViewPage, len(stored))
	for _, p := range stored {
		old[store.PageKey{Source: p.Source, Page: p.Page}] = p
	}
	w := &store.PageWrites{}
	for _, p := range fetched {
		if p.Conditional {
			result := metrics.ConditionalMiss
			if p.NotModified {
				result = metrics.ConditionalHit
			}
			s.Metrics.Conditional.WithLabelValues(result).Inc()
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
		if full[k.Source] || len(reads) == 0 {
			w.Drop = append(w.Drop, k)
		}
	}
	return w
}

// storableURL: a page URL the remembered pages can keep (a Postgres text:
// valid UTF-8 without NUL, and not absurdly long). Pages whose URL is not
// are simply fetched in full.
func storableURL(u string) bool {
	return len(u) <= 8192 && utf8.ValidString(u) && !strings.ContainsRune(u, 0)
}

// compare compares the view read with the group's record: the keys of
// sources not read in full this time stay as they are, the keys the read
// says are deleted go.
func (b *pullBuild) compare(ctx context.Context, versions []int64) (*store.ViewChange, error) {
	es := b.view.entries
	read := store.ViewRead{N: len(es), Entry: func(i int) (string, uint64) { return es[i].Key, es[i].Hash }}
	read.Retain = plan.Retain(b.mapping.View, b.read.Sources)
	for _, r := range b.read.Sources {
		read.Deleted = append(read.Deleted, r.Deleted...)
	}
	return b.g.CompareRead(ctx, read, versions, func(n int64) error { return b.c.Mem.Grow(ctx, n) })
}

// unconfirmed returns the sources whose full read may have dropped a key
// the change removes: read in full, with pages that cannot show they fit
// together (an item another writer moved between two pages is skipped), so
// a deletion derived from them needs a second read. Nil when the change
// removes nothing of theirs.
func (b *pullBuild) unconfirmed(reads []clientview.SourceResult) map[string]bool {
	weak := map[string]bool{}
	for _, r := range reads {
		if r.Mode == clientview.Full && !r.Provable {
			weak[r.Source] = true
		}
	}
	if len(weak) == 0 {
		return nil
	}
	soft := map[string]bool{}
	for _, r := range reads {
		for _, k := range r.Deleted {
			soft[k] = true
		}
	}
	for _, k := range b.view.change.Removed() {
		if soft[k] || strings.HasPrefix(k, clientview.ReservedPrefix) {
			continue // deleted as the API says, or the sidecar's own entry
		}
		if id, ok := b.mapping.View.Owner(k); !ok || weak[id] {
			return weak // theirs, or perhaps theirs
		}
	}
	return nil
}

// confirm reads the sources again once and makes their entries both
// reads' (the second's value where both have a key): a key missing from
// one read only is kept, a key neither has is gone.
func (b *pullBuild) confirm(ctx context.Context, first clientview.Result, again map[string]bool) (clientview.Result, error) {
	plans := map[string]clientview.Plan{}
	for _, s := range b.mapping.Sources {
		if !again[s.ID] || s.Shared { // a shared source is read again as it was read: without credentials
			plans[s.ID] = clientview.Plan{Mode: clientview.Skip}
		}
	}
	c := b.c
	// Interruptible as the first read was (run): the budget may pre-empt
	// it for a caller holding less while it waits on the upstream.
	fctx, cancel := context.WithCancelCause(ctx)
	done := c.Mem.Interruptible(func() { cancel(budget.ErrPreempted) })
	// Which source the first read had each key under: a streamed answer
	// has sent the first read's values, and is not sent what the merge
	// below keeps from the first read (an item that moved to another
	// source between the two reads).
	owner := make(map[string]string, len(first.Entries))
	at := 0
	for _, r := range first.Sources {
		for _, e := range first.Entries[at : at+r.Entries] {
			owner[e.Key] = r.Source
		}
		at += r.Entries
	}
	second, seconds, err := b.readAgain(fctx, plans, again, owner)
	done()
	cancel(nil)
	if perr := c.Mem.Err(); err != nil && perr != nil {
		return first, perr // whatever the cancelled read reported
	}
	if err != nil {
		return first, err
	}
	// Each key once: an item that moved from one source to another between
	// the two reads (a view whose sources share a key template) stays where
	// the first read had it.
	unique := make(map[string]bool, len(first.Entries))
	for _, e := range first.Entries {
		unique[e.Key] = true
	}
	merged := make([]clientview.Entry, 0, len(b.view.entries))
	at = 0
	for i, r := range first.Sources {
		seg := first.Entries[at : at+r.Entries]
		at += r.Entries
		start := len(merged)
		if !again[r.Source] {
			merged = append(merged, seg...)
			continue
		}
		now := map[string]int{}
		for j, e := range seconds[r.Source] {
			now[e.Key] = j
		}
		taken := make([]bool, len(seconds[r.Source]))
		for _, e := range seg {
			if j, ok := now[e.Key]; ok {
				e, taken[j] = seconds[r.Source][j], true
			}
			merged = append(merged, e)
		}
		for j, e := range seconds[r.Source] {
			if !taken[j] && !unique[e.Key] {
				unique[e.Key] = true
				merged = append(merged, e)
			}
		}
		for _, r2 := range second.Sources {
			if r2.Source == r.Source {
				first.Sources[i].Watermark = clientview.MaxMark(first.Sources[i].Watermark, r2.Watermark)
				first.Sources[i].Deleted = append(first.Sources[i].Deleted, r2.Deleted...)
			}
		}
		first.Sources[i].Entries = len(merged) - start
	}
	// What the pull added after the read (rejection entries) stays at the end.
	added := b.view.entries[len(first.Entries):]
	first.Entries = merged
	b.view.entries = append(merged[:len(merged):len(merged)], added...)
	b.read = first
	b.c.Log.Info("a full read would delete entries of a source whose pages may skip an item; read it again to confirm",
		"sources", len(again))
	return first, nil
}

// readAgain is confirm's second read of the sources in again (plans skip
// the others and the shared ones, which are read again from the replica's
// copy): the result, and each source's entries by id.
func (b *pullBuild) readAgain(ctx context.Context, plans map[string]clientview.Plan, again map[string]bool, owner map[string]string) (clientview.Result, map[string][]clientview.Entry, error) {
	c := b.c
	var sink clientview.PageSink
	if st := b.sink(); st != nil {
		sink = secondSink{st, owner}
	}
	second, err := b.s.fetch(ctx, b.mapping, c.Key(), clientview.Request{UserID: c.User, Header: c.Forward, Memory: c.Mem, Plans: plans,
		Pages: sink})
	if err != nil {
		return second, nil, err
	}
	b.s.countReads(c, second.Sources)
	seconds := map[string][]clientview.Entry{}
	at := 0
	for _, r := range second.Sources {
		seconds[r.Source] = second.Entries[at : at+r.Entries]
		at += r.Entries
	}
	for _, info := range b.mapping.Sources {
		if held := b.sharedReads[info.ID]; again[info.ID] && info.Shared && held != nil {
			r, err := b.s.shared.get(ctx, b.s, info, b.marks[plan.Key(info.Path)], c.RequestID, held)
			if err != nil {
				return second, nil, err
			}
			seconds[info.ID] = r.entries
			second.Sources = append(second.Sources, r.result)
			if err := b.extra(secondSink{owner: owner}.own(info.ID, r.entries)); err != nil {
				return second, nil, err
			}
		}
	}
	return second, seconds, nil
}

// countReads counts what reads asked of the API, and reports a source
// whose API ignores its changes filter (at most once a minute per source).
// c is the pull that read them (nil: a shared source's read).
func (s *Engine) countReads(c *engine.Exchange, reads []clientview.SourceResult) {
	for _, r := range reads {
		if r.Mode == clientview.Skip {
			continue
		}
		read := metrics.ReadFull
		if r.Mode == clientview.Delta {
			read = metrics.ReadDelta
		}
		s.Metrics.ViewReads.WithLabelValues(r.Path, read).Add(float64(r.Requests))
		s.Metrics.ViewReadBytes.WithLabelValues(r.Path, read).Add(float64(r.Bytes))
		if r.FilterIgnored {
			s.Metrics.FilterIgnored.WithLabelValues(r.Path).Inc()
			log := s.Log
			if c != nil {
				log = c.Log
			}
			if s.Once.Due("filter\x00"+r.Path, time.Minute) {
				log.Warn("the API ignored a view source's changes filter: items older than the bound asked for came back, so every read of it costs a full one; check the source's changes.param or changes.query (replicache-sidecar check tries it)",
					"source", r.Path, "bound", r.Sent)
			}
		}
	}
}

// sharedViews keeps, per replica, the last read of each shared source (the
// same answer for every user: "shared": true), so every client group's
// pull is served from one read per change instead of one per group. A
// read is made without any user's credentials, at most once at a time per
// source, and again when it is older than the source's maxAge or a write
// fell under its path since. It is safe for concurrent use.
type sharedViews struct {
	mu    sync.Mutex
	reads map[string]*sharedRead // by source id
	runs  flight.Group[*sharedRun, struct{}]
}

// sharedRun is one read of a shared source under way: when it began (no
// later than its request), and, once it has landed without error, what it
// read (its waiters take this read, not whatever the replica holds by
// then: an older run may land after a newer one).
type sharedRun struct {
	began time.Time
	read  *sharedRead
}

type sharedRead struct {
	entries []clientview.Entry
	result  clientview.SourceResult
	at      time.Time // when the read started
}

// get returns the source's entries as last read, reading it first when
// the copy is stale, or, with again, when it is not a read that began after
// the one the caller holds (to confirm a deletion: a second read, still
// without any user's credentials). marked is the database's last write
// under the source, by every replica.
func (sv *sharedViews) get(ctx context.Context, s *Engine, info clientview.SourceInfo, marked store.SourceMark, requestID string, again *sharedRead) (*sharedRead, error) {
	now := time.Now()
	sv.mu.Lock()
	r := sv.reads[info.ID]
	sv.mu.Unlock()
	write, _ := s.Writes.Seen(info.Path, marked)
	if r != nil && (again == nil && now.Sub(r.at) < info.MaxAge && !write.After(r.at) || again != nil && r.at.After(again.at)) {
		return r, nil
	}
	// A read under way is joined only when it began after every write
	// seen under the source (and after the read held, with again): a pull
	// poked for a write must not be answered from a read begun before it.
	run := &sharedRun{began: time.Now()}
	f, leader, _ := sv.runs.Join(info.ID, run, struct{}{}, func(m *sharedRun) (bool, error) {
		return m.began.After(write) && (again == nil || m.began.After(again.at)), nil
	})
	if !leader {
		if err := f.Wait(ctx); err != nil {
			return nil, err
		}
		return f.Meta.read, nil
	}
	// No user's credentials: only what correlates the call.
	hdr := http.Header{}
	if requestID != "" {
		hdr.Set("X-Request-ID", requestID)
	}
	tracing.SetHeaders(ctx, hdr)
	started := time.Now()
	// The read is every waiting pull's, not only this one's: it is not
	// cut short when this pull is (its client left, the budget pre-empted
	// it); the upstream timeout bounds it.
	res, err := s.Parts.Fetcher.FetchResult(upstream.WithCaller(context.WithoutCancel(ctx), "shared:"+info.ID), info.View, clientview.Request{Header: hdr})
	if err == nil {
		r = &sharedRead{entries: res.Entries, result: res.Sources[0], at: started}
		run.read = r
		sv.mu.Lock()
		if sv.reads == nil {
			sv.reads = map[string]*sharedRead{}
		}
		if old := sv.reads[info.ID]; old == nil || !old.at.After(r.at) { // runs may overlap: keep the newest
			sv.reads[info.ID] = r
		}
		sv.mu.Unlock()
		s.countReads(nil, res.Sources)
	}
	f.Land(err)
	return r, err
}

// withShared puts the shared sources the plan reads in full into a fetch's
// result, from sv (their plan was a skip for the fetch itself), in source
// order, as if read in full.
func (b *pullBuild) withShared(ctx context.Context, res clientview.Result) (clientview.Result, error) {
	var reads map[string]*sharedRead
	for _, info := range b.mapping.Sources {
		if !info.Shared || b.plan.Plans[info.ID].Mode == clientview.Skip {
			continue
		}
		r, err := b.s.shared.get(ctx, b.s, info, b.marks[plan.Key(info.Path)], b.c.RequestID, nil)
		if err != nil {
			return res, err
		}
		if reads == nil {
			reads = map[string]*sharedRead{}
		}
		reads[info.ID] = r
		if b.sharedReads == nil {
			b.sharedReads = map[string]*sharedRead{}
		}
		b.sharedReads[info.ID] = r
	}
	if reads == nil {
		return res, nil
	}
	entries := make([]clientview.Entry, 0, len(res.Entries))
	at := 0
	for i, r := range res.Sources {
		entries = append(entries, res.Entries[at:at+r.Entries]...)
		at += r.Entries
		if sr := reads[r.Source]; sr != nil {
			got := sr.result
			got.Requests, got.Bytes = 0, 0 // served from the replica's copy
			res.Sources[i] = got
			entries = append(entries, sr.entries...)
			if err := b.extra(sr.entries); err != nil {
				return res, err
			}
		}
	}
	res.Entries = entries
	return res, nil
}

// secondSink passes a confirming read's pages on to a streamed answer
// without the items the first read had under another source: the merge
// (confirm) keeps those where the first read had them, and so must the
// client.
type secondSink struct {
	clientview.PageSink
	owner map[string]string // key → the source the first read had it under
}

func (s secondSink) Page(source string, es []clientview.Entry) (bool, error) {
	return s.PageSink.Page(source, s.own(source, es))
}

// own returns es without the entries the first read had under another
// source (es itself when there are none).
func (s secondSink) own(source string, es []clientview.Entry) []clientview.Entry {
	for i, e := range es {
		if o, ok := s.owner[e.Key]; ok && o != source {
			kept := append([]clientview.Entry(nil), es[:i]...)
			for _, e := range es[i+1:] {
				if o, ok := s.owner[e.Key]; !ok || o == source {
					kept = append(kept, e)
				}
			}
			return kept
		}
	}
	return es
}

// fetch reads the view, admitted by the view breaker as one unit of work
// (every page of every source: half-open, the trial is the whole fetch),
// and reports the verdict's evidence, from source (the caller).
func (s *Engine) fetch(ctx context.Context, m *mapping.Mapping, source string, r clientview.Request) (clientview.Result, error) {
	ticket, err := s.Parts.Upstream.View.Admit()
	if err != nil {
		return clientview.Result{}, err
	}
	res, err := s.Parts.Fetcher.FetchResult(upstream.WithCaller(upstream.WithTicket(ctx, ticket), source), m.View, r)
	if err == nil {
		ticket.Done(upstream.Evidence{Health: upstream.Healthy})
		return res, nil
	}
	v, _ := verdict.View(err, source, 0) // no view verdict: no evidence
	ticket.Done(v.Evidence)
	return res, err
}

// gatherWindow is how long the leader of a fetch waits before it begins,
// so that more of its group's pulls ride on it: a poke reaches a group's
// streams in this replica spread over up to SIDECAR_POKE_SPREAD (spread),
// and their pulls arrive over that time, while a fetch takes a few
// milliseconds; without a wait each fetch gathers only the pulls that
// arrived while it ran. Only for a crowded group (crowdStreams or more
// open streams naming it here), an eighth of the spread, gatherMax at
// most: a few dozen milliseconds more for a wave that makes a handful of
// fetches instead of dozens.
func gatherWindow(streams int, spread time.Duration) time.Duration {
	if streams < crowdStreams {
		return 0
	}
	return min(spread/8, gatherMax)
}

const (
	crowdStreams = 16
	gatherMax    = 50 * time.Millisecond
)
