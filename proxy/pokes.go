package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/config"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/identity"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/poke"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/sse"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/tracing"
)

// pokeWriteTimeout bounds each write to a poke stream, and so does the
// heartbeat interval when shorter (but never below minPokeWriteTimeout, so
// a busy moment does not end a healthy stream): a write still blocked when
// the next heartbeat is due means the client does not read. (A client that stops
// reading is noticed only once the socket buffers between them are full;
// a vanished one when TCP gives up on the connection, within a minute on
// the public listener: see cmd/replicache-sidecar. SIDECAR_POKE_MAX_LIFETIME
// bounds the rest.)
const (
	pokeWriteTimeout    = 10 * time.Second
	minPokeWriteTimeout = time.Second
)

// pokeServer serves the poke streams and the invalidate hook.
type pokeServer struct {
	*engine.Core
	streams *sse.Writer // writes the streams served on their own connections
}

func newPokeServer(c *engine.Core) *pokeServer {
	p := &pokeServer{Core: c}
	p.streams = sse.New(sse.Options{Heartbeat: c.Cfg.PokeHeartbeat, WriteTimeout: p.pokeWriteTimeout(), Stop: c.Hub.Done(),
		Ended: p.streamEnded, Poked: c.Metrics.Pokes.Inc})
	return p
}

func (s *pokeServer) pokeWriteTimeout() time.Duration {
	return min(pokeWriteTimeout, max(minPokeWriteTimeout, s.Cfg.PokeHeartbeat))
}

// streamGroup is the client group a poke stream names (its clientGroupID
// query parameter; "" when none): its streams are counted for the group,
// and the lag of the changes that poke it is measured. Validated as a
// push's or pull's: a bad one answers 400.
func streamGroup(r *http.Request) (string, *problem.Error) {
	q := r.URL.Query()
	if !q.Has("clientGroupID") {
		return "", nil
	}
	group := q.Get("clientGroupID")
	if p := engine.ValidID("clientGroupID", group); p != nil {
		return "", p
	}
	return group, nil
}

// handlePoke serves a poke stream: Server-Sent Events, one "poke" event
// whenever the client should pull, a comment as heartbeat. The caller is
// identified as for push and pull, before the stream opens.
//
// Over HTTP/1.1 the stream is served on the connection itself, taken over
// from the server, and written by the process's one stream writer
// (package sse): an idle stream then costs its socket and a few hundred
// bytes, not a goroutine with its buffers and a timer. Over HTTP/2 (whose
// streams share a connection), HTTP/1.0, or behind a ResponseWriter that
// cannot let go of its connection, this handler writes the stream itself
// until it ends. Both write the same events, keep the same rules and end
// for the same reasons.
func (s *pokeServer) handlePoke(w http.ResponseWriter, r *http.Request) {
	log := s.Log.With("endpoint", metrics.EndpointPoke, "request_id", identity.RequestID(r), "trace_id", w.Header().Get("X-Trace-ID"))
	fail := func(p *problem.Error) { s.FailOther(w, metrics.EndpointPoke, log, p) }
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		fail(problem.Errorf(http.StatusMethodNotAllowed, problem.MethodNotAllowed, "%s %s: only GET is allowed", r.Method, r.URL.Path))
		return
	}
	if p := s.Parts.Identity.SameSite(r); p != nil {
		fail(p)
		return
	}
	group, p := streamGroup(r)
	if p != nil {
		fail(p)
		return
	}
	// Streams are accepted while the replica drains (the load balancer may
	// still send them); they all end when the server shuts down, and
	// EventSource then reconnects elsewhere by itself. A 503 it would not
	// retry.
	caller, p := s.Parts.Identity.Identify(r.Context(), r)
	if p != nil {
		fail(p)
		return
	}
	if s.serveOwnConnection(w, r, group, caller, log) {
		return
	}
	user := caller.User
	// Slots are shared fairly between callers (poke.Hub): keyed on who is
	// calling, never on ids the caller chose.
	sub, err := s.Hub.Subscribe(caller.Key(), user)
	if p := subscribeProblem(err); p != nil {
		fail(p)
		return
	}
	defer s.Hub.Unsubscribe(sub)
	defer s.Lag.Open(group, user)()
	log.Debug("poke stream open", "user", user)
	why := sse.Serve(w, r, sub, sse.Served{Heartbeat: s.Cfg.PokeHeartbeat, WriteTimeout: s.pokeWriteTimeout(), Stop: s.Hub.Done(),
		Opening: streamOpening(), CatchUp: r.Header.Get("Last-Event-ID") != "", Poked: s.Metrics.Pokes.Inc})
	s.streamEndedAs(sub, why)
}

// serveOwnConnection serves the stream on r's connection, taken over from
// the server and written by s.streams, when r came over HTTP/1.1 and w can
// let go of its connection; it answers a refusal (no slot) itself. handled
// is false when it cannot, having written nothing: the handler serves the
// stream then.
func (s *pokeServer) serveOwnConnection(w http.ResponseWriter, r *http.Request, group string, caller identity.Caller, log *slog.Logger) (handled bool) {
	if r.ProtoMajor != 1 || r.ProtoMinor < 1 || !hijackable(w) {
		return false
	}
	st := s.streams.NewStream()
	sub, err := s.Hub.SubscribeTo(caller.Key(), caller.User, st)
	if p := subscribeProblem(err); p != nil {
		s.FailOther(w, metrics.EndpointPoke, log, p)
		return true
	}
	st.Sub = sub
	sse.Header(w.Header())
	// Hijack leaves the connection without deadlines: the stream outlives
	// the server's read timeout, and each write is bounded by the writer.
	// Anything the client sent after its request is dropped: nothing may
	// follow a stream on its connection.
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		log.Debug("poke stream served by its handler: the connection could not be taken over", "error", err)
		s.Hub.Unsubscribe(sub)
		return false
	}
	if r.Header.Get("Last-Event-ID") != "" {
		st.Poke() // as in handlePoke: a reconnection catches up at once
	}
	log.Debug("poke stream open", "user", caller.User)
	st.OnEnd = s.Lag.Open(group, caller.User) // as handlePoke's stream, for change lag
	s.streams.Start(st, conn, w.Header(), streamOpening())
	return true
}

// streamEnded is told by s.streams that a stream it wrote ended.
func (s *pokeServer) streamEnded(st *sse.Stream, why sse.End) {
	s.Hub.Unsubscribe(st.Sub)
	if st.OnEnd != nil {
		st.OnEnd()
	}
	s.streamEndedAs(st.Sub, why)
}

// streamEndedAs counts a stream's end, and why.
func (s *pokeServer) streamEndedAs(sub *poke.Subscriber, why sse.End) {
	reason := metrics.StreamEndDisconnected
	switch why {
	case sse.WriteFailed:
		reason = metrics.StreamEndWriteFailed
	case sse.Shutdown:
		reason = metrics.StreamEndShutdown
	case sse.ByHub:
		end, _ := sub.End()
		reason = string(end)
	}
	s.Log.Debug("poke stream ended", "endpoint", metrics.EndpointPoke, "user", sub.User, "reason", reason)
	s.Metrics.PokeStreamsEnded.WithLabelValues(reason).Inc()
}

// hijackable reports whether w, or a ResponseWriter it wraps (as
// http.ResponseController finds them), can hand over its connection.
func hijackable(w http.ResponseWriter) bool {
	for {
		switch t := w.(type) {
		case http.Hijacker:
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return false
		}
	}
}

// subscribeProblem is the answer to a stream the hub has no slot for.
func subscribeProblem(err error) *problem.Error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, poke.ErrFull):
		return problem.Unavailable(problem.TooManySubscribers, 5,
			"this sidecar holds as many poke streams as it may (SIDECAR_POKE_MAX_SUBSCRIBERS), and you hold your share of them; retry")
	default:
		return problem.Unavailable(problem.ShuttingDown, 1, "the sidecar is shutting down; retry")
	}
}

// streamOpening is a stream's first event: a comment, and retry: how long
// EventSource waits before it reconnects after the stream ends (at
// shutdown, it reaches another replica); spread, so a replica's streams do
// not all come back in the same second.
func streamOpening() string {
	return fmt.Sprintf(": connected\nretry: %d\n\n", 1000+mathrand.IntN(4000))
}

// handleInvalidate lets the legacy service (a trigger relay, a cron job)
// announce writes that did not go through the sidecar: an empty body pokes
// every subscriber, {"users": [...]} those users'. Only with
// Authorization: Bearer SIDECAR_INVALIDATE_TOKEN; without a configured
// token the endpoint does not exist.
func (s *pokeServer) handleInvalidate(w http.ResponseWriter, r *http.Request) {
	log := s.Log.With("endpoint", metrics.EndpointInvalidate, "trace_id", w.Header().Get("X-Trace-ID"))
	fail := func(p *problem.Error) { s.FailOther(w, metrics.EndpointInvalidate, log, p) }
	if s.Cfg.InvalidateToken == "" {
		problem.Write(w, problem.Errorf(http.StatusNotFound, problem.NotFound, "no such route"))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		fail(problem.Errorf(http.StatusMethodNotAllowed, problem.MethodNotAllowed, "%s %s: only POST is allowed", r.Method, r.URL.Path))
		return
	}
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	// Hashed first, so the comparison takes the same time whatever the
	// token's length.
	got, want := sha256.Sum256([]byte(strings.TrimSpace(token))), sha256.Sum256([]byte(s.Cfg.InvalidateToken))
	if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="replicache-sidecar invalidate"`)
		fail(problem.Errorf(http.StatusUnauthorized, problem.Unauthorized, "the invalidate hook needs Authorization: Bearer <SIDECAR_INVALIDATE_TOKEN>"))
		return
	}
	var body struct {
		Users []string `json:"users"`
		// Sources names view sources (by their path, or a path under
		// one) whose data changed, deletions included: their next read is
		// in full (a delta source) or not skipped (a maxAge source).
		Sources []string `json:"sources"`
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			fail(problem.Errorf(http.StatusRequestEntityTooLarge, problem.PayloadTooLarge, "the body is larger than 1 MiB"))
		} else {
			fail(problem.Errorf(http.StatusBadRequest, problem.BadRequest, "reading the body: %v", err))
		}
		return
	}
	if len(bytes.TrimSpace(raw)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			fail(problem.Errorf(http.StatusBadRequest, problem.BadRequest, `the body must be empty or {"users": ["…"], "sources": ["/api/…"]}: %v`, err))
			return
		}
	}
	var marked []string
	for _, p := range body.Sources {
		if !strings.HasPrefix(p, "/") {
			fail(problem.Errorf(http.StatusBadRequest, problem.BadRequest, "sources: %q is not a path", p))
			return
		}
	}
	for _, p := range body.Sources {
		// As a delete under the path: whatever changed there, deletions too.
		marked = append(marked, s.MarkWrite(http.MethodDelete, p)...)
	}
	slices.Sort(marked)
	marked = slices.Compact(marked)
	if marked == nil {
		marked = []string{}
	}
	if body.Users != nil && len(body.Users) == 0 {
		problem.WriteJSON(w, http.StatusAccepted, map[string]any{"poked": []string{}, "sources": marked})
		return
	}
	// The legacy service made its writes before it called: the count of
	// routed changes moves before the poke (see engine.Core.NoteChange).
	s.NoteChange(body.Users)
	s.Notify(log, metrics.PokeFromInvalidate, body.Users)
	if body.Users == nil {
		problem.WriteJSON(w, http.StatusAccepted, map[string]any{"poked": "all", "sources": marked})
		return
	}
	problem.WriteJSON(w, http.StatusAccepted, map[string]any{"poked": body.Users, "sources": marked})
}

// Bounds on the auth calls made to learn who wrote through the
// pass-through (SIDECAR_POKE_PASSTHROUGH=identified): in flight for one
// client address (before the call, that is all the sidecar knows of the
// writer), and in all. A write past them pokes nobody (counted as busy):
// a writer with writes that fast has a call in flight already, whose poke
// comes after them.
const (
	maxWriterChecksPerAddr = 4
	maxWriterChecks        = 64
)

// writePokes pokes for 2xx writes through the pass-through, under
// SIDECAR_POKE_PASSTHROUGH: identified (only writes whose writer the
// sidecar can identify: the trusted identity header from a trusted proxy,
// or, with SIDECAR_AUTH_PATH, the auth call answering for the write's
// forwarded credentials, made after the API's 2xx, off the response's path,
// and never for a write without credentials), all (every write: the
// trusted header names the writer, if anything does, and nobody is asked;
// an unknown writer's pokes are paced by its address), or off. Scope rules
// then apply to the writer as for pushes. It is safe for concurrent use.
type writePokes struct {
	s *engine.Core

	mu       sync.Mutex
	checking map[string]int // auth calls in flight, by the writer's address key
	checks   int            // in all
}

func newWritePokes(s *engine.Core) *writePokes {
	return &writePokes{s: s, checking: map[string]int{}}
}

// wrote is passthrough.Options.OnWrite: write is a copy of the request.
func (w *writePokes) wrote(write *http.Request) {
	s := w.s
	at := time.Now() // the API has answered it: the change happened
	// Whoever wrote, the view sources under the path are read again.
	s.MarkWrite(write.Method, write.URL.Path)
	if s.Cfg.PokePassthrough == config.PokePassthroughOff {
		return
	}
	log := s.Log.With("endpoint", metrics.EndpointProxy, "trace_id", tracing.IDOf(write.Context()))
	edge := s.Parts.Identity
	anonymous := identity.Caller{Addr: edge.ClientAddr(write)}
	if s.Cfg.PokePassthrough == config.PokePassthroughAll {
		c := anonymous
		if w.namedByHeader(write) {
			if named, p := edge.Identify(write.Context(), write); p == nil {
				c = named
			}
		}
		go w.poke(log, c, at) // off the answer's path: poke notes the change in the database first
		return
	}
	switch { // identified
	case w.namedByHeader(write):
		// Decided from the headers alone: no call.
		c, p := edge.Identify(write.Context(), write)
		if p != nil {
			c = anonymous
		}
		go w.poke(log, c, at)
	case edge.AsksAPI() && w.carriesCredentials(write):
		key := anonymous.Key()
		if !w.startCheck(key) {
			s.Metrics.PokeSkipped.WithLabelValues(metrics.SkippedBusy).Inc()
			return
		}
		go func() {
			defer w.endCheck(key)
			ctx, cancel := context.WithTimeout(write.Context(), s.Cfg.UpstreamTimeout)
			defer cancel()
			c, p := edge.Identify(ctx, write)
			if p != nil {
				c = anonymous
			}
			w.poke(log, c, at)
		}()
	default:
		// Nobody to ask: an anonymous write pokes nobody.
		s.Metrics.PokeSkipped.WithLabelValues(metrics.SkippedUnidentified).Inc()
	}
}

// poke pokes for a write by c at at: under identified, only when c is
// known. The count of routed changes moves first (NoteChange), once the
// write is known to poke someone: a round trip to the database, so it
// runs off the pass-through's answer.
func (w *writePokes) poke(log *slog.Logger, c identity.Caller, at time.Time) {
	known := c.User != "" || c.ViaHeader
	users, someone := w.s.PokeUsers(c.User)
	if (!known && w.s.Cfg.PokePassthrough == config.PokePassthroughIdentified) || !someone {
		w.s.Metrics.PokeSkipped.WithLabelValues(metrics.SkippedUnidentified).Inc()
		return
	}
	w.s.NoteChange(users)
	w.s.PokeForAt(log, metrics.PokeFromPassthrough, c, at)
}

// namedByHeader reports whether the write names its user in the trusted
// identity header (whether it may is the identity edge's to judge).
func (w *writePokes) namedByHeader(write *http.Request) bool {
	h := w.s.Cfg.UserIDHeader
	return h != "" && strings.TrimSpace(write.Header.Get(h)) != ""
}

// carriesCredentials reports whether the write carries a non-empty value
// of a header the auth call is sent (SIDECAR_FORWARD_HEADERS): without one
// the API could only answer that nobody is logged in.
func (w *writePokes) carriesCredentials(write *http.Request) bool {
	for _, h := range w.s.Cfg.ForwardHeaders {
		for _, v := range write.Header.Values(h) {
			if strings.TrimSpace(v) != "" {
				return true
			}
		}
	}
	return false
}

func (w *writePokes) startCheck(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.checks >= maxWriterChecks || w.checking[key] >= maxWriterChecksPerAddr {
		return false
	}
	w.checks++
	w.checking[key]++
	return true
}

func (w *writePokes) endCheck(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.checks--
	if w.checking[key]--; w.checking[key] <= 0 {
		delete(w.checking, key)
	}
}
