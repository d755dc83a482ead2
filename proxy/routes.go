package proxy

import (
	"context"
	"net/http"
	"net/http/pprof"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler returns the public handler: push, pull, and pass-through.
func (s *Sidecar) Handler() http.Handler {
	push := s.metrics.instrument("push", cors(s.cfg.CORSOrigins, postOnly(s.compressed(http.HandlerFunc(s.handlePush)))))
	pull := s.metrics.instrument("pull", cors(s.cfg.CORSOrigins, postOnly(s.compressed(http.HandlerFunc(s.handlePull)))))
	pass := s.metrics.instrument("proxy", s.passthrough)
	pokes := s.metrics.instrument("poke", cors(s.cfg.CORSOrigins, http.HandlerFunc(s.handlePoke)))
	invalidate := s.metrics.instrument("invalidate", http.HandlerFunc(s.handleInvalidate))
	// A push may run for its time budget plus one upstream call, a pull for
	// a few upstream calls; the answer must still get out after that.
	writeWindow := s.cfg.PushTimeBudget + 2*s.cfg.UpstreamTimeout + 10*time.Second
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tc := newTrace(r)
		if s.tracer != nil {
			var span trace.Span
			var sw *statusWriter
			r, w, span, sw = s.serverSpan(w, r, &tc)
			defer func() {
				if sw.status != 0 {
					span.SetAttributes(attribute.Int("http.response.status_code", sw.status))
				}
				if sw.status >= 500 {
					span.SetStatus(codes.Error, http.StatusText(sw.status))
				}
				span.End()
			}()
		}
		r = r.WithContext(withTrace(r.Context(), tc))
		if s.endpoint(r.URL.Path) != "proxy" {
			// The sidecar's own answers name the trace (error bodies too);
			// a passed-through answer is the API's.
			w.Header().Set("X-Trace-ID", tc.traceID)
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
func (s *Sidecar) endpoint(path string) string {
	switch path {
	case s.cfg.PushPath:
		return "push"
	case s.cfg.PullPath:
		return "pull"
	case s.cfg.PokePath:
		return "poke"
	case s.cfg.InvalidatePath:
		return "invalidate"
	}
	return "proxy"
}

// serverSpan starts the request's span, child of the client's traceparent
// when valid, and makes tc name it.
func (s *Sidecar) serverSpan(w http.ResponseWriter, r *http.Request, tc *traceContext) (*http.Request, http.ResponseWriter, trace.Span, *statusWriter) {
	// The client's trace, as the sidecar's own parser read it (one
	// authority: what it refuses starts a new trace here too).
	ctx := r.Context()
	if tc.parent != "" {
		tid, _ := trace.TraceIDFromHex(tc.traceID)
		sid, _ := trace.SpanIDFromHex(tc.parent)
		var flags trace.TraceFlags
		if tc.flags == "01" {
			flags = trace.FlagsSampled
		}
		ts, _ := trace.ParseTraceState(tc.state) // exported as far as it parses; passed on unchanged anyway
		ctx = trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: tid, SpanID: sid, TraceFlags: flags, TraceState: ts, Remote: true}))
	}
	ctx, span := s.tracer.Start(ctx, "replicache "+s.endpoint(r.URL.Path), trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path)))
	sc := span.SpanContext()
	tc.traceID, tc.spanID, tc.flags = sc.TraceID().String(), sc.SpanID().String(), sc.TraceFlags().String()
	sw := &statusWriter{ResponseWriter: w}
	return r.WithContext(ctx), sw, span, sw
}

func postOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, errorf(http.StatusMethodNotAllowed, "MethodNotAllowed", "%s %s: only POST is allowed", r.Method, r.URL.Path))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// AdminHandler returns the admin handler: /healthz (the process is alive),
// /readyz (database reachable, migrations applied, not draining) and
// /metrics (everything g gathers), and with SIDECAR_PPROF Go's profiles
// under /debug/pprof/.
func (s *Sidecar) AdminHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		notReady := func(reason string) {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": reason})
		}
		switch {
		case s.draining.Load():
			notReady("shutting down")
			return
		case !s.migrated.Load():
			notReady("database schema not migrated yet")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.store.Ready(ctx); err != nil {
			notReady("database: " + err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	if s.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}
