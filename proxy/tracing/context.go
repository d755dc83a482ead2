package tracing

import (
	"context"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Context is a request's W3C trace context (traceparent, tracestate):
// continued from the client's when the edge trusts it, otherwise started
// here. Every upstream call the request makes carries it, with the
// sidecar's own span as the parent, so the legacy API's traces join the
// client's.
type Context struct {
	TraceID string // 32 lowercase hex digits
	SpanID  string // the sidecar's span for this request: 16 hex digits
	Flags   string // 2 hex digits: the sampled bit only
	State   string // tracestate, passed on unchanged
	Parent  string // the client's span, when its trace is continued
}

// Traceparent renders the header sent upstream.
func (t Context) Traceparent() string {
	return "00-" + t.TraceID + "-" + t.SpanID + "-" + t.Flags
}

// FromRequest continues the trace of r's traceparent when continueTrace
// (the edge trusts the caller with it: SIDECAR_TRACE_FROM), or starts one
// (not sampled: the sidecar records no spans of its own unless told to).
// A caller the edge does not trust cannot choose the trace id of the
// sidecar's logs, nor force sampling.
func FromRequest(r *http.Request, continueTrace bool) Context {
	t := Context{SpanID: RandomHex(8)}
	if continueTrace {
		if id, parent, flags, ok := parseTraceparent(r.Header.Values("Traceparent")); ok {
			t.TraceID, t.Parent, t.Flags = id, parent, flags
			// tracestate belongs to the trace: kept only with a valid
			// parent, and several header lines are one list.
			t.State = boundedTracestate(strings.Join(r.Header.Values("Tracestate"), ","))
			return t
		}
	}
	return Fresh()
}

// Fresh starts a trace of the sidecar's own (not sampled).
func Fresh() Context {
	return Context{TraceID: RandomHex(16), SpanID: RandomHex(8), Flags: "00"}
}

// parseTraceparent returns the trace id and flags of a valid traceparent
// (W3C Trace Context, level 1): version 00 exactly, or a later version
// read as far as version 00 reaches; ids of lowercase hex, not all zeros.
// Of the flags only "sampled" is kept: a vendor passing a trace on must
// clear the ones it does not know.
func parseTraceparent(values []string) (traceID, parentID, flags string, ok bool) {
	if len(values) != 1 {
		return "", "", "", false // none, or ambiguous
	}
	v := values[0]
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return "", "", "", false
	}
	version, id, parent, fl := v[0:2], v[3:35], v[36:52], v[53:55]
	switch {
	case !lowerHex(version) || version == "ff":
		return "", "", "", false
	case version == "00" && len(v) != 55:
		return "", "", "", false
	case version != "00" && len(v) > 55 && v[55] != '-':
		return "", "", "", false
	case !lowerHex(id) || id == strings.Repeat("0", 32):
		return "", "", "", false
	case !lowerHex(parent) || parent == strings.Repeat("0", 16):
		return "", "", "", false
	case !lowerHex(fl):
		return "", "", "", false
	}
	b, _ := hex.DecodeString(fl)
	return id, parent, hex.EncodeToString([]byte{b[0] & 0x01}), true
}

// maxTracestate is the length of tracestate passed on (W3C: at least 512
// characters must be kept; an API's header limit must never turn a long one
// into a refused mutation).
const maxTracestate = 512

// boundedTracestate keeps the list members of state that fit in
// maxTracestate, dropping whole members from the end, as the W3C
// recommendation prescribes for truncation.
func boundedTracestate(state string) string {
	if len(state) <= maxTracestate {
		return state
	}
	var kept []string
	n := 0
	for _, m := range strings.Split(state, ",") {
		m = strings.TrimSpace(m)
		if m == "" {
			continue
		}
		if n+len(m)+len(kept) > maxTracestate { // the commas count too
			break
		}
		kept = append(kept, m)
		n += len(m)
	}
	return strings.Join(kept, ",")
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// RandomHex returns n random bytes in hex, never all zeros (an invalid
// trace or span id).
func RandomHex(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	if b[0] == 0 {
		b[0] = 1 // never all zeros (an invalid id)
	}
	return hex.EncodeToString(b)
}

type contextKey struct{}

// With returns ctx carrying t: the trace of the request ctx serves.
func With(ctx context.Context, t Context) context.Context {
	return context.WithValue(ctx, contextKey{}, t)
}

// Of returns the trace context ctx carries.
func Of(ctx context.Context) (Context, bool) {
	t, ok := ctx.Value(contextKey{}).(Context)
	return t, ok
}

// IDOf is the trace id of the request ctx belongs to, or "".
func IDOf(ctx context.Context) string {
	t, _ := Of(ctx)
	return t.TraceID
}

// SetHeaders puts the request's trace context on an upstream call's
// headers.
func SetHeaders(ctx context.Context, h http.Header) {
	t, ok := Of(ctx)
	if !ok {
		return
	}
	h.Set("Traceparent", t.Traceparent())
	h.Del("Tracestate")
	if t.State != "" {
		h.Set("Tracestate", t.State)
	}
}

// StartServerSpan starts the span of the request ctx serves, child of the
// client's span when t continues its trace, and makes t name it (its ids
// and sampled flag: the tracer's sampler decides).
func StartServerSpan(ctx context.Context, tracer trace.Tracer, t *Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if t.Parent != "" {
		tid, _ := trace.TraceIDFromHex(t.TraceID)
		sid, _ := trace.SpanIDFromHex(t.Parent)
		var flags trace.TraceFlags
		if t.Flags == "01" {
			flags = trace.FlagsSampled
		}
		ts, _ := trace.ParseTraceState(t.State) // exported as far as it parses; passed on unchanged anyway
		ctx = trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: tid, SpanID: sid, TraceFlags: flags, TraceState: ts, Remote: true}))
	}
	ctx, span := tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	sc := span.SpanContext()
	t.TraceID, t.SpanID, t.Flags = sc.TraceID().String(), sc.SpanID().String(), sc.TraceFlags().String()
	return ctx, span
}
