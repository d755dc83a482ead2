// Command replicache-sidecar lets Replicache clients sync with an unmodified
// REST service. Configuration comes from SIDECAR_* environment variables;
// see config.example.env.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/tracing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/replicache-sidecar/replicache-sidecar/proxy"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "check" {
		code := runCheck(ctx, os.Args[2:], environ(), os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	if err := run(ctx, environ(), os.Stderr, net.Listen); err != nil {
		fmt.Fprintln(os.Stderr, "replicache-sidecar:", err)
		os.Exit(1)
	}
}

func environ() map[string]string {
	m := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// listenFunc opens a listener (net.Listen, or a test's).
type listenFunc func(network, address string) (net.Listener, error)

// run starts the sidecar and serves until ctx is cancelled or a server
// fails, then drains and shuts down within SIDECAR_SHUTDOWN_TIMEOUT. It
// returns only once both servers have stopped, and returns an error when
// either failed: an orchestrator must see a server that died.
func run(ctx context.Context, env map[string]string, logOut io.Writer, listen listenFunc) error {
	cfg, err := proxy.LoadConfig(env)
	if err != nil {
		return err
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: level}))

	// Request contexts must not derive from ctx: a signal would cancel
	// in-flight work instead of letting it drain.
	pool, err := store.NewPool(context.WithoutCancel(ctx), cfg.PoolOptions())
	if err != nil {
		return fmt.Errorf("creating database pool: %w", err)
	}
	defer pool.Close()

	var tracer trace.Tracer
	if tracing.Enabled(env) {
		t, shutdown, err := tracing.New(context.WithoutCancel(ctx), buildVersion())
		if err != nil {
			return err
		}
		tracer = t
		defer func() {
			// The spans still buffered go out before the process ends.
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := shutdown(sctx); err != nil {
				log.Warn("flushing spans", "error", err)
			}
		}()
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	sc := proxy.New(proxy.Options{Config: cfg, Pool: pool, Logger: log, Registerer: reg, Tracer: tracer})

	// Push and pull set their own write deadlines; pass-through traffic may
	// stream for as long as the legacy service does.
	public := proxy.NewHTTPServer(sc.Handler(), cfg.HTTPReadTimeout, 0)
	admin := proxy.NewHTTPServer(sc.AdminHandler(reg), 30*time.Second, 30*time.Second)
	publicLn, err := listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listening on SIDECAR_LISTEN_ADDR: %w", err)
	}
	adminLn, err := listen("tcp", cfg.AdminAddr)
	if err != nil {
		return errors.Join(fmt.Errorf("listening on SIDECAR_ADMIN_ADDR: %w", err), publicLn.Close())
	}
	log.Info("listening", "public", publicLn.Addr().String(), "admin", adminLn.Addr().String(),
		"upstream", cfg.Upstream.Redacted(), "push_path", cfg.PushPath, "pull_path", cfg.PullPath,
		"mutators", len(cfg.Mapping.Mutators.Names()), "view_sources", cfg.Mapping.View.Len(), "mapping_sha256", cfg.Mapping.Hash)

	type stopped struct {
		server string
		err    error
	}
	serveErr := make(chan stopped, 2)
	go func() { serveErr <- stopped{"public", public.Serve(publicLn)} }()
	go func() { serveErr <- stopped{"admin", admin.Serve(adminLn)} }()
	// Background work ends with run, also when a server failure (not a
	// signal) ends it.
	bg, stopBackground := context.WithCancel(ctx)
	defer stopBackground()
	go migrate(bg, sc, log)
	go sc.WatchMapping(bg, cfg.MappingReloadInterval)
	go sc.Sweep(bg, cfg.GCInterval)
	// Pokes outlive the signal: pushes that finish while the server shuts
	// down still announce theirs to the other replicas. Streams end when
	// the server shuts down (not when it starts draining), so their clients
	// reconnect elsewhere.
	pokesCtx, stopPokes := context.WithCancel(context.WithoutCancel(ctx))
	pokesDone := make(chan struct{})
	go func() { defer close(pokesDone); sc.RunPokes(pokesCtx) }()
	defer func() { stopPokes(); <-pokesDone }()
	public.RegisterOnShutdown(sc.ClosePokes)

	var failure error
	running := 2
	select {
	case <-ctx.Done():
		log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	case st := <-serveErr:
		running--
		failure = fmt.Errorf("%s server stopped: %w", st.server, st.err)
		log.Error("server failed; shutting down", "server", st.server, "error", st.err)
	}
	// Draining: readiness fails at once and new pushes and pulls answer 503,
	// while the load balancer notices (SIDECAR_DRAIN_DELAY); pass-through
	// keeps working meanwhile. Then the listeners close and in-flight
	// requests finish, all within SIDECAR_SHUTDOWN_TIMEOUT.
	sc.Drain()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	select {
	case <-time.After(cfg.DrainDelay):
	case <-sctx.Done():
	}
	// Shutdown waits for in-flight requests (and so in-flight mutations,
	// which are never abandoned between the upstream's answer and the
	// commit) until the deadline. Shutting down a server that already
	// stopped is harmless.
	errPublic := public.Shutdown(sctx)
	errAdmin := admin.Shutdown(sctx)
	// Join the server goroutines: Serve returns ErrServerClosed once its
	// server shuts down; anything else is a failure of its own.
	for ; running > 0; running-- {
		if st := <-serveErr; !errors.Is(st.err, http.ErrServerClosed) && failure == nil {
			failure = fmt.Errorf("%s server stopped: %w", st.server, st.err)
		}
	}
	if err := errors.Join(failure, errPublic, errAdmin); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	log.Info("stopped")
	return nil
}

// migrate applies the schema migrations, retrying while the database is
// unreachable so the sidecar can start before its database does. Until it
// succeeds, readiness fails and pushes and pulls answer 503.
func migrate(ctx context.Context, sc *proxy.Sidecar, log *slog.Logger) {
	backoff := 500 * time.Millisecond
	for {
		mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := sc.Migrate(mctx)
		cancel()
		if err == nil {
			log.Info("database schema ready", "version", store.SchemaVersion())
			return
		}
		log.Error("migrating database schema failed; retrying", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// buildVersion is the module version the binary was built from, or "dev".
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
