package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/engine"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/mapping"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/metrics"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

// Serve runs the sidecar on two listeners until ctx ends or a server
// fails: public (push, pull, poke streams, pass-through) and admin
// (health, readiness, metrics from g). It starts the background work
// (Run), and on the way out shuts down (Shutdown) within
// SIDECAR_SHUTDOWN_TIMEOUT. It returns only once both servers have
// stopped, with an error when either failed: an orchestrator must see a
// server that died. Request contexts do not derive from ctx: a signal
// drains in-flight work instead of cancelling it.
func (s *Sidecar) Serve(ctx context.Context, public, admin net.Listener, g prometheus.Gatherer) error {
	// Push and pull set their own write deadlines; pass-through traffic may
	// stream for as long as the legacy service does.
	pub := NewHTTPServer(s.Handler(), s.core.Cfg.HTTPReadTimeout, 0)
	adm := NewHTTPServer(s.AdminHandler(g), 30*time.Second, 30*time.Second)
	if s.core.Cfg.UserIDHeader == "" && s.core.Cfg.AuthPath == "" {
		// A deployment that forgot both would otherwise learn it from a
		// leak, not a log: said before "listening", so it is seen first.
		s.core.Log.Warn("every caller is one user: neither SIDECAR_AUTH_PATH nor SIDECAR_USER_ID_HEADER is set, " +
			"so the sidecar cannot tell users apart (single-tenant mode: any caller may use any client group, and SIDECAR_POKE_SCOPE=user pokes everyone); " +
			"set SIDECAR_AUTH_PATH to an endpoint of the API that says who the caller is, or SIDECAR_USER_ID_HEADER to a trusted gateway's header, unless the API has one user")
	}
	s.core.Log.Info("listening", "version", s.core.Version, "public", public.Addr().String(), "admin", admin.Addr().String(),
		"upstream", s.core.Cfg.Upstream.Redacted(), "push_path", s.core.Cfg.PushPath, "pull_path", s.core.Cfg.PullPath,
		"mutators", len(s.core.Cfg.Mapping.Mutators.Names()), "view_sources", s.core.Cfg.Mapping.View.Len(), "mapping_sha256", s.core.Cfg.Mapping.Hash)

	type stopped struct {
		server string
		err    error
	}
	serveErr := make(chan stopped, 2)
	go func() { serveErr <- stopped{"public", pub.Serve(public)} }()
	go func() { serveErr <- stopped{"admin", adm.Serve(admin)} }()
	// Background work ends with Serve, also when a server failure (not a
	// signal) ends it.
	bg, stopBackground := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- s.Run(bg) }()

	var failure error
	running := 2
	select {
	case <-ctx.Done():
		s.core.Log.Info("shutting down", "timeout", s.core.Cfg.ShutdownTimeout)
	case st := <-serveErr:
		running--
		failure = fmt.Errorf("%s server stopped: %w", st.server, st.err)
		s.core.Log.Error("server failed; shutting down", "server", st.server, "error", st.err)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.core.Cfg.ShutdownTimeout)
	defer cancel()
	errShutdown := s.Shutdown(sctx, pub, adm)
	stopBackground()
	errRun := <-ran
	// Join the server goroutines: Serve returns ErrServerClosed once its
	// server shuts down; anything else is a failure of its own.
	for ; running > 0; running-- {
		if st := <-serveErr; !errors.Is(st.err, http.ErrServerClosed) && failure == nil {
			failure = fmt.Errorf("%s server stopped: %w", st.server, st.err)
		}
	}
	if err := errors.Join(failure, errShutdown, errRun); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	s.core.Log.Info("stopped")
	return nil
}

// Run does the sidecar's background work until ctx ends, each part in its
// own goroutine: the schema migration, retried with backoff until it
// succeeds (pushes and pulls answer 503 until then; the sidecar starts
// before its database does), then the bookkeeping sweeps; the mapping
// file's reloads; and the poke bus between replicas. The poke bus outlives
// ctx until Shutdown is done: pushes that finish while the server shuts
// down still announce theirs to the other replicas.
func (s *Sidecar) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	goRun := func(fn func()) {
		wg.Add(1)
		go func() { defer wg.Done(); fn() }()
	}
	goRun(func() {
		if s.migrateWithRetry(ctx) {
			s.measureRecords(ctx)
			s.sweep(ctx, s.core.Cfg.GCInterval)
		}
	})
	goRun(func() { s.watchMapping(ctx, s.core.Cfg.MappingReloadInterval) })
	goRun(func() { s.watchDatabase(ctx) })
	pokes, stopPokes := context.WithCancel(context.WithoutCancel(ctx))
	s.stopPokes.Store(&stopPokes)
	goRun(func() { s.runPokes(pokes) })
	go func() {
		// Without a Shutdown (a test, a failed start), the bus ends with ctx
		// after a moment's grace.
		<-ctx.Done()
		select {
		case <-pokes.Done():
		case <-time.After(s.core.Cfg.ShutdownTimeout):
			stopPokes()
		}
	}()
	wg.Wait()
	return nil
}

// Shutdown drains and stops the sidecar within ctx: readiness fails at
// once and new pushes and pulls answer 503 while the load balancer notices
// (SIDECAR_DRAIN_DELAY), the pass-through working meanwhile; then the poke
// streams end (their clients reconnect to another replica) and the servers
// close, waiting for in-flight requests (in-flight mutations are never
// abandoned between the upstream's answer and the commit); last, the poke
// bus stops, once the pushes that finished have announced theirs.
func (s *Sidecar) Shutdown(ctx context.Context, servers ...*http.Server) error {
	s.Drain()
	select {
	case <-time.After(s.core.Cfg.DrainDelay):
	case <-ctx.Done():
	}
	s.closePokes()
	var errs []error
	for _, srv := range servers {
		errs = append(errs, srv.Shutdown(ctx))
	}
	// The streams served on their own connections are not the servers'.
	errs = append(errs, s.pokes.streams.Wait(ctx))
	if stop := s.stopPokes.Load(); stop != nil {
		(*stop)()
	}
	return errors.Join(errs...)
}

// Migrate applies the schema migrations (engine.Core.Migrate); pushes and
// pulls are served from then on.
func (s *Sidecar) Migrate(ctx context.Context) error { return s.core.Migrate(ctx) }

// Drain makes readiness fail and new pushes and pulls answer 503, so the
// load balancer stops sending traffic before the listeners close. Poke
// streams go on until the servers shut down.
func (s *Sidecar) Drain() { s.core.Drain() }

// closePokes ends every poke stream and refuses new ones, so their clients
// reconnect to another replica.
func (s *Sidecar) closePokes() { s.core.Hub.Close() }

// runPokes carries pokes between the replicas (LISTEN/NOTIFY on the
// sidecar's database) until ctx ends.
func (s *Sidecar) runPokes(ctx context.Context) { s.core.Bus.Run(ctx) }

// watchDatabase asks the sidecar's database every engine.DBProbeEvery seconds,
// once the schema is migrated, whether it answers (and holds this binary's
// schema, not contracted past it), until ctx ends: the
// answer is replicache_sidecar_database_up, and while it is no, pushes and
// pulls answer 503 DatabaseUnavailable at once. Readiness does not depend
// on it: the pass-through serves the legacy API without the database, and
// every replica shares it, so failing readiness would take the API off its
// Service with it.
func (s *Sidecar) watchDatabase(ctx context.Context) {
	probe := func() {
		if !s.core.Migrated() {
			// Until Migrate has succeeded (it sets the state itself, and
			// pushes and pulls answer Starting meanwhile), a reading may be
			// taken between two migrations' commits and land after Migrate:
			// "schema at version N-1" would then turn a migrated database
			// down until the next probe.
			return
		}
		pctx, cancel := context.WithTimeout(ctx, engine.DBProbeEvery*time.Second)
		err := s.core.Store.Ready(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		up := err == nil
		if s.core.NoteDatabase(up) {
			if up {
				s.core.Log.Info("the sidecar's database answers again; pushes and pulls are served")
			} else {
				s.core.Log.Error("the sidecar's database is unreachable; pushes and pulls answer 503 until it is back (the pass-through keeps serving)",
					"error", err)
			}
		}
		if up {
			s.core.Metrics.DatabaseUp.Set(1)
		} else {
			s.core.Metrics.DatabaseUp.Set(0)
		}
	}
	probe()
	every(ctx, engine.DBProbeEvery*time.Second, probe)
}

// migrateWithRetry migrates, retrying with backoff while the database is
// unreachable, until it succeeds (true) or ctx ends (false).
func (s *Sidecar) migrateWithRetry(ctx context.Context) bool {
	backoff := 500 * time.Millisecond
	for {
		mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.Migrate(mctx)
		cancel()
		if err == nil {
			s.core.Log.Info("database schema ready", "version", store.SchemaVersion())
			return true
		}
		s.core.Log.Error("migrating database schema failed; retrying", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// watchMapping re-reads the mapping file every interval until ctx ends.
// When its content changes, the new mapping is validated and swapped in
// atomically for new requests (requests already running keep the mapping
// they started with). An invalid file keeps the old mapping, is logged, and
// counts in replicache_sidecar_mapping_reload_errors_total once per distinct
// content.
//
// Polling rather than file events: Kubernetes updates a mounted ConfigMap
// by swapping a symlink, which file watchers report inconsistently, and a
// small file read every few seconds costs nothing.
func (s *Sidecar) watchMapping(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	lastBad := ""
	every(ctx, interval, func() {
		raw, err := os.ReadFile(s.core.Cfg.MappingFile)
		if err != nil {
			if lastBad != "unreadable" {
				lastBad = "unreadable"
				s.core.Metrics.MappingReloadErrors.Inc()
				s.core.Log.Error("mapping file unreadable; keeping the loaded mapping", "file", s.core.Cfg.MappingFile, "error", err)
			}
			return
		}
		sum := sha256.Sum256(raw)
		hash := hex.EncodeToString(sum[:])
		if hash == s.core.Mapping().Hash || hash == lastBad {
			return
		}
		m, err := mapping.Parse(raw)
		if err != nil {
			lastBad = hash
			s.core.Metrics.MappingReloadErrors.Inc()
			s.core.Log.Error("new mapping is invalid; keeping the loaded mapping", "file", s.core.Cfg.MappingFile,
				"sha256", hash, "loaded_sha256", s.core.Mapping().Hash, "error", err)
			return
		}
		lastBad = ""
		s.core.UseMapping(m)
		s.core.Log.Info("mapping reloaded", "file", s.core.Cfg.MappingFile, "sha256", m.Hash,
			"mutators", len(m.Mutators.Names()), "view_sources", m.View.Len())
	})
}

// tombstoneFactor: a deleted group's tombstone is kept this many times
// SIDECAR_CLIENT_GROUP_TTL. (After it goes, a client coming back with a
// cookie of the group still gets ClientStateNotFound: its cookie names an
// order the recreated group never issued.)
const tombstoneFactor = 4

// sweep runs the bookkeeping sweeps every interval (SIDECAR_GC_INTERVAL)
// until ctx ends: rejection records older than SIDECAR_REJECTION_TTL (for
// groups whose pushes no longer trim them), then client groups unused for
// SIDECAR_CLIENT_GROUP_TTL and tombstones past their time, then view
// records beyond SIDECAR_MAX_VIEW_RECORDS_PER_USER. Each sweep runs in one
// replica at a time; every replica then reads the records' size.
func (s *Sidecar) sweep(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	every(ctx, interval, func() { s.sweepOnce(ctx) })
}

func (s *Sidecar) sweepOnce(ctx context.Context) {
	if ttl := s.core.Cfg.RejectionTTL; ttl > 0 {
		n, err := s.core.Store.SweepRejections(ctx, ttl, 1000)
		switch {
		case err != nil:
			s.core.Log.Warn("sweeping expired rejection records failed", "error", err)
		case n > 0:
			s.core.Metrics.Pruned.WithLabelValues(metrics.PrunedRejections).Add(float64(n))
			s.core.Log.Info("swept expired rejection records", "deleted", n)
		}
	}
	if ttl := s.core.Cfg.ClientGroupTTL; ttl > 0 {
		swept, err := s.core.Store.SweepGroups(ctx, ttl, tombstoneFactor*ttl, 100)
		s.core.Metrics.GroupsDeleted.Add(float64(swept.Groups))
		s.core.Metrics.Pruned.WithLabelValues(metrics.PrunedTombstones).Add(float64(swept.Tombstones))
		switch {
		case err != nil:
			s.core.Log.Warn("sweeping idle client groups failed", "error", err, "deleted", swept.Groups)
		case swept.Groups > 0 || swept.Tombstones > 0:
			s.core.Log.Info("swept idle client groups", "deleted", swept.Groups, "tombstones_expired", swept.Tombstones, "ttl", ttl)
		}
	}
	if max := s.core.Cfg.MaxViewRecordsPerUser; max > 0 && s.core.Cfg.PatchMode == "diff" {
		ev, err := s.core.Store.SweepRecords(ctx, max, 1000)
		s.core.Metrics.RecordEvictions.Add(float64(ev.Records))
		switch {
		case err != nil:
			s.core.Log.Warn("sweeping view records beyond SIDECAR_MAX_VIEW_RECORDS_PER_USER failed", "error", err, "evicted", ev.Records)
		case ev.Records > 0:
			s.core.Log.Info("evicted view records beyond SIDECAR_MAX_VIEW_RECORDS_PER_USER", "evicted", ev.Records, "bytes", ev.Bytes)
		}
	}
	s.measureRecords(ctx)
}

// measureRecords sets replicache_sidecar_view_record_storage_bytes from
// the catalog (every replica: it reads no table).
func (s *Sidecar) measureRecords(ctx context.Context) {
	n, err := s.core.Store.RecordStorageBytes(ctx)
	if err != nil {
		s.core.Log.Warn("reading the view records' size failed", "error", err)
		return
	}
	s.core.Metrics.RecordStorage.Set(float64(n))
}

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
