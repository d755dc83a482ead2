package proxy

import (
	"context"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/config"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/pull"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/push"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/compress"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/passthrough"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/tracing"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// Config is every setting of the sidecar (package config reads and checks
// them); LoadConfig reads it from the environment.
type Config = config.Config

// LoadConfig reads the configuration from environ (variable name → value),
// loads the mapping file, and checks everything (config.Load).
func LoadConfig(environ map[string]string) (Config, error) { return config.Load(environ) }

// Options are a Sidecar's dependencies.
type Options = engine.Options

// Sidecar serves Replicache push and pull for one legacy upstream and passes
// every other request through to it. It is safe for concurrent use.
type Sidecar struct {
	core        *engine.Core // what the engines and the handlers share
	pushes      *push.Engine
	pulls       *pull.Engine
	passthrough http.Handler
	gzip        compress.Pool // for compressed answers
	pokes       *pokeServer   // poke streams and the invalidate hook
	// stopPokes ends the poke bus Run started (Shutdown calls it last).
	stopPokes atomic.Pointer[context.CancelFunc]
}

// New builds a Sidecar. Run it (or call Migrate) before pushes and pulls
// are served: until the schema is migrated they answer 503.
func New(o Options) *Sidecar {
	c := engine.New(o)
	cfg := c.Cfg
	s := &Sidecar{core: c, pushes: push.New(c), pulls: pull.New(c), pokes: newPokeServer(c)}
	s.passthrough = passthrough.New(passthrough.Options{
		Base: cfg.Upstream, Transport: c.Parts.Upstream.Passthrough, Log: o.Logger,
		Suspended:      verdict.Suspended(c.Parts.Upstream.RetryAfter()),
		IdentityHeader: cfg.UserIDHeader, Trusted: c.Parts.Identity.Trusted,
		KeepHost: cfg.PassthroughHost == "incoming", Deny: cfg.PassthroughDeny,
		OnWrite: newWritePokes(c).wrote,
	})
	return s
}

// NewHTTPServer returns an http.Server for h with every timeout set.
// writeTimeout 0 leaves writes unbounded (the public listener: push and pull
// set their own deadlines, pass-through may stream).
func NewHTTPServer(h http.Handler, readTimeout, writeTimeout time.Duration) *http.Server {
	return &http.Server{
		Handler: h,
		// A client gets 10s to send its headers: enough on any network,
		// short enough that idle half-open connections don't pile up.
		ReadHeaderTimeout: 10 * time.Second,
		// The whole request, body included. Push bodies can be large (all
		// pending mutations at once) but are sent in one go; a slow-drip
		// body is cut off here. Bodies are read completely before any lock
		// is taken, so a slow client never holds a client group's lock.
		ReadTimeout:  readTimeout,
		WriteTimeout: writeTimeout,
		// Keep-alive connections from the Replicache client are reused
		// every pull interval (60s by default).
		IdleTimeout:    120 * time.Second,
		MaxHeaderBytes: 64 << 10,
	}
}

// Handler returns the public handler: push, pull, poke streams, the
// invalidate hook, and the pass-through for everything else. Every request
// gets its trace context here, before any handler runs.
func (s *Sidecar) Handler() http.Handler {
	push := s.core.Metrics.Instrument(metrics.EndpointPush, cors(s.core.Cfg.CORSOrigins, postOnly(s.gzip.Handler(s.pushes))))
	pull := s.core.Metrics.Instrument(metrics.EndpointPull, cors(s.core.Cfg.CORSOrigins, postOnly(s.gzip.Handler(s.pulls))))
	pass := s.core.Metrics.Instrument(metrics.EndpointProxy, s.passthrough)
	pokes := s.core.Metrics.Instrument(metrics.EndpointPoke, cors(s.core.Cfg.CORSOrigins, http.HandlerFunc(s.pokes.handlePoke)))
	invalidate := s.core.Metrics.Instrument(metrics.EndpointInvalidate, http.HandlerFunc(s.pokes.handleInvalidate))
	// A push may run for its time budget plus one upstream call, a pull for
	// a few upstream calls; the answer must still get out after that.
	writeWindow := s.core.Cfg.PushTimeBudget + 2*s.core.Cfg.UpstreamTimeout + 10*time.Second
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tc := s.core.Parts.Identity.Trace(r)
		if s.core.Tracer != nil {
			ctx, span := tracing.StartServerSpan(r.Context(), s.core.Tracer, &tc, "replicache "+s.endpointOf(r.URL.Path),
				attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path))
			sw := &metrics.StatusWriter{ResponseWriter: w}
			r, w = r.WithContext(ctx), sw
			defer func() {
				if sw.Status != 0 {
					span.SetAttributes(attribute.Int("http.response.status_code", sw.Status))
				}
				if sw.Status >= 500 {
					span.SetStatus(codes.Error, http.StatusText(sw.Status))
				}
				span.End()
			}()
		}
		r = r.WithContext(tracing.With(r.Context(), tc))
		if s.endpointOf(r.URL.Path) != metrics.EndpointProxy {
			// The sidecar's own answers name the trace (error bodies too);
			// a passed-through answer is the API's.
			w.Header().Set("X-Trace-ID", tc.TraceID)
		}
		switch r.URL.Path {
		case s.core.Cfg.PushPath:
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeWindow))
			push.ServeHTTP(w, r)
		case s.core.Cfg.PullPath:
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeWindow))
			pull.ServeHTTP(w, r)
		case s.core.Cfg.PokePath:
			pokes.ServeHTTP(w, r) // a stream: no write window; each event has its own deadline
		case s.core.Cfg.InvalidatePath:
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeWindow))
			invalidate.ServeHTTP(w, r)
		default:
			pass.ServeHTTP(w, r)
		}
	})
}

// endpoint names what path serves: push, pull, poke, invalidate, or proxy
// (the pass-through).
func (s *Sidecar) endpointOf(path string) string {
	switch path {
	case s.core.Cfg.PushPath:
		return metrics.EndpointPush
	case s.core.Cfg.PullPath:
		return metrics.EndpointPull
	case s.core.Cfg.PokePath:
		return metrics.EndpointPoke
	case s.core.Cfg.InvalidatePath:
		return metrics.EndpointInvalidate
	}
	return metrics.EndpointProxy
}

// AdminHandler returns the admin handler: /healthz (the process is alive),
// /readyz (not draining; the database's state in the body), /metrics
// (everything g gathers), /groups/{id} (one client group, inspected:
// inspect.go), and with SIDECAR_PPROF Go's profiles under /debug/pprof/.
func (s *Sidecar) AdminHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		problem.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		// Ready while this replica can serve: only draining makes it not.
		// The sidecar's database is shared by every replica; failing
		// readiness on it would remove the legacy API (served by the
		// pass-through without the database) from its Service too. Its
		// state is in the body and in replicache_sidecar_database_up.
		db := "up"
		switch {
		case !s.core.Migrated():
			db = "schema not migrated yet"
		case !s.core.DatabaseUp():
			db = "unreachable"
		}
		if s.core.Draining() {
			problem.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": "shutting down", "database": db})
			return
		}
		problem.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready", "database": db})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.Handle("GET /groups/{id}", inspector{s.core})
	if s.core.Cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}
