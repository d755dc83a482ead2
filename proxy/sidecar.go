package proxy

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/compress"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/gate"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/lag"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/passthrough"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/plan"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/poke"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/sse"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/tracing"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// Options are a Sidecar's dependencies.
type Options struct {
	Config     Config // from LoadConfig
	Pool       *pgxpool.Pool
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Tracer, when set, records spans: each push and pull, each mutation,
	// each upstream call (see package tracing). Nil: trace context is only
	// propagated.
	Tracer trace.Tracer
	// Version and Revision name the build: in the start-up log line and
	// replicache_sidecar_build_info.
	Version, Revision string
}

// Sidecar serves Replicache push and pull for one legacy upstream and passes
// every other request through to it. It is safe for concurrent use.
type Sidecar struct {
	*core
	pulls       *puller
	passthrough http.Handler
	gzip        compress.Pool // for compressed answers
	// stopPokes ends the poke bus Run started (Shutdown calls it last).
	stopPokes atomic.Pointer[context.CancelFunc]
}

// New builds a Sidecar. Run it (or call Migrate) before pushes and pulls
// are served: until the schema is migrated they answer 503.
func New(o Options) *Sidecar {
	cfg := o.Config
	mem := budget.New(cfg.MaxInflightBytes, budgetWait)
	turns := gate.New(cfg.MaxConnsPerGroup, cfg.MaxWaitingPerGroup)
	m := metrics.New(o.Registerer, cfg.Mapping.Mutators.Names(), mem, turns)
	m.BuildInfo(cmp.Or(o.Version, "dev"), o.Revision)
	o.Registerer.MustRegister(store.NewPoolCollector(o.Pool, metrics.Namespace))
	report := verdict.NewReporter(m.MappingErrors, o.Logger)
	c := &core{
		cfg:     cfg,
		log:     o.Logger,
		tracer:  o.Tracer,
		version: cmp.Or(o.Version, "dev"),
		store: store.New(o.Pool, store.Options{
			Schema: cfg.DBSchema, WaitTimeout: cfg.DBLockTimeout + 5*time.Second, RecordVersions: cfg.ViewRecordVersions,
			TouchInterval: touchInterval(cfg.ClientGroupTTL), RecordCacheBytes: cmp.Or(cfg.ViewRecordCacheBytes, -1),
			HistoryPerGroup: cfg.MaxHistoryPerGroup,
		}),
		parts:   NewParts(cfg, PartsOptions{Registerer: o.Registerer, Tracer: o.Tracer, Logger: o.Logger, Reporter: report}),
		metrics: m,
		report:  report,
		budget:  mem,
		turns:   turns,
		writes:  plan.NewWrites(time.Now()),
	}
	c.hub = poke.NewHub(poke.Limits{Max: cfg.PokeMaxSubscribers, PerKey: poke.PerKeyLimit(cfg.PokeMaxSubscribers), Lifetime: cfg.PokeMaxLifetime, Spread: cfg.PokeSpread},
		cfg.PokeCoalesce)
	c.streams = sse.New(sse.Options{Heartbeat: cfg.PokeHeartbeat, WriteTimeout: c.pokeWriteTimeout(), Stop: c.hub.Done(),
		Ended: c.streamEnded, Poked: m.Pokes.Inc})
	c.bus = poke.NewBus(c.hub, o.Pool, cfg.DBSchema, cfg.PokeCallerInterval, o.Logger)
	c.bus.OnMarks(func(written, deleted []string, all bool) { c.writes.Marked(written, deleted, all, time.Now()) })
	c.lag = lag.New(m.ChangeLag.Observe)
	c.bus.OnPokes(c.lag.Changed)
	m.PokeSubscribers(c.hub.Count)
	c.useMapping(cfg.Mapping)
	return &Sidecar{
		core:  c,
		pulls: &puller{core: c},
		passthrough: passthrough.New(passthrough.Options{
			Base: cfg.Upstream, Transport: c.parts.Upstream.Passthrough, Log: o.Logger,
			Suspended:      verdict.Suspended(c.parts.Upstream.RetryAfter()),
			IdentityHeader: cfg.UserIDHeader, Trusted: c.parts.Identity.Trusted,
			KeepHost: cfg.PassthroughHost == "incoming", Deny: cfg.PassthroughDeny,
			OnWrite: newWritePokes(c).wrote,
		}),
	}
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
	push := s.metrics.Instrument(metrics.EndpointPush, s.cors(postOnly(s.gzip.Handler(http.HandlerFunc(s.handlePush)))))
	pull := s.metrics.Instrument(metrics.EndpointPull, s.cors(postOnly(s.gzip.Handler(http.HandlerFunc(s.pulls.handlePull)))))
	pass := s.metrics.Instrument(metrics.EndpointProxy, s.passthrough)
	pokes := s.metrics.Instrument(metrics.EndpointPoke, s.cors(http.HandlerFunc(s.handlePoke)))
	invalidate := s.metrics.Instrument(metrics.EndpointInvalidate, http.HandlerFunc(s.handleInvalidate))
	// A push may run for its time budget plus one upstream call, a pull for
	// a few upstream calls; the answer must still get out after that.
	writeWindow := s.cfg.PushTimeBudget + 2*s.cfg.UpstreamTimeout + 10*time.Second
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tc := s.parts.Identity.Trace(r)
		if s.tracer != nil {
			ctx, span := tracing.StartServerSpan(r.Context(), s.tracer, &tc, "replicache "+s.endpointOf(r.URL.Path),
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
		case s.cfg.PushPath:
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeWindow))
			push.ServeHTTP(w, r)
		case s.cfg.PullPath:
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeWindow))
			pull.ServeHTTP(w, r)
		case s.cfg.PokePath:
			pokes.ServeHTTP(w, r) // a stream: no write window; each event has its own deadline
		case s.cfg.InvalidatePath:
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
	case s.cfg.PushPath:
		return metrics.EndpointPush
	case s.cfg.PullPath:
		return metrics.EndpointPull
	case s.cfg.PokePath:
		return metrics.EndpointPoke
	case s.cfg.InvalidatePath:
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
		case !s.migrated.Load():
			db = "schema not migrated yet"
		case !s.dbUp.Load():
			db = "unreachable"
		}
		if s.draining.Load() {
			problem.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": "shutting down", "database": db})
			return
		}
		problem.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready", "database": db})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /groups/{id}", s.handleInspect)
	if s.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}
