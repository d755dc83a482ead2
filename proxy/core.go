package proxy

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

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
	"github.com/replicache-sidecar/replicache-sidecar/proxy/sse"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/upstream"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/verdict"
)

// Config is every setting of the sidecar (package config reads and checks
// them); LoadConfig reads it from the environment.
type Config = config.Config

// LoadConfig reads the configuration from environ (variable name → value),
// loads the mapping file, and checks everything (config.Load).
func LoadConfig(environ map[string]string) (Config, error) { return config.Load(environ) }

// core is what the engines share: the configuration, the bookkeeping, the
// upstream parts, the metrics and the process-wide budgets. The HTTP edge
// (edge.go), the push engine (push.go, mutation.go), the pull engine
// (pull*.go) and the poke streams (pokes.go) are its methods; Sidecar
// (sidecar.go) composes them into handlers, and lifecycle.go runs it.
type core struct {
	cfg     Config
	log     *slog.Logger
	tracer  trace.Tracer // nil: no spans
	version string
	store   *store.Store
	parts   Parts
	metrics *metrics.Set
	report  *verdict.Reporter
	budget  *budget.Budget // request and view bytes in flight
	turns   *gate.Gate     // client groups' turns, before a connection
	hub     *poke.Hub      // this process's poke streams
	streams *sse.Writer    // writes the streams served on their own connections
	bus     *poke.Bus      // pokes between replicas
	writes  *plan.Writes   // writes seen under each view source (for the pulls' plans)
	lag     *lag.Tracker   // changes not yet answered, per group with a stream here
	once    logOnce        // log lines said at most once in a while

	current  atomic.Pointer[mapping.Mapping]
	keys     atomic.Pointer[keySecrets] // the idempotency keys' HMAC secrets, once migrated
	migrated atomic.Bool
	draining atomic.Bool
	// dbUp: the sidecar's database answered the last probe (watchDatabase;
	// a successful migration sets it too).
	dbUp atomic.Bool
}

// keySecrets are the idempotency keys' HMAC secrets: the one new
// mutations are keyed with and, while it is rotated
// (SIDECAR_IDEMPOTENCY_SECRET_PREVIOUS), the previous one, with their
// fingerprints (mutators.SecretFingerprint).
type keySecrets struct {
	current, previous     []byte // previous: nil unless rotating
	currentFP, previousFP int64
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
func (s *core) mapping() *mapping.Mapping { return s.current.Load() }

// useMapping makes m the mapping of new requests.
func (s *core) useMapping(m *mapping.Mapping) {
	if old := s.current.Swap(m); old != nil {
		s.metrics.MappingInfo.DeleteLabelValues(old.Hash)
	}
	s.metrics.MappingInfo.WithLabelValues(m.Hash).Set(1)
	s.metrics.PrecreateMutators(m.Mutators.Names())
	s.metrics.PrecreateSources(m.Sources)
	s.writes.Sources(m.Sources)
}

// locked runs fn holding the client group's lock (store.Locked, or
// LockedClient when clientID is set), after waiting for the group's turn in
// this process without a connection. A full queue answers gate.ErrBusy at
// once; a turn that does not come within SIDECAR_DB_LOCK_TIMEOUT ends the
// same way.
func (s *core) locked(ctx context.Context, groupID, userID, clientID string, fn func(g *store.GroupTx) error) error {
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

// dbProbeEvery is how often watchDatabase asks the database, in seconds
// (also the Retry-After of pushes and pulls refused while it is away).
const dbProbeEvery = 2

// checkServing refuses pushes and pulls while the sidecar drains, and
// before its schema is migrated.
func (s *core) checkServing() *problem.Error {
	switch {
	case s.draining.Load():
		return problem.Unavailable(problem.ShuttingDown, 1, "the sidecar is shutting down; retry")
	case !s.migrated.Load():
		return problem.Unavailable(problem.Starting, 1, "the sidecar's database schema is not ready yet; retry")
	case !s.dbUp.Load():
		// Fail fast: a push or pull would only wait for a connection the
		// pool cannot make. The pass-through is not affected.
		return problem.Unavailable(problem.DatabaseUnavailable, dbProbeEvery, "the sidecar's database is unavailable; retry later")
	}
	return nil
}

// Drain makes readiness fail and new pushes and pulls answer 503, so the
// load balancer stops sending traffic before the listeners close. Poke
// streams go on until the servers shut down.
func (s *core) Drain() { s.draining.Store(true) }

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
func NewParts(c Config, o PartsOptions) Parts {
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

// logOnce says whether a log line keyed by key is due: not said within
// every. It is safe for concurrent use; its zero value is ready.
type logOnce struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (l *logOnce) due(key string, every time.Duration) bool {
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

// markWrite notes a write of method to path (as sent to the API), once
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
func (s *core) markWrite(method, path string) (deleted []string) {
	now := time.Now()
	written, deleted := s.writes.Saw(method, path, now)
	s.bus.Mark(written, deleted)
	if len(written) == 0 && len(deleted) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), markTimeout)
	defer cancel()
	if err := s.store.MarkSources(ctx, written, deleted, now); err != nil && s.once.due("marks", time.Minute) {
		s.log.Warn("noting a routed write's view sources in the database failed; other replicas learn of it from the announcement", "error", err)
	}
	return deleted
}

// markTimeout bounds markWrite's statement.
const markTimeout = 2 * time.Second

// every runs fn every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}
