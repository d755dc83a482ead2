package main

import (
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/replicache-sidecar/replicache-sidecar/proxy/proxytest"
)

// span is what the OTLP receiver kept of one exported span.
type span struct {
	name, traceID, spanID, parentID string
	attrs                           map[string]string
}

// otlpReceiver is an OTLP/HTTP trace endpoint, as a collector serves it.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []span
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	raw, _ := io.ReadAll(body)
	var req coltracepb.ExportTraceServiceRequest
	if r.URL.Path != "/v1/traces" || proto.Unmarshal(raw, &req) != nil {
		http.Error(w, "not an OTLP trace export", http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				sp := span{name: s.Name, traceID: hex.EncodeToString(s.TraceId), spanID: hex.EncodeToString(s.SpanId),
					parentID: hex.EncodeToString(s.ParentSpanId), attrs: map[string]string{}}
				for _, a := range s.Attributes {
					v := a.Value.GetStringValue()
					if v == "" {
						v = fmt.Sprint(a.Value.GetIntValue())
					}
					sp.attrs[a.Key] = v
				}
				o.spans = append(o.spans, sp)
			}
		}
	}
	o.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

func (o *otlpReceiver) find(name string) (span, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range o.spans {
		if s.name == name {
			return s, true
		}
	}
	return span{}, false
}

// TestOpenTelemetryExport: with OTEL_EXPORTER_OTLP_ENDPOINT set, the built
// sidecar exports spans for a push, its mutation and the call, and for a
// pull and its view page, all in the client's trace, with the client
// group, mutator and status as attributes; the API receives each call's
// own span as its parent.
func TestOpenTelemetryExport(t *testing.T) {
	const trace, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	recv := &otlpReceiver{}
	collector := httptest.NewServer(recv)
	t.Cleanup(collector.Close)
	var mu sync.Mutex
	parents := map[string]string{} // "METHOD path" → traceparent the API got
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		parents[r.Method+" "+r.URL.Path] = r.Header.Get("Traceparent")
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/api/me":
			_, _ = io.WriteString(w, `{"id":"alice"}`)
		case r.Method == http.MethodPost:
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, `{}`)
		default:
			_, _ = io.WriteString(w, `[{"id":"a"}]`)
		}
	}))
	t.Cleanup(api.Close)
	mapping := filepath.Join(t.TempDir(), "m.json")
	_ = os.WriteFile(mapping, []byte(`{"mutators":{"createTodo":{"method":"POST","path":"/todos"}},"clientView":[{"path":"/todos","key":"t/{id}"}]}`), 0o600)
	dbURL := proxytest.DatabaseURL(t)
	schema := fmt.Sprintf("otel_%d", time.Now().UnixNano())
	t.Cleanup(func() { proxytest.DropSchema(t, dbURL, schema) })
	sc := startSidecar(t, map[string]string{
		"SIDECAR_UPSTREAM_URL": api.URL, "SIDECAR_DATABASE_URL": dbURL, "SIDECAR_MAPPING_FILE": mapping, "SIDECAR_DB_SCHEMA": schema,
		"SIDECAR_AUTH_PATH": "/api/me", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL, "OTEL_BSP_SCHEDULE_DELAY": "50",
	})
	send := func(path, body string) {
		req, _ := http.NewRequest(http.MethodPost, sc.public+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer alice")
		req.Header.Set("Traceparent", "00-"+trace+"-"+clientSpan+"-01")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s = %d", path, resp.StatusCode)
		}
	}
	send("/replicache/push", `{"pushVersion":1,"clientGroupID":"g1","profileID":"p","schemaVersion":"","mutations":[{"id":1,"clientID":"c1","name":"createTodo","timestamp":1,"args":{"id":"a"}}]}`)
	send("/replicache/pull", `{"pullVersion":1,"clientGroupID":"g1","profileID":"p","schemaVersion":"","cookie":null}`)
	names := []string{"replicache push", "mutation createTodo", "upstream mutation", "upstream auth", "replicache pull", "upstream view"}
	proxytest.WaitFor(t, "the spans to be exported", func() bool {
		for _, n := range names {
			if _, ok := recv.find(n); !ok {
				return false
			}
		}
		return true
	})
	spans := map[string]span{}
	for _, n := range names {
		s, _ := recv.find(n)
		spans[n] = s
		if s.traceID != trace {
			t.Errorf("span %q is in trace %s, want the client's %s", n, s.traceID, trace)
		}
	}
	parentOf := map[string]string{
		"replicache push": clientSpan, "mutation createTodo": spans["replicache push"].spanID,
		"upstream mutation": spans["mutation createTodo"].spanID, "upstream auth": spans["replicache push"].spanID,
		"replicache pull": clientSpan, "upstream view": spans["replicache pull"].spanID,
	}
	for n, want := range parentOf {
		if got := spans[n].parentID; got != want {
			t.Errorf("span %q has parent %s, want %s", n, got, want)
		}
	}
	for n, want := range map[string]map[string]string{
		"replicache push":     {"replicache.client_group": "g1", "http.response.status_code": "200"},
		"mutation createTodo": {"replicache.client_group": "g1", "replicache.mutator": "createTodo", "replicache.outcome": "applied", "http.response.status_code": "201"},
		"upstream mutation":   {"http.response.status_code": "201", "url.path": "/todos"},
		"upstream view":       {"replicache.client_group": "g1", "http.response.status_code": "200", "url.path": "/todos"},
	} {
		for k, v := range want {
			if got := spans[n].attrs[k]; got != v {
				t.Errorf("span %q: %s = %q, want %q", n, k, got, v)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for call, n := range map[string]string{"POST /todos": "upstream mutation", "GET /todos": "upstream view"} {
		if want := "00-" + trace + "-" + spans[n].spanID + "-01"; parents[call] != want {
			t.Errorf("%s carried traceparent %q, want %q (its own span)", call, parents[call], want)
		}
	}
	// The auth endpoint is asked by the push and by the pull: the last
	// call's traceparent names one of the auth spans.
	own := false
	recv.mu.Lock()
	for _, s := range recv.spans {
		own = own || s.name == "upstream auth" && parents["GET /api/me"] == "00-"+trace+"-"+s.spanID+"-01"
	}
	recv.mu.Unlock()
	if !own {
		t.Errorf("GET /api/me carried traceparent %q, not one of its own spans", parents["GET /api/me"])
	}
}
