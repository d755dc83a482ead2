package pull

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/flight"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/mapping"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/plan"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
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

func (p *pullRequest) Version() *int   { return p.PullVersion }
func (p *pullRequest) GroupID() string { return p.ClientGroupID }

func (p *pullRequest) Validate() *problem.Error {
	if herr := engine.ValidID("clientGroupID", p.ClientGroupID); herr != nil {
		return herr
	}
	cookie, err := store.ParseCookie(p.Cookie)
	if errors.Is(err, store.ErrCookieExhausted) {
		p.exhausted = true // answered once the caller is known
		return nil
	}
	if err != nil {
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%v", err)
	}
	p.cookie = cookie
	return nil
}

// ServeHTTP serves a pull: Begin (same-site JSON, serving, the view breaker not open, who
// is calling, the bounded body) → join a running fetch of the same group,
// user and credentials, or lead one (pull) → holding the group's lock: read
// every client's last mutation id, fetch the view (every page of every
// source, or nothing), seal the flight, compare the view with the group's
// record, issue every merged pull's cookie with the record's change in one
// round trip (pullLocked, pullBuild) → answer each pull after the commit:
// a diff from its cookie's version, or a reset (answer.go).
func (s *Engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req pullRequest
	c, ok := s.Begin(w, r, metrics.EndpointPull, &req, s.Parts.Upstream.View)
	if !ok {
		return
	}
	defer c.Mem.Release()
	if req.exhausted {
		c.Log.Warn("pull with a cookie that cannot grow any further; the client starts over")
		problem.WriteClientStateNotFound(w)
		return
	}
	ctx := r.Context()
	if s.Tracer != nil { // the view pages' spans name the group
		ctx = upstream.WithSpanAttributes(ctx, attribute.String("replicache.client_group", req.ClientGroupID))
	}
	st := &pullStream{w: w, c: c, after: s.StreamAfter, pool: &s.chunks}
	if st.after == 0 {
		st.after = streamAfterBytes
	}
	ans, err := s.pull(ctx, c, &req, st)
	if st.started() {
		s.endStream(c, st, &req, ans, err)
		return
	}
	if err != nil {
		s.failPull(w, c, err, req.ClientGroupID)
		return
	}
	if ans.lost {
		c.Log.Warn("pull with a cookie this group was issued by another database, or by this one in a history it no longer has (recreated, or restored from a backup); the client starts over",
			"cookie_db", req.cookie.Epoch, "db", ans.epoch, "cookie_order", req.cookie.Order, "cookie_version", req.cookie.Version)
		problem.WriteClientStateNotFound(w)
		return
	}
	// A slow reader of the answer holds the view's bytes: the budget may
	// pre-empt them (package budget), which cuts the connection.
	rc := http.NewResponseController(w)
	done := c.Mem.Interruptible(func() { _ = rc.SetWriteDeadline(time.Unix(1, 0)) })
	s.writePull(w, c, ans)
	done()
	s.answered(c, &req, ans)
}

// failPull answers a pull that could not be built: the view's verdict
// (the upstream suspended or failing, a source that does not fit, the
// budget), or the bookkeeping's failure.
func (s *Engine) failPull(w http.ResponseWriter, c *engine.Exchange, err error, groupID string) {
	if errors.Is(err, store.ErrCookieExhausted) {
		c.Log.Warn("the group's cookie cannot grow any further; the client starts over")
		problem.WriteClientStateNotFound(w)
		return
	}
	v, ok := verdict.View(err, "", s.Parts.Upstream.RetryAfter())
	if !ok {
		s.FailStore(w, c, err, groupID)
		return
	}
	s.Report.Report(w.Header().Get("X-Trace-ID"), s.Mapping().Hash, v.Report)
	if v.BadResponse {
		s.Parts.Upstream.View.BadResponse()
	}
	s.Fail(w, c, v.Problem)
}

// endStream ends an answer that went out while its view was read
// (stream.go): with its cookie once the pull committed, else broken
// off, the failure logged and counted as failPull would answer it.
func (s *Engine) endStream(c *engine.Exchange, st *pullStream, req *pullRequest, ans pullAnswer, err error) {
	if err == nil {
		n, err := st.finish(ans)
		if err != nil {
			c.Log.Info("client went away while the pull was written", "error", err, "bytes", n)
			return
		}
		s.pulled(c, ans, n, patchCounts{put: st.puts}, true)
		s.answered(c, req, ans)
		return
	}
	st.abort()
	if werr := st.err(); werr != nil && !errors.Is(werr, errBrokenOff) {
		c.Log.Info("client went away while the pull was written", "error", werr, "bytes", st.out.written)
		return
	}
	c.Log.Warn("pull answer broken off: the view could not be read whole once its answer had started, so the client keeps the view it had and pulls again; nothing was committed",
		"error", err, "bytes", st.out.written)
	s.failPull(discardWriter{}, c, err, req.ClientGroupID)
}

// discardWriter takes an answer and sends it nowhere: for what failPull
// logs and counts of a pull whose answer was broken off.
type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

// Engine is the pull engine: the shared core, and the fetches running in
// this process that other pulls may join.
type Engine struct {
	*engine.Core
	flights flight.Group[pullMeta, *pullRider]
	shared  sharedViews                      // the shared sources' last reads
	chunks  sync.Pool                        // of streamed answers' pieces (*[]byte)
	counts  flight.Reads[store.ChangeCounts] // riders' reads of the counts of routed changes, shared
	// StreamAfter: a reset answer starts going out once its view has
	// brought this many bytes (0: streamAfterBytes). Tests set less, before
	// the engine serves.
	StreamAfter int64
}

// New returns the pull engine of c. A sidecar has one: the running fetches
// pulls merge on, and the shared sources' last reads, are the engine's.
func New(c *engine.Core) *Engine { return &Engine{Core: c} }

// pullMeta describes a running fetch, for the pulls that may join it
// (package flight). A fetch may be conditional (pages answered 304 bring
// no values) only when the leader's cookie holds the record's current
// version, and only pulls with the same cookie may then join: so pulls
// whose cookie names a record join only a flight whose leader's cookie is
// the same, or names none.
type pullMeta struct {
	base store.Cookie // the leader's cookie
	// gen is the poke hub's generation of the flight's user when it began
	// (poke.Hub.Generation): a pull that comes after a later poke reaching
	// that user (of a change made elsewhere, maybe after this fetch began)
	// does not join it; a poke only of other users' streams does not
	// count.
	gen uint64
	// changes is the count of routed changes the leader read before its
	// fetch began, -1 until then (leading.seal compares it with the count
	// once no pull can board).
	changes *atomic.Int64
}

// pullRider is a pull answered from another pull's fetch.
type pullRider struct {
	cookie store.Cookie // the rider's
	// changes is the count of routed changes of the rider's user
	// (store.ChangeCounts.For) read after the rider boarded, -1 until
	// then (leading.seal).
	changes atomic.Int64
	// Written by the leader before the flight lands: the answer, or that
	// the rider is refused (a change was routed while the fetch ran) and
	// rides on a later fetch or leads its own.
	ans     pullAnswer
	refused bool
}

// pull answers req from its own fetch, or from a running one it may join
// until the leader seals it: right after the fetch, before the cookies are
// issued. A pull that joins arrived before the flight's transaction ended,
// and that transaction held the group's lock from before it read the last
// mutation ids until after the view was fetched; so every push that had
// completed when the joiner arrived is in both, and the joiner's answer is
// exactly as correct as its own fetch would have been. Each pull still
// gets its own cookie, issued in the same transaction, strictly increasing
// for the group, and its own patch: a diff from its own cookie's version of
// the group's record, or a reset.
//
// A poke may come from another replica, which this one's poke generation
// does not see: so riders are judged by the count of routed changes of
// their user (store.ChangeCounts.For: everyone's count plus the user's
// own; every write moves the count of whom it pokes after the API
// answered and before anyone is poked, so a write that pokes only other
// users refuses no rider), which the leader reads before its fetch (with
// the source states it reads anyway) and each rider once it has boarded,
// in reads shared between riders (flight.Reads); leading.seal decides.
// The flight's key holds the user: leader and riders read one count. A rider refused
// tries once more to ride, on a fetch begun after the change, before it
// leads its own.
//
// st is the pull's answer: a leader whose answer is a reset may start it
// while the view is read (stream.go); a rider never does.
func (s *Engine) pull(ctx context.Context, c *engine.Exchange, req *pullRequest, st *pullStream) (pullAnswer, error) {
	key := s.flightKey(req.ClientGroupID, c)
	for tries := 0; ; tries++ {
		// A pull refused by a flight (a change was routed after its fetch
		// began) tries once more to ride, on a fetch begun after that
		// change: the pulls the change caused then share one fetch
		// again, instead of each leading its own in turn.
		gen := s.Hub.Generation(c.User)
		rider := &pullRider{cookie: req.cookie}
		rider.changes.Store(-1)
		meta := pullMeta{base: req.cookie, gen: gen, changes: new(atomic.Int64)}
		meta.changes.Store(-1)
		var stopRiding func()
		f, leader, err := s.flights.Join(key, meta, rider, func(m pullMeta) (bool, error) {
			if tries >= maxRideTries || m.gen != gen || m.base.Record != 0 && (m.base.Record != req.cookie.Record || m.base.Version != req.cookie.Version) {
				return false, nil
			}
			// A rider waits for its group within a bound of its own
			// (gate.RidersPerWaiting × SIDECAR_MAX_WAITING_PER_GROUP).
			done, err := s.Turns.Ride(req.ClientGroupID)
			stopRiding = done
			return err == nil, err
		})
		if err != nil {
			return pullAnswer{}, err
		}
		if !leader {
			// The count of routed changes, read after boarding: a change
			// this pull was poked for moved it before (pull's comment).
			if cs, err := s.counts.Read(ctx, s.Store.ChangeCounts); err == nil {
				rider.changes.Store(cs.For(c.User))
			}
			err := f.Wait(ctx)
			stopRiding()
			switch {
			case ctx.Err() != nil:
				// Its client left. The flight may not have landed: the
				// leader may still be writing the rider (its refusal, its
				// answer), which is read only once it has.
				return pullAnswer{}, ctx.Err()
			case rider.refused:
				continue // it rides on a later fetch, or leads one
			case err != nil:
				return pullAnswer{}, err
			case rider.ans.order == 0 && !rider.ans.lost:
				return pullAnswer{}, store.ErrCookieExhausted
			}
			s.Metrics.PullsMerged.Inc()
			return rider.ans, nil
		}
		// A crowded group's wave of pulls gathers on this fetch.
		if w := gatherWindow(s.Lag.Streams(req.ClientGroupID, c.User), s.Cfg.PokeSpread); w > 0 {
			t := time.NewTimer(w)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		// The work goes on if this pull's own client leaves: others may wait
		// for it. The turn, the lock and every upstream call are bounded.
		ans, err := s.pullLocked(context.WithoutCancel(ctx), c, req, leading{f}, st)
		f.Land(err)
		if err == nil && ans.order == 0 && !ans.lost {
			return pullAnswer{}, store.ErrCookieExhausted
		}
		return ans, err
	}
}

// maxRideTries: a pull refused by one flight (a change was routed while
// it ran) tries to ride once more before it leads a fetch of its own.
const maxRideTries = 2

// leading is a leader's hold on its flight.
type leading struct {
	f *flight.Flight[pullMeta, *pullRider]
}

// fetching notes the count of routed changes read before the fetch began.
func (l leading) fetching(changes int64) { l.f.Meta.changes.Store(changes) }

// alone seals the flight if no pull has joined it (flight.SealAlone),
// for an answer that goes out while the view is read.
func (l leading) alone() bool { return l.f.SealAlone() }

// seal closes the flight and returns the riders the fetch may answer. A
// rider poked for a change (through any replica) was poked after the count
// of routed changes moved for it, so before the rider boarded; the fetch
// holds that change if the count the leader read before the fetch began is
// at least as large. So the leader, once no pull can board any more,
// reads the count again (count, on its own connection): unmoved, every
// rider is answered; moved, each rider is answered if the count it read
// after boarding (pullRider.changes) is no larger than the leader's, and
// refused otherwise (it rides on a later fetch or leads its own: pull),
// as is one whose read has not come back yet.
func (l leading) seal(count func() (int64, error)) []*pullRider {
	riders := l.f.Seal()
	if len(riders) == 0 {
		return nil
	}
	start := l.f.Meta.changes.Load()
	if start < 0 {
		for _, r := range riders {
			r.refused = true
		}
		return nil
	}
	if now, err := count(); err == nil && now == start {
		return riders
	}
	var out []*pullRider
	for _, r := range riders {
		if n := r.changes.Load(); n >= 0 && n <= start {
			out = append(out, r)
		} else {
			r.refused = true
		}
	}
	return out
}

// flightKey: pulls may share a fetch only with the same client group, user
// and forwarded credentials (a token's scope may narrow what the API shows).
// No two of those give one key: the group id holds no control character
// (validated), the user (whatever the auth call answered) is
// length-prefixed, and each forwarded header is named by its place and
// its count of values, which hold no NUL (net/http refuses them).
func (s *Engine) flightKey(groupID string, c *engine.Exchange) string {
	var b strings.Builder
	b.WriteString(groupID)
	b.WriteByte(0)
	b.WriteString(strconv.Itoa(len(c.User)))
	b.WriteByte(':')
	b.WriteString(c.User)
	for i, name := range s.Cfg.ForwardHeaders {
		vs := c.Forward.Values(name)
		b.WriteByte(0)
		b.WriteString(strconv.Itoa(i))
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(len(vs)))
		for _, v := range vs {
			b.WriteByte(0)
			b.WriteString(v)
		}
	}
	return b.String()
}

// pullLocked builds the answer while holding the group's lock: the view is
// fetched between reading the last mutation ids and issuing the cookie, so
// no push of the group can slip in between. Once the view is fetched,
// sealing fl returns the pulls that joined; each gets its cookie and its
// patch here too. In diff mode the view is compared with the group's
// record, and the record's change is written with the cookies. When the
// answer is a reset whatever is read, st may start it during the fetch
// (fl.alone seals the flight if no pull joined it); it is then this pull's
// alone, and not committed once broken off.
func (s *Engine) pullLocked(ctx context.Context, c *engine.Exchange, req *pullRequest, fl leading, st *pullStream) (pullAnswer, error) {
	mp := s.Mapping()
	view := &pullView{}
	var ans pullAnswer
	heldAnew := false
	err := s.Locked(ctx, req.ClientGroupID, c.User, "", func(g *store.GroupTx) error {
		var err error
		if s.Cfg.MaxViewRecordsPerUser > 0 {
			// The record counts toward its caller's cap: the user (who
			// owns the group), else the address.
			g.HoldRecord(c.Key())
		}
		if view.lmids, err = g.LastMutationIDs(ctx); err != nil {
			return err
		}
		before, beforeOrder := g.Record(), g.CookieOrder()
		view.epoch, view.group = g.Epoch(), store.GroupTag(req.ClientGroupID)
		b := &pullBuild{s: s, c: c, g: g, req: req, view: view, mapping: mp, seal: fl.seal,
			before: before, beforeOrder: beforeOrder, started: time.Now()}
		var memos map[clientview.PageKey]*clientview.PageMemo
		if s.Cfg.PatchMode == "diff" {
			// Conditional GETs, delta reads and skipped sources only when this
			// pull (and so every pull that may join it: same cookie) holds the
			// record's current version: a page answered 304, or a source not
			// read in full, brings no values, and none is needed.
			ck := req.cookie
			current := before.ID != 0 && ck.Epoch == g.Epoch() && ck.Group == view.group &&
				ck.Record == before.ID && ck.Version == before.Version && !before.Evicted
			if b.stored, err = g.ViewPages(ctx, current); err != nil {
				return err
			}
			if current {
				memos = pageMemos(b.stored)
			}
			if b.states, b.marks, err = g.SourceStates(ctx); err != nil {
				return err
			}
			b.plan = plan.Decide(plan.Input{Sources: mp.Sources, View: mp.View, States: b.states, Current: current,
				Writes: s.Writes, Marks: b.marks, Now: b.started})
		}
		// Read with the source states in diff mode: no round trip of its own.
		changes, err := g.ChangeCounts(ctx)
		if err != nil {
			return err
		}
		fl.fetching(changes.For(c.User))
		// A reset's answer may go out while the view is read (with no
		// memos: only a pull holding the current version has them, and
		// it gets a diff).
		lost, decided := view.classifyEarly(req.cookie, beforeOrder, s.Cfg.PatchMode == "diff")
		if st != nil && decided && !lost && store.CookieCanGrow(req.cookie.Order, beforeOrder) {
			st.allow(view, fl.alone)
			b.stream = st
		}
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
			c.Log.Info("fetching the client view again without conditional requests", "group", req.ClientGroupID)
			memos = nil
		}
		if err := b.stream.err(); err != nil {
			return err // the answer is broken off: nothing to commit it for
		}
		s.notePulls(b)
		orders, err := g.IssueCookies(ctx, b.bases, view.change, b.pages)
		if err != nil {
			return err
		}
		heldAnew = g.HeldAnew()
		for i := range b.answers {
			b.answers[i].order = orders[i]
			if orders[i] != 0 && orders[i] == b.bases[i] {
				// Its own cookie, the group's current one, kept: nothing
				// changed since it was issued (store.IssueCookies). The
				// client takes it for "nothing new" only with an empty
				// patch and no last mutation id changes. The rest of the
				// view stays (the change lag reads when it was read).
				kept := *view
				kept.lmids, kept.entries = nil, nil
				b.answers[i].pullView = &kept
			}
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
		s.Metrics.RecordBytes.Observe(float64(view.change.Bytes))
	}
	if err == nil && heldAnew {
		s.evictRecords(ctx, c)
	}
	return ans, err
}

// evictRecords keeps the view records of c's caller within
// SIDECAR_MAX_VIEW_RECORDS_PER_USER once its pull has made one more: the
// records of the groups it used least recently go (each of those groups
// answers its next pull with a reset). It runs after the pull's commit,
// each eviction holding only its victim's lock. A failure is logged, never
// the pull's answer: the sweep enforces the cap too.
func (s *Engine) evictRecords(ctx context.Context, c *engine.Exchange) {
	ev, err := s.Store.EvictRecords(ctx, c.Key(), s.Cfg.MaxViewRecordsPerUser)
	s.Metrics.RecordEvictions.Add(float64(ev.Records))
	switch {
	case err != nil:
		c.Log.Warn("evicting view records beyond SIDECAR_MAX_VIEW_RECORDS_PER_USER failed; the sweep will", "error", err, "evicted", ev.Records)
	case ev.Records > 0:
		c.Log.Info("evicted the view records of the caller's least recently used client groups (SIDECAR_MAX_VIEW_RECORDS_PER_USER)",
			"evicted", ev.Records, "bytes", ev.Bytes)
	}
}

// pullBuild is one pull's view, built under the group's lock: what it
// needs, and what it works out for every pull answered from it.
type pullBuild struct {
	s           *Engine
	c           *engine.Exchange
	g           *store.GroupTx
	req         *pullRequest
	view        *pullView
	mapping     *mapping.Mapping
	stored      []store.ViewPage
	seal        func(count func() (int64, error)) []*pullRider
	before      store.ViewRecord
	beforeOrder int64

	// How each source is read (plan.Decide), what the record held of each,
	// and when the read started (diff mode).
	plan    plan.Decision
	states  map[string]store.SourceState
	marks   map[string]store.SourceMark // every replica's routed writes (plan.Input.Marks)
	started time.Time
	read    clientview.Result // the last read's result
	// sharedReads are the replica's copies of shared sources the read
	// was served (withShared), by source id.
	sharedReads map[string]*sharedRead

	riders  []*pullRider
	answers []pullAnswer // but their cookie orders
	bases   []int64      // the orders to issue cookies above, per answer
	pages   *store.PageWrites

	stream *pullStream // the answer, when it may go out while the view is read
}

// sink is the fetch's page sink: the streamed answer, if any.
func (b *pullBuild) sink() clientview.PageSink {
	if b.stream == nil {
		return nil
	}
	b.stream.fetching()
	return b.stream
}

// extra gives the streamed answer, if any, entries the pull adds to the
// view it fetched (a shared source's, the rejections).
func (b *pullBuild) extra(es []clientview.Entry) error {
	if b.stream == nil || len(es) == 0 {
		return nil
	}
	_, err := b.stream.Page("", es)
	return err
}

// run fetches the view (conditionally, with memos), lets the riders in,
// and works out every pull's answer but its cookie order, and what to
// write. retry: the fetch used memos and either failed at a source or left
// an answer without a value it must put; the caller fetches again in full.
func (b *pullBuild) run(ctx context.Context, memos map[clientview.PageKey]*clientview.PageMemo) (retry bool, err error) {
	s, c, view := b.s, b.c, b.view
	plans := b.plan.Plans
	for _, info := range b.mapping.Sources {
		if info.Shared { // served from the replica's copy (withShared)
			plans = maps.Clone(plans)
			if plans == nil {
				plans = map[string]clientview.Plan{}
			}
			plans[info.ID] = clientview.Plan{Mode: clientview.Skip}
		}
	}
	// While the view arrives the pull waits on the upstream: the budget
	// may pre-empt it for a caller holding less (package budget), which
	// cancels the fetch. The pulls riding on this one share its fetch and
	// its lease, and get the same 503: they retry, each then its own.
	fctx, cancel := context.WithCancelCause(ctx)
	done := c.Mem.Interruptible(func() { cancel(budget.ErrPreempted) })
	res, err := s.fetch(fctx, b.mapping, c.Key(), clientview.Request{UserID: c.User, Header: c.Forward, Memory: c.Mem, Memos: memos,
		Plans: plans, Pages: b.sink()})
	if err == nil {
		res, err = b.withShared(fctx, res)
	}
	done()
	cancel(nil)
	if err != nil {
		if perr := c.Mem.Err(); perr != nil {
			return false, perr // whatever the cancelled fetch reported
		}
		var se *clientview.SourceError
		return memos != nil && ctx.Err() == nil && errors.As(err, &se), err
	}
	s.countReads(c, res.Sources)
	view.entries = res.Entries
	view.reads = view.reads[:0]
	for _, r := range res.Sources {
		view.reads = append(view.reads, r.Path+"="+r.Mode.String())
		if why := b.plan.Reasons[r.Source]; why != "" && r.Mode == clientview.Full {
			view.reads[len(view.reads)-1] += " (" + why + ")"
		}
	}
	b.riders = b.seal(func() (int64, error) {
		cs, err := b.g.ChangeCountsNow(ctx)
		return cs.For(b.c.User), err
	})
	if s.Cfg.ExposeRejections {
		n := len(view.entries)
		if view.entries, err = s.addRejections(ctx, b.g, view.entries); err != nil {
			return false, err
		}
		if err := b.extra(view.entries[n:]); err != nil {
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
	b.read = res
	if s.Cfg.PatchMode == "diff" {
		if view.change, err = b.compare(ctx, versions); err != nil {
			return false, err
		}
		if again := b.unconfirmed(res.Sources); len(again) > 0 {
			// The read would delete keys of sources whose pages cannot show
			// they fit together: read those once more, and delete only what
			// both reads lack (the next full read removes what one read kept).
			if res, err = b.confirm(ctx, res, again); err != nil {
				return false, err
			}
			if view.change, err = b.compare(ctx, versions); err != nil {
				return false, err
			}
		}
		b.pages = s.pageWrites(b.stored, res.Pages, res.Sources)
		b.g.StageSources(plan.After(b.states, res.Sources, b.mapping.Sources, b.started))
		b.g.NoteCookies(cookies) // one holding the group's current cookie may keep it
	}
	b.answers = make([]pullAnswer, len(cookies))
	b.bases = make([]int64, len(cookies))
	for i, ck := range cookies {
		a := pullAnswer{pullView: view}
		a.lost, a.diff = view.classify(ck, b.before, b.beforeOrder)
		if a.diff {
			a.since = ck.Version
		}
		// A streamed answer sent every value as it came (and let it go).
		if !a.lost && !(i == 0 && b.stream.started()) && !view.complete(a) {
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
