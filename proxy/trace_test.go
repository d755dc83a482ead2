package proxy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
)

const (
	clientTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientParent = "00f067aa0ba902b7"
	clientState  = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
)

// seenTraces records the trace headers of every call the legacy API gets,
// by "METHOD path".
type seenTraces struct {
	mu     sync.Mutex
	parent map[string]string
	state  map[string]string
}

func watchTraces(h *harness) *seenTraces {
	s := &seenTraces{parent: map[string]string{}, state: map[string]string{}}
	h.up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		k := r.Method + " " + r.URL.Path
		s.parent[k], s.state[k] = r.Header.Get("Traceparent"), r.Header.Get("Tracestate")
		return false
	})
	return s
}

func (s *seenTraces) get(k string) (parent, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.parent[k], s.state[k]
}

func tracedPost(t *testing.T, inst *instance, path string, body any, hdr map[string]string) response {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, inst.srv.URL+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer alice")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return do(t, req)
}

// TestTraceContextReachesUpstream: a traceparent a client sends arrives at
// the legacy API with the same trace id on the auth call, a mutation call,
// the view's GETs and a pass-through call, under the sidecar's own span,
// with tracestate unchanged; the trace id is in the answer, error bodies
// and the request's log lines.
func TestTraceContextReachesUpstream(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	seen := watchTraces(h)
	hdr := map[string]string{"Traceparent": "00-" + clientTrace + "-" + clientParent + "-01", "Tracestate": clientState}

	check := func(step string, calls ...string) {
		t.Helper()
		for _, call := range calls {
			parent, state := seen.get(call)
			parts := strings.Split(parent, "-")
			if len(parts) != 4 || parts[0] != "00" || parts[1] != clientTrace || parts[3] != "01" {
				t.Errorf("%s, %s: traceparent %q, want version 00, trace %s, flags 01", step, call, parent, clientTrace)
				continue
			}
			if parts[2] == clientParent || len(parts[2]) != 16 || !lowerHex(parts[2]) {
				t.Errorf("%s, %s: parent id %q: want the sidecar's own span, not the client's", step, call, parts[2])
			}
			if state != clientState {
				t.Errorf("%s, %s: tracestate %q, want %q unchanged", step, call, state, clientState)
			}
		}
	}
	if r := tracedPost(t, sc, "/replicache/push", pushBody("g", create("c1", 1, "a")), hdr); r.status != 200 || r.header.Get("X-Trace-ID") != clientTrace {
		t.Fatalf("push = %d %s (X-Trace-ID %q)", r.status, r.raw, r.header.Get("X-Trace-ID"))
	}
	check("push", "GET /api/me", "POST /api/todos") // the auth call and the mutation call
	if r := tracedPost(t, sc, "/replicache/pull", pullBody("g", nil), hdr); r.status != 200 {
		t.Fatalf("pull = %d %s", r.status, r.raw)
	}
	check("pull", "GET /api/todos") // a view page
	req, _ := http.NewRequest(http.MethodDelete, sc.srv.URL+"/api/todos/a", nil)
	req.Header.Set("Authorization", "Bearer alice")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if r := do(t, req); r.status/100 != 2 {
		t.Fatalf("pass-through = %d %s", r.status, r.raw)
	}
	check("pass-through", "DELETE /api/todos/a")
	// An error body names the trace; so do the request's log lines.
	bad := tracedPost(t, sc, "/replicache/pull", map[string]any{"pullVersion": 1, "clientGroupID": 5}, hdr)
	if bad.status != 400 || bad.str("traceID") != clientTrace {
		t.Errorf("bad pull = %d %s; want 400 with traceID %s", bad.status, bad.raw, clientTrace)
	}
	logged := 0
	for _, line := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(line, `"msg":"push"`) || strings.Contains(line, `"msg":"pull"`) {
			logged++
			if !strings.Contains(line, `"trace_id":"`+clientTrace+`"`) {
				t.Errorf("log line without the trace id: %s", line)
			}
		}
	}
	if logged < 2 {
		t.Errorf("found %d push/pull log lines, want 2", logged)
	}
}

// TestTraceContextStarted: without a valid traceparent (none, upper case,
// all-zero ids, two of them) the sidecar starts a trace of its own and
// drops the tracestate that came with the invalid one.
func TestTraceContextStarted(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	sc := h.start()
	seen := watchTraces(h)
	for i, tp := range []string{
		"",
		"00-" + strings.ToUpper(clientTrace) + "-" + clientParent + "-01",
		"00-00000000000000000000000000000000-" + clientParent + "-01",
		"00-" + clientTrace + "-0000000000000000-01",
		"ff-" + clientTrace + "-" + clientParent + "-01",
		"00-" + clientTrace + "-" + clientParent + "-01-extra",
	} {
		hdr := map[string]string{"Tracestate": clientState}
		if tp != "" {
			hdr["Traceparent"] = tp
		}
		r := tracedPost(t, sc, "/replicache/push", pushBody("g", create("c1", int64(i+1), "a"+itoa(int64(i)))), hdr)
		if r.status != 200 {
			t.Fatalf("push = %d %s", r.status, r.raw)
		}
		parent, state := seen.get("POST /api/todos")
		parts := strings.Split(parent, "-")
		if len(parts) != 4 || len(parts[1]) != 32 || !lowerHex(parts[1]) || parts[1] == clientTrace || parts[1] == strings.Repeat("0", 32) {
			t.Errorf("traceparent %q sent: upstream got %q, want a new trace", tp, parent)
		}
		if got := r.header.Get("X-Trace-ID"); len(parts) == 4 && got != parts[1] {
			t.Errorf("traceparent %q sent: X-Trace-ID %q, upstream's trace %q", tp, got, parts[1])
		}
		if state != "" {
			t.Errorf("traceparent %q sent: tracestate %q passed on without a valid parent", tp, state)
		}
	}
}

var lowerHexRE = regexp.MustCompile(`^[0-9a-f]*$`)

func lowerHex(s string) bool { return lowerHexRE.MatchString(s) }

// TestTraceContextOnlyFromTrustedPeers (security round 3, low): a caller
// that is not a trusted proxy cannot choose the trace id of the sidecar's
// logs nor force sampling: its traceparent starts a new, unsampled trace
// (before, any caller's was continued). SIDECAR_TRACE_CLIENTS=true
// continues every caller's.
func TestTraceContextOnlyFromTrustedPeers(t *testing.T) {
	t.Parallel()
	hdr := map[string]string{"Traceparent": "00-" + clientTrace + "-" + clientParent + "-01"}
	for _, tc := range []struct {
		name      string
		env       map[string]string
		continued bool
	}{
		// The test client is loopback: trusted by default.
		{"trusted proxy", nil, true},
		{"untrusted peer", map[string]string{"SIDECAR_TRUSTED_PROXIES": "10.9.9.9/32"}, false},
		{"untrusted peer, SIDECAR_TRACE_CLIENTS=true", map[string]string{"SIDECAR_TRUSTED_PROXIES": "10.9.9.9/32", "SIDECAR_TRACE_CLIENTS": "true"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, tc.env)
			sc := h.start()
			seen := watchTraces(h)
			r := tracedPost(t, sc, "/replicache/pull", pullBody("g", nil), hdr)
			if r.status != 200 {
				t.Fatalf("pull = %d %s", r.status, r.raw)
			}
			parent, _ := seen.get("GET /api/todos")
			parts := strings.Split(parent, "-")
			if len(parts) != 4 {
				t.Fatalf("traceparent upstream %q", parent)
			}
			continued := parts[1] == clientTrace && r.header.Get("X-Trace-ID") == clientTrace
			if continued != tc.continued {
				t.Errorf("client's trace continued = %v (upstream %q, X-Trace-ID %q), want %v", continued, parent, r.header.Get("X-Trace-ID"), tc.continued)
			}
			// Without an exporter nothing samples a trace the sidecar starts;
			// with one, its own sampler decides (never the caller's flag).
			if !tc.continued && h.tracer == nil && os.Getenv("SIDECAR_TEST_TRACING") == "" && parts[3] != "00" {
				t.Errorf("an untrusted caller forced sampling: %q", parent)
			}
		})
	}
}
