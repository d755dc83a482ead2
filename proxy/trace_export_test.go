package proxy

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// startTraced is harness.start with an OpenTelemetry SDK tracer (what
// OTEL_EXPORTER_OTLP_ENDPOINT turns on), spans kept in memory.
func (h *harness) startTraced() (*instance, *tracetest.InMemoryExporter) {
	h.t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	h.t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	h.tracer = tp.Tracer("test")
	return h.start(), exp
}

// pushWith sends a push carrying the given header lines (each value its own
// line) and returns what the mutation call upstream carried.
func pushWith(t *testing.T, inst *instance, seen *seenTracesAll, id int64, lines map[string][]string) (parent []string, state []string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, inst.srv.URL+"/replicache/push",
		strings.NewReader(mustJSON(t, pushBody("g", create("c1", id, "r"+strconv.FormatInt(id, 10))))))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	for k, vs := range lines {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if r := do(t, req); r.status != 200 {
		t.Fatalf("push = %d %s", r.status, r.raw)
	}
	return seen.get("POST /api/todos")
}

type seenTracesAll struct{ s *seenTraces }

func watchAll(h *harness) *seenTracesAll {
	s := &seenTraces{parent: map[string]string{}, state: map[string]string{}}
	all := &seenTracesAll{s: s}
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		k := r.Method + " " + r.URL.Path
		s.parent[k] = strings.Join(r.Header.Values("Traceparent"), "|")
		s.state[k] = strings.Join(r.Header.Values("Tracestate"), "|")
		return false
	})
	return all
}

func (a *seenTracesAll) get(k string) ([]string, []string) {
	p, s := a.s.get(k)
	return strings.Split(p, "|"), strings.Split(s, "|")
}

// TestTraceReservedFlagsCleared: W3C Trace Context 3.2.2.5 — flags other
// than those the spec defines "MUST be set to zero" by a vendor that
// propagates: the sidecar keeps only the sampled bit.
func TestTraceReservedFlagsCleared(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	seen := watchAll(h)
	parent, _ := pushWith(t, sc, seen, 1, map[string][]string{"Traceparent": {"00-" + clientTrace + "-" + clientParent + "-ff"}})
	parts := strings.Split(parent[0], "-")
	if len(parts) != 4 {
		t.Fatalf("upstream traceparent %q", parent)
	}
	if f, _ := strconv.ParseUint(parts[3], 16, 8); f&^0x03 != 0 {
		t.Errorf("upstream traceparent %q: reserved flag bits forwarded (flags %s); want them zeroed", parent[0], parts[3])
	}
}

// TestTracestateUnchangedWithExport: two tracestate lines reach the API as
// one list, with span export on as with it off (OpenTelemetry's Inject
// would keep only the first line).
func TestTracestateUnchangedWithExport(t *testing.T) {
	t.Parallel()
	lines := map[string][]string{
		"Traceparent": {"00-" + clientTrace + "-" + clientParent + "-01"},
		"Tracestate":  {"congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"},
	}
	want := "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
	h := newHarness(t, nil)
	off := h.start()
	seen := watchAll(h)
	if _, state := pushWith(t, off, seen, 1, lines); strings.Join(state, "|") != want {
		t.Errorf("tracing off: upstream tracestate %q, want %q", state, want)
	}
	h2 := newHarness(t, nil)
	on, _ := h2.startTraced()
	seen2 := watchAll(h2)
	if _, state := pushWith(t, on, seen2, 1, lines); strings.Join(state, "|") != want {
		t.Errorf("tracing on: upstream tracestate %q, want %q (unchanged, as with tracing off)", state, want)
	}
}

// TestTraceParserIsTheAuthorityWithExport: with span export on, the
// sidecar's own parser still decides which traceparent is continued
// (OpenTelemetry's refuses reserved flags and accepts two lines): the
// client's tracestate never travels with a trace it does not belong to.
func TestTraceParserIsTheAuthorityWithExport(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	on, _ := h.startTraced()
	seen := watchAll(h)
	parent, state := pushWith(t, on, seen, 1, map[string][]string{
		"Traceparent": {"00-" + clientTrace + "-" + clientParent + "-ff"},
		"Tracestate":  {clientState},
	})
	if !strings.Contains(parent[0], clientTrace) && state[0] != "" {
		t.Errorf("reserved flags, tracing on: upstream got a new trace %q but the client's tracestate %q", parent[0], state[0])
	}
	parent, state = pushWith(t, on, seen, 2, map[string][]string{
		"Traceparent": {"00-" + clientTrace + "-" + clientParent + "-01", "00-" + strings.Repeat("ab", 16) + "-" + clientParent + "-01"},
		"Tracestate":  {clientState},
	})
	if strings.Contains(parent[0], clientTrace) || state[0] != "" {
		t.Errorf("two traceparent lines (refused when tracing is off), tracing on: upstream %q tracestate %q; want a new trace without the tracestate", parent[0], state[0])
	}
}

// TestMappingErrorLogNamesTheTrace: "the trace id in every log line of
// that request", the mapping-error line of a redirected mutation included.
func TestMappingErrorLogNamesTheTrace(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && r.URL.Path == "/api/todos" {
			w.Header().Set("Location", "/api/todos/")
			w.WriteHeader(http.StatusMovedPermanently)
			return true
		}
		return false
	})
	req, _ := http.NewRequest(http.MethodPost, sc.srv.URL+"/replicache/push", strings.NewReader(mustJSON(t, pushBody("g", create("c1", 1, "a")))))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	req.Header.Set("Traceparent", "00-"+clientTrace+"-"+clientParent+"-01")
	r := do(t, req)
	found := false
	for _, line := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(line, "mapping error") {
			found = true
			if !strings.Contains(line, clientTrace) {
				t.Errorf("push %d: log line of the request without its trace id: %s", r.status, line)
			}
		}
	}
	if !found {
		t.Fatalf("no mapping error logged; push = %d %s\n%s", r.status, r.raw, h.logs.String())
	}
}

// TestPassthroughErrorsNameTheTrace: the sidecar's own error answers on
// the pass-through (deny list, a path above the root) name the trace, as
// the BadGateway one does.
func TestPassthroughErrorsNameTheTrace(t *testing.T) {
	t.Parallel()
	h := newHarness(t, map[string]string{"SIDECAR_PASSTHROUGH_DENY": "/internal"})
	sc := h.start()
	req, _ := http.NewRequest(http.MethodGet, sc.srv.URL+"/internal/x", nil)
	req.Header.Set("Traceparent", "00-"+clientTrace+"-"+clientParent+"-01")
	r := do(t, req)
	if r.status != 404 || r.str("traceID") != clientTrace {
		t.Errorf("denied pass-through = %d %s (X-Trace-ID %q); want 404 naming trace %s", r.status, r.raw, r.header.Get("X-Trace-ID"), clientTrace)
	}
}

// TestServerSpanStatusAfter1xx: a pass-through answer preceded by an
// interim 103 (Early Hints) is recorded with its final status (500, an
// error), not the interim one.
func TestServerSpanStatusAfter1xx(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc, exp := h.startTraced()
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/hints" {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusInternalServerError)
			return true
		}
		return false
	})
	req, _ := http.NewRequest(http.MethodGet, sc.srv.URL+"/hints", nil)
	if r := do(t, req); r.status != 500 {
		t.Fatalf("status %d", r.status)
	}
	for _, s := range exp.GetSpans() {
		if s.Name != "replicache proxy" {
			continue
		}
		for _, a := range s.Attributes {
			if a.Key == "http.response.status_code" && a.Value.AsInt64() != 500 {
				t.Errorf("server span status code %d, want 500 (span status %v)", a.Value.AsInt64(), s.Status)
			}
		}
		return
	}
	t.Fatal("no server span")
}
