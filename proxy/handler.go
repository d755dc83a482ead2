package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/gate"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
)

// call is a push or pull that passed the shared preamble (begin): its body
// is read and valid, the sidecar serves, and the caller is known.
type call struct {
	start     time.Time
	log       *slog.Logger // carries endpoint, request id and client group
	requestID string
	userID    string
	viaHeader bool        // identified by the trusted header, not the auth path
	fwd       http.Header // sent with every upstream call it causes
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
	validate() *httpError
	clientGroupID() string
}

// begin runs what every push and pull goes through before its own work,
// as separate steps in this order: refuse what a cross-site page could
// send, check that the sidecar serves (and, when needs is not nil, that the
// breaker of that kind of upstream call is not open), identify the caller
// from the headers alone, and only then read the body (bounded) and check
// its version and fields.
// When a step refuses the request, begin answers it and returns false.
func (s *Sidecar) begin(w http.ResponseWriter, r *http.Request, endpoint string, req protocolRequest, needs *upstream.Client) (*call, bool) {
	c := &call{start: time.Now(), requestID: replicacheRequestID(r)}
	c.log = s.log.With("endpoint", endpoint, "request_id", c.requestID, "trace_id", w.Header().Get("X-Trace-ID"))
	if c.requestID != "" {
		w.Header().Set("X-Request-ID", c.requestID) // and in every error body
	}
	if herr := s.sameSiteJSON(r); herr != nil {
		s.fail(w, c.log, herr)
		return nil, false
	}
	if herr := s.checkServing(); herr != nil {
		s.fail(w, c.log, herr)
		return nil, false
	}
	if herr := s.suspended(needs); herr != nil {
		s.fail(w, c.log, herr)
		return nil, false
	}
	// Who is calling is decided from the headers alone, before the body is
	// read: an anonymous request costs a few KiB, whatever its body.
	c.fwd = forwardHeaders(r, s.cfg.ForwardHeaders, c.requestID)
	userID, viaHeader, herr := s.auth.identify(r.Context(), r, c.fwd)
	if herr != nil {
		s.fail(w, c.log, herr)
		return nil, false
	}
	c.mem = s.budget.Lease()
	refuse := func(herr *httpError) (*call, bool) {
		c.mem.Release()
		if herr.Code == "MemoryBudgetExhausted" {
			s.metrics.budgetRefusals.WithLabelValues(endpoint).Inc()
		}
		s.fail(w, c.log, herr)
		return nil, false
	}
	if herr := decodeBody(w, r, s.cfg.MaxBodyBytes, c.mem, req); herr != nil {
		return refuse(herr)
	}
	switch v := req.version(); {
	case v == nil:
		return refuse(errorf(http.StatusBadRequest, "BadRequest", "%sVersion is required", endpoint))
	case *v != 1:
		c.mem.Release()
		writeVersionNotSupported(w, endpoint)
		return nil, false
	}
	if herr := req.validate(); herr != nil {
		return refuse(herr)
	}
	c.log = c.log.With("client_group", req.clientGroupID())
	if s.tracer != nil {
		trace.SpanFromContext(r.Context()).SetAttributes(attribute.String("replicache.client_group", req.clientGroupID()))
	}
	c.userID, c.viaHeader = userID, viaHeader
	return c, true
}

// maxIDLen bounds client, client group and mutator names: real ones are
// short, and they end up in the database and in logs.
const maxIDLen = 512

func validID(field, v string) *httpError {
	switch {
	case v == "":
		return errorf(http.StatusBadRequest, "BadRequest", "%s is required", field)
	case len(v) > maxIDLen:
		return errorf(http.StatusBadRequest, "BadRequest", "%s is longer than %d bytes", field, maxIDLen)
	case !utf8.ValidString(v):
		return errorf(http.StatusBadRequest, "BadRequest", "%s is not valid UTF-8", field)
	case strings.ContainsFunc(v, unicode.IsControl):
		// Ids reach the database, logs and header values (the idempotency
		// key): a NUL or a line break breaks each of them.
		return errorf(http.StatusBadRequest, "BadRequest", "%s contains a control character", field)
	}
	return nil
}

// sameSiteJSON refuses what a cross-site form could send with the user's
// cookies. Push and pull take only Content-Type: application/json (the
// Replicache client always sends it), which a cross-site page cannot send
// without a CORS preflight; and with SIDECAR_CORS_ORIGINS set, a request
// whose Origin is not listed, or that the browser marks cross-site
// (Sec-Fetch-Site), is refused before anything reaches the upstream.
func (s *Sidecar) sameSiteJSON(r *http.Request) *httpError {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return errorf(http.StatusUnsupportedMediaType, "UnsupportedMediaType",
			"push and pull take Content-Type: application/json, not %q", r.Header.Get("Content-Type"))
	}
	return s.sameSite(r)
}

// failStore answers a push or pull whose bookkeeping step failed.
func (s *Sidecar) failStore(w http.ResponseWriter, log *slog.Logger, err error, groupID string) {
	switch {
	case errors.Is(err, store.ErrGroupDeleted):
		writeClientStateNotFound(w)
	case errors.Is(err, store.ErrClientPruned):
		log.Info("a client pruned as idle came back; it starts over")
		writeClientStateNotFound(w)
	case errors.Is(err, store.ErrGroupForbidden), errors.Is(err, store.ErrClientForbidden):
		// One answer for both: which one it is would tell a stranger
		// whose ids exist.
		log.Info("refused: not the caller's", "error", err)
		s.fail(w, log, errorf(http.StatusForbidden, "Forbidden", "the client group or a client of this request belongs to someone else"))
	case errors.As(err, new(*store.TooManyClientsError)):
		s.fail(w, log, errorf(http.StatusBadRequest, "TooManyClients",
			"%v; the limit is SIDECAR_MAX_CLIENTS_PER_GROUP (idle clients are pruned after a day)", err))
	case errors.Is(err, context.Canceled):
		log.Info("client went away", "error", err)
	case store.IsLockTimeout(err), errors.Is(err, gate.ErrBusy):
		s.metrics.groupBusy.Inc()
		s.fail(w, log, &httpError{Status: http.StatusServiceUnavailable, Code: "GroupBusy",
			Message: fmt.Sprintf("client group %s is busy with another push or pull; retry", groupID), RetryAfter: 1})
	default:
		log.Error("bookkeeping database error", "error", err)
		s.fail(w, log, &httpError{Status: http.StatusServiceUnavailable, Code: "DatabaseUnavailable",
			Message: "the sidecar's database is unavailable; retry later", RetryAfter: 1})
	}
}

// fail logs and writes e: refusals at info level, the sidecar's or the
// upstream's failures (5xx) at warn.
func (s *Sidecar) fail(w http.ResponseWriter, log *slog.Logger, e *httpError) {
	level := slog.LevelInfo
	if e.Status >= 500 {
		level = slog.LevelWarn
	}
	log.Log(context.Background(), level, "request failed", "status", e.Status, "error", e.Code, "message", e.Message)
	writeError(w, e)
}

// replicacheRequestID returns the client's request id, used to correlate
// logs and upstream calls (it is not unique: see the protocol notes).
func replicacheRequestID(r *http.Request) string {
	id := r.Header.Get("X-Replicache-RequestID")
	if len(id) > maxIDLen {
		id = id[:maxIDLen]
	}
	return id
}
