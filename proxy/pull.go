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

	cookieOrder int64 // parsed from Cookie by validate
	exhausted   bool  // the cookie's order cannot be exceeded (validate)
}

func (p *pullRequest) version() *int         { return p.PullVersion }
func (p *pullRequest) clientGroupID() string { return p.ClientGroupID }

func (p *pullRequest) validate() *httpError {
	if herr := validID("clientGroupID", p.ClientGroupID); herr != nil {
		return herr
	}
	order, err := store.ParseCookieOrder(p.Cookie)
	if errors.Is(err, store.ErrCookieExhausted) {
		p.exhausted = true // answered once the caller is known
		return nil
	}
	if err != nil {
		return errorf(http.StatusBadRequest, "BadRequest", "%v", err)
	}
	p.cookieOrder = order
	return nil
}

// pullAnswer is what a pull answers under the Reset Strategy.
type pullAnswer struct {
	order   int64            // the new cookie's order
	lmids   map[string]int64 // every client of the group
	entries []clientview.Entry
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
	ans, err := s.pull(r.Context(), c, &req)
	if err != nil {
		s.failPull(w, c.log, err, req.ClientGroupID)
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
// transaction, strictly increasing for the group.
type pullFlight struct {
	done   chan struct{}
	sealed bool         // guarded by Sidecar.flightsMu
	riders []*pullRider // guarded by Sidecar.flightsMu until sealed
	ans    pullAnswer   // the leader's; set before done closes
	err    error
}

type pullRider struct {
	base  int64 // the rider's cookie order
	order int64 // issued to it; 0: its cookie cannot grow
}

// pull answers req from its own fetch, or from a running one it may join.
func (s *Sidecar) pull(ctx context.Context, c *call, req *pullRequest) (pullAnswer, error) {
	key := s.flightKey(req.ClientGroupID, c)
	s.flightsMu.Lock()
	if f := s.flights[key]; f != nil && !f.sealed {
		done, err := s.turns.Ride(req.ClientGroupID)
		if err != nil {
			s.flightsMu.Unlock()
			return pullAnswer{}, err
		}
		defer done()
		rider := &pullRider{base: req.cookieOrder}
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
		if rider.order == 0 {
			return pullAnswer{}, store.ErrCookieExhausted
		}
		s.metrics.pullsMerged.Inc()
		return pullAnswer{order: rider.order, lmids: f.ans.lmids, entries: f.ans.entries}, nil
	}
	f := &pullFlight{done: make(chan struct{})}
	s.flights[key] = f
	s.flightsMu.Unlock()
	// The work goes on if this pull's own client leaves: others may wait
	// for it. The turn, the lock and every upstream call are bounded.
	f.ans, f.err = s.pullLocked(context.WithoutCancel(ctx), c, req, func() []*pullRider { return s.seal(key, f) })
	s.seal(key, f) // when it failed before sealing
	close(f.done)
	if f.err == nil && f.ans.order == 0 {
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
// fetched, returns the pulls that joined; each gets its cookie here too.
// The answer's order is 0 when this pull's cookie cannot grow.
func (s *Sidecar) pullLocked(ctx context.Context, c *call, req *pullRequest, seal func() []*pullRider) (pullAnswer, error) {
	mapping := s.mapping()
	var ans pullAnswer
	err := s.locked(ctx, req.ClientGroupID, c.userID, "", func(g *store.GroupTx) error {
		var err error
		if ans.lmids, err = g.LastMutationIDs(ctx); err != nil {
			return err
		}
		if ans.entries, err = s.fetcher.Fetch(ctx, mapping.View, clientview.Request{UserID: c.userID, Header: c.fwd, Memory: c.mem}); err != nil {
			return err
		}
		riders := seal()
		bases := make([]int64, 1+len(riders))
		bases[0] = req.cookieOrder
		for i, r := range riders {
			bases[i+1] = r.base
		}
		orders, err := g.NextCookieOrders(ctx, bases)
		if err != nil {
			return err
		}
		for i, r := range riders {
			r.order = orders[i+1]
		}
		// 0 when this pull's own cookie cannot grow: the transaction still
		// commits, for the riders' cookies.
		ans.order = orders[0]
		return nil
	})
	return ans, err
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
		s.mapErrs.report(slog.LevelError, s.mapping().Hash, "view", se.Source, http.MethodGet, st.Path, st.Status, st.Location)
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
	n, err := encodePullResponse(w, ans.order, ans.lmids, ans.entries)
	if err != nil {
		c.log.Info("client went away while the pull was written", "error", err, "bytes", n)
		return
	}
	s.metrics.pullEntries.Observe(float64(len(ans.entries)))
	s.metrics.pullBytes.Observe(float64(n))
	c.log.Info("pull", "entries", len(ans.entries), "clients", len(ans.lmids), "bytes", n, "cookie", ans.order,
		"duration", time.Since(c.start))
}

// encodePullResponse writes the reset-strategy PullResponse by hand: entry
// values are already compact JSON and are copied, not re-encoded. It
// returns the bytes written.
func encodePullResponse(dst io.Writer, order int64, lmids map[string]int64, entries []clientview.Entry) (int64, error) {
	cw := &countingWriter{w: dst}
	b := bufio.NewWriterSize(cw, 32<<10)
	b.WriteString(`{"cookie":{"order":`)
	b.WriteString(strconv.FormatInt(order, 10))
	b.WriteString(`},"lastMutationIDChanges":{`)
	ids := make([]string, 0, len(lmids))
	for id := range lmids {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		writeJSONString(b, id)
		b.WriteByte(':')
		b.WriteString(strconv.FormatInt(lmids[id], 10))
	}
	b.WriteString(`},"patch":[{"op":"clear"}`)
	for _, e := range entries {
		b.WriteString(`,{"op":"put","key":`)
		writeJSONString(b, e.Key)
		b.WriteString(`,"value":`)
		b.Write(e.Value)
		b.WriteByte('}')
	}
	b.WriteString("]}")
	err := b.Flush() // the first write error sticks and shows here
	return cw.n, err
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
