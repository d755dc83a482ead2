// Command replicache-sidecar lets Replicache clients sync with an unmodified
// REST service. Configuration comes from SIDECAR_* environment variables;
// see config.example.env.
//
//	replicache-sidecar            serve (push, pull, poke streams, pass-through; admin endpoints)
//	replicache-sidecar check …    try the mapping against the live API (check --help)
//	replicache-sidecar inspect G  one client group, from a running sidecar's admin listener
//	replicache-sidecar version    print the build's version
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/replicache-sidecar/replicache-sidecar/proxy"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/store"
	"github.com/replicache-sidecar/replicache-sidecar/proxy/tracing"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := runCommand(ctx, os.Args[1:], environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// runCommand runs the command args name and returns the exit status.
func runCommand(ctx context.Context, args []string, env map[string]string, stdout, stderr io.Writer) int {
	cmd := ""
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "check":
		return runCheck(ctx, args[1:], env, stdout, stderr)
	case "inspect":
		return runInspect(ctx, args[1:], env, stdout, stderr)
	case "version", "--version", "-version":
		_, _ = fmt.Fprintf(stdout, "replicache-sidecar %s (revision %s, %s)\n", version, orUnknown(revision), runtime.Version())
		return 0
	case "help", "--help", "-help", "-h":
		_, _ = io.WriteString(stdout, usage)
		return 0
	case "":
	default:
		_, _ = fmt.Fprintf(stderr, "replicache-sidecar: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if err := run(ctx, env, stderr, listenTCP); err != nil {
		_, _ = fmt.Fprintln(stderr, "replicache-sidecar:", err)
		return 1
	}
	return 0
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

// run builds the sidecar and serves until ctx is cancelled or a server
// fails (proxy.Sidecar.Serve drains and shuts down).
func run(ctx context.Context, env map[string]string, logOut io.Writer, listen listenFunc) error {
	cfg, err := proxy.LoadConfig(env)
	if err != nil {
		return err
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: level}))
	checkOpenFiles(log, cfg.PokeMaxSubscribers)
	// Nothing built here may live by ctx: a signal drains in-flight work.
	pool, err := store.NewPool(context.WithoutCancel(ctx), cfg.PoolOptions())
	if err != nil {
		return fmt.Errorf("creating database pool: %w", err)
	}
	defer pool.Close()
	tracer, flush, err := tracing.Start(context.WithoutCancel(ctx), env, version, log)
	if err != nil {
		return err
	}
	defer flush() // the spans still buffered go out before the process ends
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	sc := proxy.New(proxy.Options{Config: cfg, Pool: pool, Logger: log, Registerer: reg, Tracer: tracer,
		Version: version, Revision: revision})
	public, err := listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listening on SIDECAR_LISTEN_ADDR: %w", err)
	}
	admin, err := listen("tcp", cfg.AdminAddr)
	if err != nil {
		return errors.Join(fmt.Errorf("listening on SIDECAR_ADMIN_ADDR: %w", err), public.Close())
	}
	return sc.Serve(ctx, public, admin, reg)
}
