package proxy

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/gate"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/poke"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
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
}

// Sidecar serves Replicache push and pull for one legacy upstream and passes
// every other request through to it. It is safe for concurrent use.
type Sidecar struct {
	cfg         Config
	log         *slog.Logger
	tracer      trace.Tracer // nil: no spans
	store       *store.Store
	upstream    *upstream.Upstream
	sender      mutationSender
	fetcher     viewFetcher
	auth        *authenticator
	metrics     *metrics
	mapErrs     *mappingErrors
	passthrough http.Handler
	budget      *budget.Budget // request and view bytes in flight
	turns       *gate.Gate     // client groups' turns, before a connection

	gzip gzipWriters // for compressed answers
	hub  *poke.Hub   // this process's poke streams
	bus  *poke.Bus   // pokes between replicas

	flightsMu sync.Mutex
	flights   map[string]*pullFlight // running pulls others may join

	current  atomic.Pointer[Mapping]
	secret   atomic.Pointer[[]byte] // the idempotency keys' HMAC secret, once migrated
	migrated atomic.Bool
	draining atomic.Bool
}

// mutationSender sends one rendered mutation upstream.
type mutationSender interface {
	Do(ctx context.Context, r *mutators.Request, fwd http.Header) mutators.Result
}

// viewFetcher fetches the client view from the upstream.
type viewFetcher interface {
	FetchResult(ctx context.Context, v *clientview.View, r clientview.Request) (clientview.Result, error)
}

// New builds a Sidecar. Call Migrate (or wait for it) before serving pushes
// and pulls: until then they answer 503.
func New(o Options) *Sidecar {
	cfg := o.Config
	mem := budget.New(cfg.MaxInflightBytes, budgetWait)
	turns := gate.New(cfg.MaxConnsPerGroup, cfg.MaxWaitingPerGroup)
	m := newMetrics(o.Registerer, cfg.Mapping.Mutators.Names(), mem, turns)
	o.Registerer.MustRegister(store.NewPoolCollector(o.Pool, namespace))
	// One breaker for the one upstream, shared by every kind of call: when
	// the legacy service is down, mutations, views, auth and pass-through
	// all fail fast.
	up := upstream.New(upstream.Options{
		Base: cfg.Upstream, Timeout: cfg.UpstreamTimeout,
		Breaker: upstream.BreakerSettings{
			Failures: cfg.BreakerFailures, OpenTimeout: cfg.BreakerOpenTimeout, HalfOpenRequests: cfg.BreakerHalfOpenRequests,
		},
		Registerer: o.Registerer, Namespace: namespace, Tracer: o.Tracer,
	})
	s := &Sidecar{
		cfg:    cfg,
		log:    o.Logger,
		tracer: o.Tracer,
		store: store.New(o.Pool, store.Options{
			Schema: cfg.DBSchema, WaitTimeout: cfg.DBLockTimeout + 5*time.Second, RecordVersions: cfg.ViewRecordVersions,
			TouchInterval: touchInterval(cfg.ClientGroupTTL), RecordCacheBytes: cmp.Or(cfg.ViewRecordCacheBytes, -1),
		}),
		upstream: up,
		sender: mutators.NewClient(mutators.ClientOptions{
			Base: cfg.Upstream, Upstream: up.Mutation, IdempotencyHeader: cfg.IdempotencyHeader,
		}),
		fetcher: clientview.NewFetcher(clientview.FetcherOptions{
			Base: cfg.Upstream, Upstream: up.View, MaxBodyBytes: cfg.MaxUpstreamBodyBytes, Logger: o.Logger,
		}),
		metrics: m,
		budget:  mem,
		turns:   turns,
		flights: map[string]*pullFlight{},
		mapErrs: newMappingErrors(m.mappingErrors, o.Logger),
	}
	s.auth = newAuthenticator(cfg, up.Auth, s.mapErrs)
	s.hub = poke.NewHub(cfg.PokeMaxSubscribers, cfg.PokeCoalesce)
	s.bus = poke.NewBus(s.hub, o.Pool, cfg.DBSchema, o.Logger)
	m.pokeSubscribers(s.hub.Count)
	s.passthrough = newPassthrough(passthroughOptions{
		base: cfg.Upstream, transport: up.Passthrough, log: o.Logger, retryAfter: up.RetryAfter(),
		identityHeader: cfg.UserIDHeader, trusted: cfg.TrustedNets,
		keepHost: cfg.PassthroughHost == "incoming", deny: cfg.PassthroughDeny,
		onWrite: func(user string) {
			if users, ok := s.pokeUsers(user); ok {
				s.notify(s.log.With("endpoint", "proxy"), "passthrough", users)
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

// Migrate applies the schema migrations; pushes and pulls are served from
// then on.
func (s *Sidecar) Migrate(ctx context.Context) error {
	if err := s.store.Migrate(ctx); err != nil {
		return err
	}
	secret := []byte(s.cfg.IdempotencySecret)
	if len(secret) == 0 {
		var err error
		if secret, err = s.store.IdempotencySecret(ctx); err != nil {
			return err
		}
	}
	s.secret.Store(&secret)
	s.migrated.Store(true)
	return nil
}

// Drain makes readiness fail and new pushes and pulls answer 503, so the
// load balancer stops sending traffic before the listeners close. Poke
// streams go on until ClosePokes.
func (s *Sidecar) Drain() { s.draining.Store(true) }

// ClosePokes ends every poke stream and refuses new ones, so their clients
// reconnect to another replica: when the server shuts down
// (http.Server.RegisterOnShutdown), which does not wait for them.
func (s *Sidecar) ClosePokes() { s.hub.Close() }

// RunPokes carries pokes between the replicas (LISTEN/NOTIFY on the
// sidecar's database) until ctx ends.
func (s *Sidecar) RunPokes(ctx context.Context) { s.bus.Run(ctx) }

// suspended answers a request that needs c's kind of upstream call while
// its breaker is open, before it touches the database. Pushes don't use it:
// while the write path is down they still acknowledge already-processed
// mutations and consume unmapped ones, and stop (503, in about a
// millisecond) at the first mutation that needs the upstream.
func (s *Sidecar) suspended(c *upstream.Client) *httpError {
	if c == nil || !c.Suspended() {
		return nil
	}
	return upstreamSuspended(s.upstream.RetryAfter())
}

func (s *Sidecar) checkServing() *httpError {
	switch {
	case s.draining.Load():
		return &httpError{Status: http.StatusServiceUnavailable, Code: "ShuttingDown", Message: "the sidecar is shutting down; retry", RetryAfter: 1}
	case !s.migrated.Load():
		return &httpError{Status: http.StatusServiceUnavailable, Code: "Starting", Message: "the sidecar's database schema is not ready yet; retry", RetryAfter: 1}
	}
	return nil
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
