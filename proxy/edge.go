package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/config"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/gate"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/identity"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// exchange is a push or pull that passed the shared preamble (begin): its body
// is read and valid, the sidecar serves, and the caller is known.
type exchange struct {
	identity.Caller
	start    time.Time
	endpoint string
	log      *slog.Logger // carries endpoint, request id and client group
	// mem holds the request's bytes in the process-wide budget (its body,
	// then the view it fetches); the handler releases it when done.
	mem *budget.Lease

	// credentialsRechecked: the auth endpoint was asked again during this
	// push (at most once, before consuming a rejection).
	credentialsRechecked bool
}

// protocolRequest is a push or pull body.
type protocolRequest interface {
	// version is the request's pushVersion or pullVersion (nil: absent).
	version() *int
	// validate checks the fields (and keeps what it parses).
	validate() *problem.Error
	clientGroupID() string
}

// begin runs what every push and pull goes through before its own work,
// as separate steps in this order: refuse what a cross-site page could
// send, check that the sidecar serves (and, when needs is not nil, that the
// breaker of that kind of upstream call is not open), identify the caller
// from the headers alone, and only then read the body (bounded) and check
// its version and fields.
// When a step refuses the request, begin answers it and returns false.
func (s *core) begin(w http.ResponseWriter, r *http.Request, endpoint string, req protocolRequest, needs *upstream.Client) (*exchange, bool) {
	c := &exchange{start: time.Now(), endpoint: endpoint}
	c.RequestID = identity.RequestID(r)
	c.log = s.log.With("endpoint", endpoint, "request_id", c.RequestID, "trace_id", w.Header().Get("X-Trace-ID"))
	if c.RequestID != "" {
		w.Header().Set("X-Request-ID", c.RequestID) // and in every error body
	}
	edge := s.parts.Identity
	if p := edge.SameSiteJSON(r); p != nil {
		s.fail(w, c, p)
		return nil, false
	}
	if p := s.checkServing(); p != nil {
		s.fail(w, c, p)
		return nil, false
	}
	if needs != nil && needs.Suspended() {
		s.fail(w, c, verdict.Suspended(s.parts.Upstream.RetryAfter()))
		return nil, false
	}
	// Who is calling is decided from the headers alone, before the body is
	// read: an anonymous request costs a few KiB, whatever its body.
	caller, p := edge.Identify(r.Context(), r)
	if p != nil {
		s.fail(w, c, p)
		return nil, false
	}
	c.Caller = caller
	// The bytes are the caller's: fairness between callers is keyed on
	// who is calling, decided above from the headers alone.
	c.mem = s.budget.Lease(caller.Key())
	refuse := func(p *problem.Error) (*exchange, bool) {
		c.mem.Release()
		s.fail(w, c, p)
		return nil, false
	}
	var readBy time.Time
	if s.cfg.HTTPReadTimeout > 0 {
		readBy = c.start.Add(s.cfg.HTTPReadTimeout)
	}
	if p := decodeBody(w, r, s.cfg.MaxBodyBytes, c.mem, readBy, req); p != nil {
		return refuse(p)
	}
	switch v := req.version(); {
	case v == nil:
		return refuse(problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%sVersion is required", endpoint))
	case *v != 1:
		c.mem.Release()
		problem.WriteVersionNotSupported(w, endpoint)
		return nil, false
	}
	if p := req.validate(); p != nil {
		return refuse(p)
	}
	c.log = c.log.With("client_group", req.clientGroupID())
	if s.tracer != nil {
		trace.SpanFromContext(r.Context()).SetAttributes(attribute.String("replicache.client_group", req.clientGroupID()))
	}
	return c, true
}

// maxIDLen bounds client, client group and mutator names: real ones are
// short, and they end up in the database and in logs.
const maxIDLen = 512

func validID(field, v string) *problem.Error {
	switch {
	case v == "":
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%s is required", field)
	case len(v) > maxIDLen:
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%s is longer than %d bytes", field, maxIDLen)
	case !utf8.ValidString(v):
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%s is not valid UTF-8", field)
	case strings.ContainsFunc(v, unicode.IsControl):
		// Ids reach the database, logs and header values (the idempotency
		// key): a NUL or a line break breaks each of them.
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%s contains a control character", field)
	}
	return nil
}

// failStore answers a push or pull whose bookkeeping step failed.
func (s *core) failStore(w http.ResponseWriter, c *exchange, err error, groupID string) {
	log := c.log
	switch {
	case errors.Is(err, store.ErrGroupDeleted):
		problem.WriteClientStateNotFound(w)
	case errors.Is(err, store.ErrClientPruned):
		log.Info("a client pruned as idle came back; it starts over")
		problem.WriteClientStateNotFound(w)
	case errors.Is(err, store.ErrGroupForbidden), errors.Is(err, store.ErrClientForbidden):
		// One answer for both: which one it is would tell a stranger
		// whose ids exist.
		log.Info("refused: not the caller's", "error", err)
		s.fail(w, c, problem.Errorf(http.StatusForbidden, problem.Forbidden, "the client group or a client of this request belongs to someone else"))
	case errors.As(err, new(*store.TooManyClientsError)):
		s.fail(w, c, problem.Errorf(http.StatusBadRequest, problem.TooManyClients,
			"%v; the limit is SIDECAR_MAX_CLIENTS_PER_GROUP (idle clients are pruned after a day)", err))
	case errors.Is(err, context.Canceled):
		log.Info("client went away", "error", err)
	case store.IsLockTimeout(err), errors.Is(err, gate.ErrBusy):
		s.metrics.groupBusy.Inc()
		s.fail(w, c, problem.Unavailable(problem.GroupBusy, 1, "client group %s is busy with another push or pull; retry", groupID))
	default:
		log.Error("bookkeeping database error", "error", err)
		s.fail(w, c, problem.Unavailable(problem.DatabaseUnavailable, 1, "the sidecar's database is unavailable; retry later"))
	}
}

// fail logs, counts and writes p: refusals at info level, the sidecar's
// or the upstream's failures (5xx) at warn.
func (s *core) fail(w http.ResponseWriter, c *exchange, p *problem.Error) {
	level := slog.LevelInfo
	if p.Status >= 500 {
		level = slog.LevelWarn
	}
	c.log.Log(context.Background(), level, "request failed", "status", p.Status, "error", p.Code, "message", p.Message)
	s.metrics.requestErrors.WithLabelValues(c.endpoint, string(p.Code)).Inc()
	if p.Code == problem.MemoryBudgetExhausted && (c.endpoint == endpointPush || c.endpoint == endpointPull) {
		s.metrics.budgetRefusals.WithLabelValues(c.endpoint).Inc()
	}
	problem.Write(w, p)
}

// failOther answers a request that is not a push or pull (poke stream,
// invalidate) with p.
func (s *core) failOther(w http.ResponseWriter, endpoint string, log *slog.Logger, p *problem.Error) {
	s.fail(w, &exchange{endpoint: endpoint, log: log}, p)
}

func postOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			problem.Write(w, problem.Errorf(http.StatusMethodNotAllowed, problem.MethodNotAllowed, "%s %s: only POST is allowed", r.Method, r.URL.Path))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// cors answers CORS preflights and marks responses for the configured exact
// origins, with credentials allowed. With no origins configured it adds
// nothing at all and h sees every request, OPTIONS included.
func (s *core) cors(h http.Handler) http.Handler {
	origins := s.cfg.CORSOrigins
	if len(origins) == 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		allowed := origin != "" && slices.Contains(origins, origin)
		hdr := w.Header()
		hdr.Add("Vary", "Origin")
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		if preflight {
			hdr.Add("Vary", "Access-Control-Request-Method")
			hdr.Add("Vary", "Access-Control-Request-Headers")
			if !allowed {
				problem.Write(w, problem.Errorf(http.StatusForbidden, problem.Forbidden, "origin %q is not allowed (SIDECAR_CORS_ORIGINS)", origin))
				return
			}
			hdr.Set("Access-Control-Allow-Origin", origin)
			hdr.Set("Access-Control-Allow-Credentials", "true")
			hdr.Set("Access-Control-Allow-Methods", "POST, OPTIONS")
			if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
				hdr.Set("Access-Control-Allow-Headers", sanitizeHeaderList(req))
			}
			hdr.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if allowed {
			hdr.Set("Access-Control-Allow-Origin", origin)
			hdr.Set("Access-Control-Allow-Credentials", "true")
			hdr.Set("Access-Control-Expose-Headers", "Retry-After, X-Request-ID, X-Trace-ID")
		}
		h.ServeHTTP(w, r)
	})
}

// sanitizeHeaderList keeps the header names of a preflight's
// Access-Control-Request-Headers that are valid tokens.
func sanitizeHeaderList(list string) string {
	var out []string
	for _, h := range strings.Split(list, ",") {
		if h = strings.TrimSpace(h); config.ValidToken(h) {
			out = append(out, h)
		}
	}
	return strings.Join(out, ", ")
}

// decodeBody reads at most limit bytes of JSON into dst, charging mem for
// them (nil: not charged), at the pace pacedBody sets and by readBy at the
// latest (zero: no bound of its own). While it reads, mem is
// interruptible: pre-empting it ends the read, and the request answers 503.
// It refuses trailing data after the value, and names the problem in the
// returned error.
//
// The body is read into one buffer, sized by Content-Length when the client
// sent one, and decoded from there: about twice the body in memory at the
// peak (the buffer, and the args kept as raw bytes), where a streaming
// decoder's doubling buffer took four times.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, mem *budget.Lease, readBy time.Time, dst any) *problem.Error {
	tooLarge := problem.Errorf(http.StatusRequestEntityTooLarge, problem.PayloadTooLarge, "request body is larger than %d bytes (SIDECAR_MAX_BODY_BYTES)", limit)
	if r.ContentLength > limit {
		return tooLarge
	}
	if mem != nil && r.ContentLength > mem.Limit() {
		return verdict.BudgetProblem(&budget.TooLargeError{Limit: mem.Limit()}, "request body")
	}
	paced := newPacedBody(w, http.MaxBytesReader(w, r.Body, limit), readBy)
	buf, p := readBody(r, paced, mem, tooLarge)
	if paced.end() {
		// Cut off (or pre-empted as its last byte came): nothing more is
		// read from this connection, and it closes after the answer.
		w.Header().Set("Connection", "close")
		if p == nil {
			p = readError(budget.ErrPreempted, tooLarge)
		}
	}
	if p != nil {
		return p
	}
	err := json.Unmarshal(buf, dst)
	var syntax *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	bad := func(format string, args ...any) *problem.Error {
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, format, args...)
	}
	switch {
	case err == nil:
		return nil
	case len(bytes.TrimSpace(buf)) == 0:
		return bad("empty request body")
	case errors.As(err, &syntax) && strings.Contains(syntax.Error(), "after top-level value"):
		return bad("unexpected data after the JSON value (byte %d)", syntax.Offset)
	case errors.As(err, &syntax) && syntax.Offset >= int64(len(buf)):
		return bad("truncated JSON body")
	case errors.As(err, &syntax):
		return bad("malformed JSON at byte %d: %v", syntax.Offset, err)
	case errors.As(err, &typeErr):
		return bad("field %q: JSON %s where %s was expected", typeErr.Field, typeErr.Value, typeErr.Type)
	default:
		return bad("decoding request body: %v", err)
	}
}

// readBody reads the body from paced, charging mem (nil: not charged),
// which is interruptible meanwhile: pre-empting it stops paced.
func readBody(r *http.Request, paced *pacedBody, mem *budget.Lease, tooLarge *problem.Error) ([]byte, *problem.Error) {
	var body io.Reader = paced
	if mem != nil {
		defer mem.Interruptible(paced.stop)()
		// Charged as the bytes arrive, not as declared: a slow client
		// holds no more of the budget than it has sent.
		body = mem.Reader(r.Context(), body)
	}
	if r.ContentLength > 0 {
		buf := make([]byte, r.ContentLength)
		if n, err := io.ReadFull(body, buf); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return nil, problem.Errorf(http.StatusBadRequest, problem.BadRequest, "the body ended after %d of %d bytes (Content-Length)", n, r.ContentLength)
			}
			return nil, readError(err, tooLarge)
		}
		return buf, nil
	}
	buf, err := io.ReadAll(body)
	if err != nil {
		return nil, readError(err, tooLarge)
	}
	return buf, nil
}

// readError names why a request body could not be read.
func readError(err error, tooLarge *problem.Error) *problem.Error {
	var netErr net.Error
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		return tooLarge
	case errors.Is(err, budget.ErrPreempted):
		return problem.Unavailable(problem.MemoryBudgetExhausted, 1,
			"this request was stopped to make room for other callers: yours hold more than a fair share of the sidecar's in-flight bytes (SIDECAR_MAX_INFLIGHT_VIEW_BYTES); retry in a moment")
	case errors.Is(err, budget.ErrBusy), errors.As(err, new(*budget.TooLargeError)):
		return verdict.BudgetProblem(err, "request body")
	case errors.Is(err, errBodyTooSlow):
		return problem.Errorf(http.StatusRequestTimeout, problem.RequestTimeout,
			"the request body arrived slower than %d KiB/s for more than %s, or not at all", bodyMinRate>>10, bodySlack)
	case errors.As(err, &netErr) && netErr.Timeout():
		return problem.Errorf(http.StatusRequestTimeout, problem.RequestTimeout, "the request body did not arrive in time (SIDECAR_HTTP_READ_TIMEOUT)")
	default:
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "reading request body: %v", err)
	}
}

// A request body must keep arriving, or it is cut off with 408 and its
// bytes go back to the in-flight budget, whatever SIDECAR_HTTP_READ_TIMEOUT
// allows (that bounds the whole request; this, a body that stalls or
// drips). The body may fall behind bodyMinRate by at most bodySlack: it
// has bodySlack of time in hand, spends it while a read waits, and earns
// one second for every bodyMinRate bytes, never more than bodySlack in
// hand. So a body that sends nothing for bodySlack is cut off, and so is
// one that trickles below bodyMinRate for long enough; a body of up to
// bodySlack × bodyMinRate (40 KiB: most pushes and every pull) can take
// bodySlack whatever its pace. A stall or a drip is what holds memory
// without finishing: a caller's several requests can be pre-empted when
// others need the room, but its one request cannot (see package budget),
// and before this it held its bytes for the whole read timeout.
const (
	// bodyMinRate: 8 KiB/s, about the upload of a 2G (EDGE) connection,
	// the slowest network a Replicache client syncs over in practice.
	bodyMinRate = 8 << 10
	// bodySlack: 5 s, a few TCP retransmissions on a lossy mobile link.
	// A longer pause is rarer than the client's retry after a 408.
	bodySlack = 5 * time.Second
)

// errBodyTooSlow: the body fell behind its pace (pacedBody).
var errBodyTooSlow = errors.New("the request body arrived too slowly")

// aLongTimeAgo is a read deadline that has passed: it ends a blocked read
// at once.
var aLongTimeAgo = time.Unix(1, 0)

// pacedBody reads a request body with the connection's read deadline set
// before each read, from the time the body has in hand (see bodySlack),
// and never later than readBy. stop ends a read in progress (and every
// later one) with budget.ErrPreempted; end says what the connection's
// deadline is for the rest of the request. When the ResponseWriter cannot
// set deadlines (a test's recorder) it reads without them.
type pacedBody struct {
	r      io.Reader
	rc     *http.ResponseController
	readBy time.Time     // zero: no bound of its own
	ahead  time.Duration // time in hand: at most bodySlack

	mu      sync.Mutex // orders stop and end with setting deadlines
	stopped bool
	cut     bool // too slow: nothing more is read
	eof     bool // the whole body was read
	done    bool // ended: the deadline is no longer the body's
	noDL    bool // the ResponseWriter cannot set deadlines
}

func newPacedBody(w http.ResponseWriter, r io.Reader, readBy time.Time) *pacedBody {
	return &pacedBody{r: r, rc: http.NewResponseController(w), readBy: readBy, ahead: bodySlack}
}

func (p *pacedBody) Read(b []byte) (int, error) {
	start := time.Now()
	deadline, paced := start.Add(p.ahead), true
	if !p.readBy.IsZero() && !deadline.Before(p.readBy) {
		deadline, paced = p.readBy, false
	}
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return 0, budget.ErrPreempted
	}
	if !p.noDL {
		// Set under mu: a stop that comes after it overrides it, and one
		// that came before it was seen above.
		p.noDL = p.rc.SetReadDeadline(deadline) != nil
	}
	p.mu.Unlock()
	n, err := p.r.Read(b)
	p.ahead = min(bodySlack, p.ahead-time.Since(start)+time.Duration(n)*time.Second/bodyMinRate)
	if err == nil {
		return n, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var netErr net.Error
	switch {
	case p.stopped:
		return n, budget.ErrPreempted
	case paced && errors.As(err, &netErr) && netErr.Timeout():
		p.cut = true
		return n, errBodyTooSlow
	case errors.Is(err, io.EOF):
		p.eof = true
	}
	return n, err
}

// stop ends the body's read in progress, and every later one, with
// budget.ErrPreempted. It is the lease's stop while the body is read.
func (p *pacedBody) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.stopped = true
	if !p.noDL {
		_ = p.rc.SetReadDeadline(aLongTimeAgo)
	}
}

// end ends the body's pace, once the lease's stop can no longer come, and
// reports whether the body was cut off: too slow, or stopped (even as its
// last byte came). Then the connection's read deadline is left in the
// past, and the caller closes the connection after its answer: the server
// must not wait for the rest of the body, and a read that the deadline
// ended has cancelled the connection's context, which the next request on
// it would inherit. A body read to its end leaves the connection without
// a deadline, as net/http leaves it while it reads ahead for the next
// request (a deadline then would cancel this request when it passed); any
// other body has readBy again, as the server set it for the whole request.
func (p *pacedBody) end() (cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = true
	cut = p.cut || p.stopped
	switch {
	case p.noDL:
	case cut:
		_ = p.rc.SetReadDeadline(aLongTimeAgo)
	case p.eof:
		_ = p.rc.SetReadDeadline(time.Time{})
	default:
		_ = p.rc.SetReadDeadline(p.readBy)
	}
	return cut
}

// errDetail is an error's whole story for the log: an upstream call's
// Detail (which may name the upstream), or the error itself.
func errDetail(err error) string {
	var ce *upstream.CallError
	switch {
	case errors.As(err, &ce):
		return ce.Detail()
	case err != nil:
		return err.Error()
	}
	return ""
}
