package proxy

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/flight"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/gate"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/identity"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/poke"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
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
	cfg     Config
	log     *slog.Logger
	tracer  trace.Tracer // nil: no spans
	version string
	store   *store.Store
	parts   Parts
	metrics *metrics
	report  *verdict.Reporter
	budget  *budget.Budget // request and view bytes in flight
	turns   *gate.Gate     // client groups' turns, before a connection
	flights flight.Group[pullMeta, *pullRider]

	passthrough http.Handler
	gzip        gzipWriters // for compressed answers
	hub         *poke.Hub   // this process's poke streams
	bus         *poke.Bus   // pokes between replicas

	current  atomic.Pointer[Mapping]
	secret   atomic.Pointer[[]byte] // the idempotency keys' HMAC secret, once migrated
	migrated atomic.Bool
	draining atomic.Bool
	// stopPokes ends the poke bus Run started (Shutdown calls it last).
	stopPokes atomic.Pointer[context.CancelFunc]
}

// Parts are what talks to the upstream: one client per kind of call (each
// with its breaker), the mutation sender, the view fetcher and the identity
// edge. The server and `replicache-sidecar check` build them with
// Config.Parts, so the two cannot drift apart.
type Parts struct {
	Upstream *upstream.Upstream
	Sender   *mutators.Client
	Fetcher  *clientview.Fetcher
	Identity *identity.Edge
}

// PartsOptions say how to build Parts beyond the Config.
type PartsOptions struct {
	Registerer prometheus.Registerer
	Tracer     trace.Tracer      // nil: no spans
	Logger     *slog.Logger      // nil: discarded
	Reporter   *verdict.Reporter // nil: mapping errors are not counted
	// NoBreakers: every answer reaches the caller (check must see them).
	NoBreakers bool
}

// Parts builds the upstream parts c describes.
func (c Config) Parts(o PartsOptions) Parts {
	bs := upstream.BreakerSettings{Failures: c.BreakerFailures, OpenTimeout: c.BreakerOpenTimeout, HalfOpenRequests: c.BreakerHalfOpenRequests}
	if o.NoBreakers {
		bs = upstream.BreakerSettings{OpenTimeout: time.Second}
	}
	up := upstream.New(upstream.Options{Base: c.Upstream, Timeout: c.UpstreamTimeout, Breaker: bs,
		Registerer: o.Registerer, Namespace: namespace, Tracer: o.Tracer})
	return Parts{
		Upstream: up,
		Sender:   mutators.NewClient(mutators.ClientOptions{Base: c.Upstream, Upstream: up.Mutation, IdempotencyHeader: c.IdempotencyHeader}),
		Fetcher: clientview.NewFetcher(clientview.FetcherOptions{Base: c.Upstream, Upstream: up.View,
			MaxBodyBytes: c.MaxUpstreamBodyBytes, Logger: o.Logger}),
		Identity: identity.New(identity.Options{
			UserIDHeader: c.UserIDHeader, TrustedProxies: c.TrustedNets, AuthPath: c.AuthPath, AuthMethod: c.AuthMethod,
			AuthUserField: c.AuthUserField, ForwardHeaders: c.ForwardHeaders, CORSOrigins: c.CORSOrigins,
			Base: c.Upstream, Auth: up.Auth, Reporter: o.Reporter,
		}),
	}
}

// New builds a Sidecar. Run it (or call Migrate) before pushes and pulls
// are served: until the schema is migrated they answer 503.
func New(o Options) *Sidecar {
	cfg := o.Config
	mem := budget.New(cfg.MaxInflightBytes, budgetWait)
	turns := gate.New(cfg.MaxConnsPerGroup, cfg.MaxWaitingPerGroup)
	m := newMetrics(o.Registerer, cfg.Mapping.Mutators.Names(), mem, turns)
	m.buildInfo(cmp.Or(o.Version, "dev"), o.Revision)
	o.Registerer.MustRegister(store.NewPoolCollector(o.Pool, namespace))
	report := verdict.NewReporter(m.mappingErrors, o.Logger)
	s := &Sidecar{
		cfg:     cfg,
		log:     o.Logger,
		tracer:  o.Tracer,
		version: cmp.Or(o.Version, "dev"),
		store: store.New(o.Pool, store.Options{
			Schema: cfg.DBSchema, WaitTimeout: cfg.DBLockTimeout + 5*time.Second, RecordVersions: cfg.ViewRecordVersions,
			TouchInterval: touchInterval(cfg.ClientGroupTTL), RecordCacheBytes: cmp.Or(cfg.ViewRecordCacheBytes, -1),
		}),
		parts:   cfg.Parts(PartsOptions{Registerer: o.Registerer, Tracer: o.Tracer, Logger: o.Logger, Reporter: report}),
		metrics: m,
		report:  report,
		budget:  mem,
		turns:   turns,
	}
	s.hub = poke.NewHub(cfg.PokeMaxSubscribers, cfg.PokeCoalesce)
	s.bus = poke.NewBus(s.hub, o.Pool, cfg.DBSchema, o.Logger)
	m.pokeSubscribers(s.hub.Count)
	s.passthrough = newPassthrough(passthroughOptions{
		base: cfg.Upstream, transport: s.parts.Upstream.Passthrough, log: o.Logger, retryAfter: s.parts.Upstream.RetryAfter(),
		identityHeader: cfg.UserIDHeader, identity: s.parts.Identity,
		keepHost: cfg.PassthroughHost == "incoming", deny: cfg.PassthroughDeny,
		onWrite: func(user string) {
			if users, ok := s.pokeUsers(user); ok {
				s.notify(s.log.With("endpoint", endpointProxy), "passthrough", users)
			}
		},
	})
	s.useMapping(cfg.Mapping)
	return s
}

// touchInterval is how often a push notes its group's last use: hourly, or
// more often when idle groups are deleted sooner than in a day.
func touchInterval(ttl time.Duration) time.Duration {
	if ttl <= 0 {
		return time.Hour
	}
	return min(time.Hour, ttl/24)
}

// budgetWait is how long a push or pull waits for room in the in-flight
// budget before it answers 503: long enough to ride out a burst of large
// pulls, short enough that the client's retry is the better wait.
const budgetWait = time.Second

// mapping is the mapping of new requests; a request keeps the one it
// started with.
func (s *Sidecar) mapping() *Mapping { return s.current.Load() }

// useMapping makes m the mapping of new requests.
func (s *Sidecar) useMapping(m *Mapping) {
	if old := s.current.Swap(m); old != nil {
		s.metrics.mappingInfo.DeleteLabelValues(old.Hash)
	}
	s.metrics.mappingInfo.WithLabelValues(m.Hash).Set(1)
	s.metrics.precreateMutators(m.Mutators.Names())
}

// locked runs fn holding the client group's lock (store.Locked, or
// LockedClient when clientID is set), after waiting for the group's turn in
// this process without a connection. A full queue answers gate.ErrBusy at
// once; a turn that does not come within SIDECAR_DB_LOCK_TIMEOUT ends the
// same way.
func (s *Sidecar) locked(ctx context.Context, groupID, userID, clientID string, fn func(g *store.GroupTx) error) error {
	wctx, cancel := context.WithTimeout(ctx, s.cfg.DBLockTimeout)
	release, err := s.turns.Enter(wctx, groupID)
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return gate.ErrBusy
		}
		return err
	}
	defer release()
	if clientID != "" {
		return s.store.LockedClient(ctx, groupID, userID, clientID, fn)
	}
	return s.store.Locked(ctx, groupID, userID, fn)
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
