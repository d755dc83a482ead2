package engine

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/clientview"
	"github.com/replicache-sidecar/replicache-sidecar/mutators"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/budget"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/config"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/gate"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/identity"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/lag"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/mapping"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/plan"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/poke"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/problem"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// Options are a Core's dependencies (and a Sidecar's).
type Options struct {
	Config     config.Config // from config.Load
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

// New builds the Core o describes: the bookkeeping store, the upstream
// parts, the metrics, the budgets and the poke bus. Its schema is not
// migrated yet (Migrate).
func New(o Options) *Core {
	cfg := o.Config
	mem := budget.New(cfg.MaxInflightBytes, budgetWait)
	turns := gate.New(cfg.MaxConnsPerGroup, cfg.MaxWaitingPerGroup)
	m := metrics.New(o.Registerer, cfg.Mapping.Mutators.Names(), mem, turns)
	m.BuildInfo(cmp.Or(o.Version, "dev"), o.Revision)
	o.Registerer.MustRegister(store.NewPoolCollector(o.Pool, metrics.Namespace))
	report := verdict.NewReporter(m.MappingErrors, o.Logger)
	c := &Core{
		Cfg:     cfg,
		Log:     o.Logger,
		Tracer:  o.Tracer,
		Version: cmp.Or(o.Version, "dev"),
		Store: store.New(o.Pool, store.Options{
			Schema: cfg.DBSchema, WaitTimeout: cfg.DBLockTimeout + 5*time.Second, RecordVersions: cfg.ViewRecordVersions,
			TouchInterval: touchInterval(cfg.ClientGroupTTL), RecordCacheBytes: cmp.Or(cfg.ViewRecordCacheBytes, -1),
			HistoryPerGroup: cfg.MaxHistoryPerGroup,
		}),
		Parts:   NewParts(cfg, PartsOptions{Registerer: o.Registerer, Tracer: o.Tracer, Logger: o.Logger, Reporter: report}),
		Metrics: m,
		Report:  report,
		Budget:  mem,
		Turns:   turns,
		Writes:  plan.NewWrites(time.Now()),
	}
	c.Hub = poke.NewHub(poke.Limits{Max: cfg.PokeMaxSubscribers, PerKey: poke.PerKeyLimit(cfg.PokeMaxSubscribers), Lifetime: cfg.PokeMaxLifetime, Spread: cfg.PokeSpread,
		GenerationPerUser: cfg.PokeScope == "user"},
		cfg.PokeCoalesce)
	c.Bus = poke.NewBus(c.Hub, o.Pool, cfg.DBSchema, cfg.PokeCallerInterval, o.Logger)
	c.Bus.OnMarks(func(written, deleted []string, all bool) { c.Writes.Marked(written, deleted, all, time.Now()) })
	c.Lag = lag.New(m.ChangeLag.Observe)
	c.Bus.OnPokes(c.Lag.Changed)
	m.PokeSubscribers(c.Hub.Count)
	c.UseMapping(cfg.Mapping)
	return c
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

// Core is what the engines share: the configuration, the bookkeeping, the
// upstream parts, the metrics and the process-wide budgets. The push and
// pull engines and package proxy's handlers each hold it; package proxy
// builds it (New) and its lifecycle migrates and runs it.
type Core struct {
	Cfg     config.Config
	Log     *slog.Logger
	Tracer  trace.Tracer // nil: no spans
	Version string
	Store   *store.Store
	Parts   Parts
	Metrics *metrics.Set
	Report  *verdict.Reporter
	Budget  *budget.Budget // request and view bytes in flight
	Turns   *gate.Gate     // client groups' turns, before a connection
	Hub     *poke.Hub      // this process's poke streams
	Bus     *poke.Bus      // pokes between replicas
	Writes  *plan.Writes   // writes seen under each view source (for the pulls' plans)
	Lag     *lag.Tracker   // changes not yet answered, per group with a stream here
	Once    LogOnce        // log lines said at most once in a while

	current  atomic.Pointer[mapping.Mapping]
	keys     atomic.Pointer[KeySecrets] // the idempotency keys' HMAC secrets, once migrated
	migrated atomic.Bool
	draining atomic.Bool
	dbUp     atomic.Bool // see DatabaseUp
}

// KeySecrets are the idempotency keys' HMAC secrets: the one new
// mutations are keyed with and, while it is rotated
// (SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS), the previous one, with their
// fingerprints (mutators.SecretFingerprint).
type KeySecrets struct {
	Current, Previous     []byte // previous: nil unless rotating
	CurrentFP, PreviousFP int64
}

// Mapping is the mapping of new requests; a request keeps the one it
// started with.
func (s *Core) Mapping() *mapping.Mapping { return s.current.Load() }

// UseMapping makes m the mapping of new requests.
func (s *Core) UseMapping(m *mapping.Mapping) {
	if old := s.current.Swap(m); old != nil {
		s.Metrics.MappingInfo.DeleteLabelValues(old.Hash)
	}
	s.Metrics.MappingInfo.WithLabelValues(m.Hash).Set(1)
	s.Metrics.PrecreateMutators(m.Mutators.Names())
	s.Metrics.PrecreateSources(m.Sources)
	s.Writes.Sources(m.Sources)
}

// Locked runs fn holding the client group's lock (store.Locked, or
// LockedClient when clientID is set), after waiting for the group's turn in
// this process without a connection. A full queue answers gate.ErrBusy at
// once; a turn that does not come within SIDECAR_DB_LOCK_TIMEOUT ends the
// same way.
func (s *Core) Locked(ctx context.Context, groupID, userID, clientID string, fn func(g *store.GroupTx) error) error {
	wctx, cancel := context.WithTimeout(ctx, s.Cfg.DBLockTimeout)
	release, err := s.Turns.Enter(wctx, groupID)
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return gate.ErrBusy
		}
		return err
	}
	defer release()
	if clientID != "" {
		return s.Store.LockedClient(ctx, groupID, userID, clientID, fn)
	}
	return s.Store.Locked(ctx, groupID, userID, fn)
}

// DBProbeEvery is how often package proxy's watchDatabase asks the
// database, in seconds
// (also the Retry-After of pushes and pulls refused while it is away).
const DBProbeEvery = 2

// CheckServing refuses pushes and pulls while the sidecar drains, and
// before its schema is migrated.
func (s *Core) CheckServing() *problem.Error {
	switch {
	case s.draining.Load():
		return problem.Unavailable(problem.ShuttingDown, 1, "the sidecar is shutting down; retry")
	case !s.migrated.Load():
		return problem.Unavailable(problem.Starting, 1, "the sidecar's database schema is not ready yet; retry")
	case !s.dbUp.Load():
		// Fail fast: a push or pull would only wait for a connection the
		// pool cannot make. The pass-through is not affected.
		return problem.Unavailable(problem.DatabaseUnavailable, DBProbeEvery, "the sidecar's database is unavailable; retry later")
	}
	return nil
}

// Drain makes readiness fail and new pushes and pulls answer 503, so the
// load balancer stops sending traffic before the listeners close. Poke
// streams go on until the servers shut down.
func (s *Core) Drain() { s.draining.Store(true) }

// Draining reports whether Drain was called.
func (s *Core) Draining() bool { return s.draining.Load() }

// Migrated reports whether Migrate succeeded.
func (s *Core) Migrated() bool { return s.migrated.Load() }

// DatabaseUp reports whether the sidecar's database answered the last
// probe (package proxy's lifecycle probes it; a successful Migrate counts
// as one).
func (s *Core) DatabaseUp() bool { return s.dbUp.Load() }

// NoteDatabase records a probe's result, and reports whether it differs
// from the last one.
func (s *Core) NoteDatabase(up bool) (changed bool) { return s.dbUp.Swap(up) != up }

// Keys are the idempotency keys' secrets (nil until Migrate succeeded).
func (s *Core) Keys() *KeySecrets { return s.keys.Load() }

// Parts are what talks to the upstream: one client per kind of call (each
// with its breaker), the mutation sender, the view fetcher and the identity
// edge. The server and `replicache-sidecar check` build them with
// NewParts, so the two cannot drift apart.
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

// NewParts builds the upstream parts c describes.
func NewParts(c config.Config, o PartsOptions) Parts {
	bs := upstream.BreakerSettings{Failures: c.BreakerFailures, OpenTimeout: c.BreakerOpenTimeout, HalfOpenRequests: c.BreakerHalfOpenRequests}
	if o.NoBreakers {
		bs = upstream.BreakerSettings{OpenTimeout: time.Second}
	}
	up := upstream.New(upstream.Options{Base: c.Upstream, Timeout: c.UpstreamTimeout, Breaker: bs,
		Registerer: o.Registerer, Namespace: metrics.Namespace, Tracer: o.Tracer, MaxInflight: c.UpstreamMaxInflight})
	return Parts{
		Upstream: up,
		Sender:   mutators.NewClient(mutators.ClientOptions{Base: c.Upstream, Upstream: up.Mutation, IdempotencyHeader: c.IdempotencyHeader}),
		Fetcher: clientview.NewFetcher(clientview.FetcherOptions{Base: c.Upstream, Upstream: up.View,
			MaxBodyBytes: c.MaxUpstreamBodyBytes, Logger: o.Logger}),
		Identity: identity.New(identity.Options{
			UserIDHeader: c.UserIDHeader, TrustedProxies: c.TrustedNets, AuthPath: c.AuthPath, AuthMethod: c.AuthMethod,
			AuthUserField: c.AuthUserField, ForwardHeaders: c.ForwardHeaders, CORSOrigins: c.CORSOrigins, TraceClients: c.TraceClients,
			Base: c.Upstream, Auth: up.Auth, Reporter: o.Reporter,
		}),
	}
}

// LogOnce says whether a log line keyed by key is due: not said within
// every. It is safe for concurrent use; its zero value is ready.
type LogOnce struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// Due reports whether the line keyed by key is due, and if so notes it
// said now.
func (l *LogOnce) Due(key string, every time.Duration) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < every {
		return false
	}
	if l.last == nil || len(l.last) > 1024 {
		l.last = map[string]time.Time{}
	}
	l.last[key] = now
	return true
}

// MarkWrite notes a write of method to path (as sent to the API), once
// the API answered it, here and in the other replicas: the pulls' plans
// read the sources it falls under again (see package plan).
//
// The marks also go to the database, before the write's poke: a pull that
// the poke causes, through whichever replica, sees them, even if that
// replica has not heard the announcement yet. Only marks that matter are
// written (a DELETE under a source, a write under a maxAge one): most
// writes cost nothing here. Should the database not take them, the
// announcement still spreads them, as before.
// It returns the paths of the sources a DELETE fell under.
func (s *Core) MarkWrite(method, path string) (deleted []string) {
	now := time.Now()
	written, deleted := s.Writes.Saw(method, path, now)
	s.Bus.Mark(written, deleted)
	if len(written) == 0 && len(deleted) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), markTimeout)
	defer cancel()
	if err := s.Store.MarkSources(ctx, written, deleted, now); err != nil && s.Once.Due("marks", time.Minute) {
		s.Log.Warn("noting a routed write's view sources in the database failed; other replicas learn of it from the announcement", "error", err)
	}
	return deleted
}

// markTimeout bounds MarkWrite's and NoteChange's statements.
const markTimeout = 2 * time.Second
