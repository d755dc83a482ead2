// Command todo-api is a small, ordinary REST service that knows nothing
// about Replicache: the kind of legacy service replicache-sidecar is
// deployed in front of. It keeps per-user todos and lists in memory.
//
// Auth is "Authorization: Bearer <user>" (the token is the user name: it is
// a demo). List endpoints paginate with a Link header. Mutating requests
// honour Idempotency-Key: a repeated key replays the first answer without a
// second effect (the answer carries Idempotent-Replayed: true). With -state
// the data survives restarts. With -assign-ids the service chooses each new
// todo's id (an integer), as most SQL-backed APIs do. It also serves a
// static web app from -static.
//
//	GET    /api/me
//	GET    /api/todos?page=N      POST /api/todos
//	GET    /api/todos/{id}        PATCH /api/todos/{id}    DELETE /api/todos/{id}
//	GET    /api/lists?page=N      POST /api/lists          DELETE /api/lists/{id}
//	GET    /healthz
//
// With -faults (for tests) it also serves
//
//	PUT    /test/fault?path=/api/todos&page=N&status=503   that GET of that page answers status
//	DELETE /test/fault                                      and no longer
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "todo-api:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("todo-api", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:3000", "listen address")
	static := fs.String("static", "", "directory of the web app to serve at / (optional)")
	pageSize := fs.Int("page-size", 20, "items per page of list endpoints")
	state := fs.String("state", "", "file to keep the data in across restarts (default: memory only)")
	delay := fs.Duration("delay", 0, "added to every mutating request, to play a slow legacy service")
	dupStatus := fs.Int("duplicate-status", http.StatusConflict,
		"status answered to a create whose id exists (500 plays prototyping servers that answer a duplicate with a server error)")
	assignIDs := fs.Bool("assign-ids", false,
		"the service chooses each new todo's id (integers from 1, written as JSON numbers, as Django's AutoField); any id a create sends is ignored")
	faults := fs.Bool("faults", false, "serve /test/fault, which makes a GET of one page of a list fail (for tests)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	api := newAPI(*pageSize)
	api.delay = *delay
	api.duplicateStatus = *dupStatus
	api.assignIDs = *assignIDs
	if *state != "" {
		if err := api.load(*state); err != nil {
			return err
		}
	}
	mux := http.NewServeMux()
	api.routes(mux)
	if *faults {
		api.faultRoutes(mux)
	}
	if *static != "" {
		mux.Handle("GET /", http.FileServer(http.Dir(*static)))
	}
	srv := &http.Server{
		Handler:           logRequests(log, mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	log.Info("todo-api listening", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func logRequests(log *slog.Logger, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: 200}
		h.ServeHTTP(sw, r)
		if r.URL.Path != "/healthz" {
			log.Info("request", "method", r.Method, "path", r.URL.Path, "status", sw.status,
				"idempotency_key", r.Header.Get("Idempotency-Key"), "replayed", w.Header().Get("Idempotent-Replayed") == "true",
				"duration", time.Since(start))
		}
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) { s.status = code; s.ResponseWriter.WriteHeader(code) }
