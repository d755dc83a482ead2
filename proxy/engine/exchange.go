package engine

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/body"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/gate"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/identity"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// Exchange is a push or pull that passed the shared preamble (Begin): its body
// is read and valid, the sidecar serves, and the caller is known.
type Exchange struct {
	identity.Caller
	Start    time.Time
	Endpoint string
	Log      *slog.Logger // carries endpoint, request id and client group
	// Mem holds the request's bytes in the process-wide budget (its body,
	// then the view it fetches); the handler releases it when done.
	Mem *budget.Lease
}

// ProtocolRequest is a push or pull body.
type ProtocolRequest interface {
	// Version is the request's pushVersion or pullVersion (nil: absent).
	Version() *int
	// Validate checks the fields (and keeps what it parses).
	Validate() *problem.Error
	GroupID() string
}

// Begin runs what every push and pull goes through before its own work,
// as separate steps in this order: refuse what a cross-site page could
// send, check that the sidecar serves (and, when needs is not nil, that the
// breaker of that kind of upstream call is not open), identify the caller
// from the headers alone, and only then read the body (bounded) and check
// its version and fields.
// When a step refuses the request, Begin answers it and returns false.
func (s *Core) Begin(w http.ResponseWriter, r *http.Request, endpoint string, req ProtocolRequest, needs *upstream.Client) (*Exchange, bool) {
	c := &Exchange{Start: time.Now(), Endpoint: endpoint}
	c.RequestID = identity.RequestID(r)
	c.Log = s.Log.With("endpoint", endpoint, "request_id", c.RequestID, "trace_id", w.Header().Get("X-Trace-ID"))
	if c.RequestID != "" {
		w.Header().Set("X-Request-ID", c.RequestID) // and in every error body
	}
	edge := s.Parts.Identity
	if p := edge.SameSiteJSON(r); p != nil {
		s.Fail(w, c, p)
		return nil, false
	}
	if p := s.CheckServing(); p != nil {
		s.Fail(w, c, p)
		return nil, false
	}
	if needs != nil && needs.Suspended() {
		s.Fail(w, c, verdict.Suspended(s.Parts.Upstream.RetryAfter()))
		return nil, false
	}
	// Who is calling is decided from the headers alone, before the body is
	// read: an anonymous request costs a few KiB, whatever its body.
	caller, p := edge.Identify(r.Context(), r)
	if p != nil {
		s.Fail(w, c, p)
		return nil, false
	}
	c.Caller = caller
	// The bytes are the caller's: fairness between callers is keyed on
	// who is calling, decided above from the headers alone.
	c.Mem = s.Budget.Lease(caller.Key())
	refuse := func(p *problem.Error) (*Exchange, bool) {
		c.Mem.Release()
		s.Fail(w, c, p)
		return nil, false
	}
	var readBy time.Time
	if s.Cfg.HTTPReadTimeout > 0 {
		readBy = c.Start.Add(s.Cfg.HTTPReadTimeout)
	}
	if p := body.Decode(w, r, s.Cfg.MaxBodyBytes, c.Mem, readBy, req); p != nil {
		return refuse(p)
	}
	switch v := req.Version(); {
	case v == nil:
		return refuse(problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%sVersion is required", endpoint))
	case *v != 1:
		c.Mem.Release()
		problem.WriteVersionNotSupported(w, endpoint)
		return nil, false
	}
	if p := req.Validate(); p != nil {
		return refuse(p)
	}
	c.Log = c.Log.With("client_group", req.GroupID())
	if s.Tracer != nil {
		trace.SpanFromContext(r.Context()).SetAttributes(attribute.String("replicache.client_group", req.GroupID()))
	}
	return c, true
}

// MaxIDLen bounds client, client group and mutator names: real ones are
// short, and they end up in the database and in logs.
const MaxIDLen = 512

// ValidID checks an id the client chose (a client group, a client, a
// mutator name) before it reaches the database, a log or a header: field
// names it in the 400 answer.
func ValidID(field, v string) *problem.Error {
	switch {
	case v == "":
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%s is required", field)
	case len(v) > MaxIDLen:
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%s is longer than %d bytes", field, MaxIDLen)
	case !utf8.ValidString(v):
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%s is not valid UTF-8", field)
	case strings.ContainsFunc(v, unicode.IsControl):
		// Ids reach the database, logs and header values (the idempotency
		// key): a NUL or a line break breaks each of them.
		return problem.Errorf(http.StatusBadRequest, problem.BadRequest, "%s contains a control character", field)
	}
	return nil
}

// FailStore answers a push or pull whose bookkeeping step failed.
func (s *Core) FailStore(w http.ResponseWriter, c *Exchange, err error, groupID string) {
	log := c.Log
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
		s.Fail(w, c, problem.Errorf(http.StatusForbidden, problem.Forbidden, "the client group or a client of this request belongs to someone else"))
	case errors.As(err, new(*store.TooManyClientsError)):
		s.Fail(w, c, problem.Errorf(http.StatusBadRequest, problem.TooManyClients,
			"%v; the limit is SIDECAR_MAX_CLIENTS_PER_GROUP (idle clients are pruned after a day)", err))
	case errors.Is(err, context.Canceled):
		log.Info("client went away", "error", err)
	case store.IsLockTimeout(err), errors.Is(err, gate.ErrBusy):
		s.Metrics.GroupBusy.Inc()
		s.Fail(w, c, problem.Unavailable(problem.GroupBusy, 1, "client group %s is busy with another push or pull; retry", groupID))
	default:
		log.Error("bookkeeping database error", "error", err)
		s.Fail(w, c, problem.Unavailable(problem.DatabaseUnavailable, 1, "the sidecar's database is unavailable; retry later"))
	}
}

// Fail logs, counts and writes p: refusals at info level, the sidecar's
// or the upstream's failures (5xx) at warn.
func (s *Core) Fail(w http.ResponseWriter, c *Exchange, p *problem.Error) {
	level := slog.LevelInfo
	if p.Status >= 500 {
		level = slog.LevelWarn
	}
	c.Log.Log(context.Background(), level, "request failed", "status", p.Status, "error", p.Code, "message", p.Message)
	s.Metrics.RequestErrors.WithLabelValues(c.Endpoint, string(p.Code)).Inc()
	if p.Code == problem.MemoryBudgetExhausted && (c.Endpoint == metrics.EndpointPush || c.Endpoint == metrics.EndpointPull) {
		s.Metrics.BudgetRefusals.WithLabelValues(c.Endpoint).Inc()
	}
	problem.Write(w, p)
}

// FailOther answers a request that is not a push or pull (poke stream,
// invalidate) with p.
func (s *Core) FailOther(w http.ResponseWriter, endpoint string, log *slog.Logger, p *problem.Error) {
	s.Fail(w, &Exchange{Endpoint: endpoint, Log: log}, p)
}
