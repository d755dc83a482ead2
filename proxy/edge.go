package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/body"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/config"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/gate"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/identity"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
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
	if p := body.Decode(w, r, s.cfg.MaxBodyBytes, c.mem, readBy, req); p != nil {
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
		s.metrics.GroupBusy.Inc()
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
	s.metrics.RequestErrors.WithLabelValues(c.endpoint, string(p.Code)).Inc()
	if p.Code == problem.MemoryBudgetExhausted && (c.endpoint == metrics.EndpointPush || c.endpoint == metrics.EndpointPull) {
		s.metrics.BudgetRefusals.WithLabelValues(c.endpoint).Inc()
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
